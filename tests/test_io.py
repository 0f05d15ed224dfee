"""Write safety shared by every command: overlap checks, writability, OS errors, leftovers."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from svai.errors import SvaiError
from svai.io import (
    check_output_folder, check_writable, describe_os_error, remove_stale_temporaries, temporary_name, write_atomic,
)


def test_output_may_neither_hold_nor_sit_inside_the_input(tmp_path: Path) -> None:
    photos = tmp_path / "g" / "photos"
    photos.mkdir(parents=True)
    with pytest.raises(SvaiError, match="holds --input"):
        check_output_folder({"--input": photos}, tmp_path / "g")
    with pytest.raises(SvaiError, match="inside --input"):
        check_output_folder({"--input": photos}, photos / "out")
    with pytest.raises(SvaiError, match="inside --input"):
        check_output_folder({"--input": photos}, photos)
    check_output_folder({"--input": photos}, tmp_path / "elsewhere")


def test_check_writable_names_a_file_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(SvaiError, match="is a file"):
        check_writable(tmp_path / "file")
    with pytest.raises(SvaiError, match=r"--out .*file is a file, so no folder can be made under it"):
        check_writable(tmp_path / "file" / "deeper" / "out", "--out")


def test_check_writable_refuses_a_name_too_long(tmp_path: Path) -> None:
    with pytest.raises(SvaiError, match="name too long") as error:
        check_writable(tmp_path / ("x" * 300))
    assert "\n" not in str(error.value)


def test_check_writable_creates_the_folder_and_leaves_nothing(tmp_path: Path) -> None:
    check_writable(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir() and not list((tmp_path / "a" / "b").iterdir())


def test_check_writable_reports_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Permission bits do not stop root, so the failing write is simulated.
    real_open = open

    def full(path, mode="r", *args, **kwargs):  # type: ignore[no-untyped-def]
        if "w" in mode:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", full)
    with pytest.raises(SvaiError, match="no space left"):
        check_writable(tmp_path / "out")


@pytest.mark.parametrize("code, fragment", [
    (errno.EACCES, "permission denied"), (errno.ENOSPC, "no space left"), (errno.EROFS, "read-only"),
    (errno.ENAMETOOLONG, "name too long"), (errno.ENOTDIR, "a file is in the way"),
])
def test_machine_errors_become_one_line_naming_the_path(code: int, fragment: str) -> None:
    message = describe_os_error(OSError(code, os.strerror(code), "/data/out/x.png"))
    assert message is not None and "/data/out/x.png" in message and fragment in message


def test_other_os_errors_are_left_alone() -> None:
    assert describe_os_error(OSError(errno.EBADF, "bad file descriptor")) is None
    assert describe_os_error(OSError("no errno")) is None


def test_a_failed_atomic_write_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "x.bin"
    with pytest.raises(RuntimeError):
        from svai.io import atomic_open

        with atomic_open(target) as handle:
            handle.write(b"half")
            raise RuntimeError("disk went away")
    assert list(tmp_path.iterdir()) == []
    write_atomic(target, b"ok")
    assert target.read_bytes() == b"ok"


def test_leftovers_of_dead_writers_are_removed(tmp_path: Path) -> None:
    dead = tmp_path / ".a.png.tmp999999999"
    dead.write_bytes(b"x")
    mine = temporary_name(tmp_path / "b.png")
    mine.write_bytes(b"x")
    parent = tmp_path / f".c.png.tmp{os.getppid()}"  # a live process: left alone
    parent.write_bytes(b"x")
    kept = tmp_path / ".hidden"
    kept.write_bytes(b"x")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted([dead, mine])
    assert parent.exists() and kept.exists()


# -- links, outputs onto inputs, privacy, svai's own files ------------------------------------

from svai.io import (  # noqa: E402
    OPEN, PRIVATE, OwnFiles, Privacy, check_output_file, describe_size, make_folder, open_append,
)


def test_a_link_inside_an_output_folder_is_refused_wherever_it_points(tmp_path: Path) -> None:
    photos, elsewhere, out = tmp_path / "photos", tmp_path / "elsewhere", tmp_path / "out"
    for folder in (photos, elsewhere, out / "deep"):
        folder.mkdir(parents=True)
    (out / "deep" / "sub").symlink_to(photos, target_is_directory=True)
    with pytest.raises(SvaiError, match=r"deep/sub is a link into --input"):
        check_output_folder({"--input": photos}, out)
    (out / "deep" / "sub").unlink()
    (out / "deep" / "file.png").symlink_to(elsewhere / "x.png")
    with pytest.raises(SvaiError, match="symbolic link"):
        check_output_folder({"--input": photos}, out)
    (out / "deep" / "file.png").unlink()
    check_output_folder({"--input": photos}, out)


def test_an_output_file_may_not_be_an_input_lie_in_one_or_be_a_link(tmp_path: Path) -> None:
    folder = tmp_path / "targets"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"x")
    with pytest.raises(SvaiError, match="--json .* is --target"):
        check_output_file({"--target": folder / "a.png"}, folder / "a.png", "--json")
    with pytest.raises(SvaiError, match="is inside --target"):
        check_output_file({"--target": folder, "--masks": None}, folder / "eval.json", "--json")
    (tmp_path / "link.json").symlink_to(folder / "a.png")
    with pytest.raises(SvaiError, match="symbolic link"):
        check_output_file({}, tmp_path / "link.json", "--json")
    check_output_file({"--target": folder}, tmp_path / "eval.json", "--json")


def test_a_planted_link_at_the_temporary_name_is_never_written_through(tmp_path: Path) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("mine")
    target = tmp_path / "out.json"
    temporary_name(target).symlink_to(precious)
    write_atomic(target, b"svai's")
    assert precious.read_text() == "mine" and target.read_bytes() == b"svai's"


def test_temporary_names_stay_within_the_file_name_limit(tmp_path: Path) -> None:
    long = tmp_path / ("é" * 120 + ".png")  # 244 bytes
    assert len(temporary_name(long).name.encode()) <= 255
    write_atomic(long, b"x")
    assert long.read_bytes() == b"x"


@pytest.fixture
def umask_022():  # type: ignore[no-untyped-def]
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_privacy_follows_the_photo_and_the_folders_above_it(tmp_path: Path, umask_022: None) -> None:
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    photo = root / "sub" / "a.jpg"
    photo.write_bytes(b"x")
    photo.chmod(0o644)
    assert Privacy.of(photo, root).file_mode() == 0o644
    (root / "sub").chmod(0o700)  # a folder others cannot pass makes the photo theirs to read no more
    assert Privacy.of(photo, root).file_mode() == 0o600
    (root / "sub").chmod(0o755)
    photo.chmod(0o640)
    privacy = Privacy.of(photo, root)
    assert (privacy.file_mode(), privacy.folder_mode()) == (0o640, 0o750)
    assert Privacy.of(tmp_path / "missing.jpg") == PRIVATE
    assert (PRIVATE.file_mode(), PRIVATE.folder_mode()) == (0o600, 0o700)
    assert (OPEN.file_mode(), OPEN.folder_mode()) == (0o644, 0o755)
    assert (OPEN & PRIVATE) == PRIVATE


def test_writes_and_folders_take_the_privacy_given(tmp_path: Path, umask_022: None) -> None:
    write_atomic(tmp_path / "a" / "b" / "c.png", b"x", PRIVATE)
    modes = [(tmp_path / p).stat().st_mode & 0o777 for p in ("a", "a/b", "a/b/c.png")]
    assert modes == [0o700, 0o700, 0o600]
    make_folder(tmp_path / "open", OPEN)
    assert (tmp_path / "open").stat().st_mode & 0o777 == 0o755


def test_own_files_delete_only_what_svai_recorded(tmp_path: Path) -> None:
    own = OwnFiles(tmp_path)
    write_atomic(tmp_path / "samples" / "s1.png", b"svai")
    own.note_with_folders(tmp_path / "samples" / "s1.png")
    own.save()
    (tmp_path / "samples" / "mine.png").write_bytes(b"user")
    replaced = tmp_path / "config.yaml"
    replaced.write_text("svai")
    own.note(replaced)
    replaced.unlink()
    replaced.write_text("user's own, same name")  # another file now: not svai's to delete
    own = OwnFiles(tmp_path)  # read back from the record
    kept = own.remove_under(tmp_path / "samples")
    assert kept == [tmp_path / "samples" / "mine.png"]
    assert not (tmp_path / "samples" / "s1.png").exists() and (tmp_path / "samples").is_dir()
    assert not own.remove(replaced) and replaced.read_text() == "user's own, same name"
    assert own.foreign() == [replaced, tmp_path / "samples" / "mine.png"]


def test_planned_files_count_as_svais_once_written(tmp_path: Path) -> None:
    own = OwnFiles(tmp_path)
    planned = tmp_path / "train" / "before" / "p1.png"
    own.plan(planned)
    own.save()
    write_atomic(planned, b"written by a worker that was then killed")
    assert OwnFiles(tmp_path).remove(planned) and not planned.exists()
    own = OwnFiles(tmp_path)
    own.forget(planned)
    own.save()
    assert not (tmp_path / ".svai-files.json").exists()  # an empty record is no file


def test_appending_refuses_a_file_with_another_name(tmp_path: Path) -> None:
    precious = tmp_path / "notes.txt"
    precious.write_text("mine")
    os.link(precious, tmp_path / "log.jsonl")
    with pytest.raises(SvaiError, match="hard link"):
        open_append(tmp_path / "log.jsonl")
    (tmp_path / "other.jsonl").symlink_to(precious)
    with pytest.raises(OSError):
        open_append(tmp_path / "other.jsonl")
    assert precious.read_text() == "mine"


@pytest.mark.parametrize("size, text", [(0, "0 bytes"), (1000, "1000 bytes"), (12 * 1024, "12 KB"),
                                        (int(3.4 * 2**20), "3.4 MB"), (100 * 2**20, "100 MB")])
def test_sizes_are_described_for_people(size: int, text: str) -> None:
    assert describe_size(size) == text

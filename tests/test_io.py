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

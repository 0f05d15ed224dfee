"""`prepare_dataset`: outputs, skips, source safety, incremental re-runs, cropping, alignment."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from svai.data.layout import read_manifest
from svai.data.options import PrepareOptions
from svai.data.prepare import STATE_FILE, prepare_dataset
from svai.errors import SvaiError

SIZE = 48


def photo(path: Path, width: int = 80, height: int = 60, seed: int = 0, **save) -> Path:  # type: ignore[no-untyped-def]
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(data).save(path, **save)
    return path


def solid(path: Path, colours: list[tuple[int, int, int]], width: int, height: int, **save) -> Path:  # type: ignore[no-untyped-def]
    """Vertical bands of the given colours, left to right."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.zeros((height, width, 3), np.uint8)
    for i, colour in enumerate(colours):
        data[:, i * width // len(colours): (i + 1) * width // len(colours)] = colour
    Image.fromarray(data).save(path, **save)
    return path


def tree_hashes(root: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*")) if p.is_file()
    }


def png_chunks(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset:offset + 4])
        chunks.append(data[offset + 4:offset + 8])
        offset += 12 + length
    return chunks


def skipped(out: Path) -> dict[str, str]:
    with open(out / "skipped.csv", newline="", encoding="utf-8") as handle:
        return {row["file"]: row["reason"] for row in csv.DictReader(handle)}


def options(**overrides) -> PrepareOptions:  # type: ignore[no-untyped-def]
    return PrepareOptions(**{"size": SIZE, "workers": 1, **overrides})


@pytest.fixture
def collection(tmp_path: Path) -> Path:
    """A messy collection: every layout, EXIF/GPS metadata, broken files of every kind."""
    src = tmp_path / "photos"
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"
    exif.get_ifd(0x8825)[2] = (37.0, 33.0, 0.0)  # GPS latitude
    for i in range(3):
        photo(src / "clinicA" / "Blepharoplasty" / "Before" / f"{i:04d}.jpg", seed=i, exif=exif,
              comment=b"patient name")
        photo(src / "clinicA" / "Blepharoplasty" / "AFTER" / f"{i:04d}.png", seed=10 + i)
        photo(src / "clinicB" / "rhino" / f"case{i}_pre.jpg", 60, 80, seed=20 + i)
        photo(src / "clinicB" / "rhino" / f"case{i}-POST.JPG", 60, 80, seed=30 + i)
    photo(src / "gallery" / "chin" / "kim 전.jpg", seed=40)
    photo(src / "gallery" / "chin" / "kim 후.webp", seed=41)
    photo(src / "aligned" / "pair1.png", 120, 60, seed=50)
    # Every colour mode a clinic archive may hold.
    (src / "modes").mkdir()
    Image.fromarray(np.full((60, 80), 40000, np.uint16)).save(src / "modes" / "grey16_before.png")
    Image.new("LA", (80, 60), (90, 128)).save(src / "modes" / "grey16_after.png")
    Image.new("CMYK", (80, 60), (0, 200, 200, 0)).save(src / "modes" / "cmyk_before.jpg")
    Image.new("RGBA", (80, 60), (10, 200, 10, 100)).save(src / "modes" / "cmyk_after.tif")
    palette = Image.new("P", (80, 60), 3)
    palette.putpalette(list(range(256)) * 3)
    palette.save(src / "modes" / "pal_before.png")
    palette.save(src / "modes" / "pal_after.bmp")
    # Broken kinds, each with its own reason.
    (src / "broken").mkdir()
    (src / "broken" / "zero_before.jpg").write_bytes(b"")
    photo(src / "broken" / "zero_after.jpg")
    full = (src / "clinicA" / "Blepharoplasty" / "Before" / "0000.jpg").read_bytes()
    (src / "broken" / "cut_before.jpg").write_bytes(full[: len(full) // 2])
    photo(src / "broken" / "cut_after.jpg")
    (src / "broken" / "text_before.jpg").write_text("this is not a jpeg")
    photo(src / "broken" / "text_after.jpg")
    photo(src / "broken" / "tiny_before.png", 8, 8)
    photo(src / "broken" / "tiny_after.png", 8, 8)
    photo(src / "broken" / "lonely_before.jpg")
    (src / "README.txt").write_text("collected 2023")
    return src


def test_collection_is_prepared_and_everything_explained(collection: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    before_hashes = tree_hashes(collection)
    report = prepare_dataset(collection, out, options(test_fraction=0.25))
    assert tree_hashes(collection) == before_hashes  # SOURCE untouched, byte for byte

    records = {r.id: r for r in read_manifest(out)}
    assert set(records) == {
        *(f"clinicA-Blepharoplasty-{i:04d}" for i in range(3)),
        *(f"clinicB-rhino-case{i}" for i in range(3)),
        "gallery-chin-kim", "aligned-pair1", "modes-grey16", "modes-cmyk", "modes-pal",
    }
    assert report.written == len(records) and report.kept == 0
    assert records["clinicA-Blepharoplasty-0001"].procedures == ("eyes",)
    assert records["clinicB-rhino-case1"].procedures == ()  # "rhino" is not an alias
    assert records["gallery-chin-kim"].procedures == ("jaw",)
    assert sum(r.split == "test" for r in records.values()) == 3  # subjects = pairs: round(11 * 0.25)

    for record in records.values():
        for kind in ("before", "after"):
            path = out / record.split / kind / f"{record.id}.png"
            with Image.open(path) as image:
                assert (image.format, image.mode, image.size) == ("PNG", "RGB", (SIZE, SIZE))
            assert png_chunks(path) == [b"IHDR", b"IDAT", b"IEND"]  # no eXIf, tEXt, iCCP …
            assert b"PhoneMaker" not in path.read_bytes() and b"patient" not in path.read_bytes()

    grey = np.asarray(Image.open(out / records["modes-grey16"].split / "before" / "modes-grey16.png"))
    assert np.all(grey == round(40000 / 65535 * 255))  # 16-bit scaled, not clipped to 255
    assert skipped(out) == {
        "broken/zero_before.jpg": "empty file",
        "broken/cut_before.jpg": "truncated",
        "broken/text_before.jpg": "not an image",
        "broken/tiny_before.png": "too small",
        "broken/lonely_before.jpg": "missing after",
        "README.txt": "not an image",
        # The partner of every skipped pair is listed too, so each source file is accounted for.
        "broken/zero_after.jpg": "partner skipped",
        "broken/cut_after.jpg": "partner skipped",
        "broken/text_after.jpg": "partner skipped",
        "broken/tiny_after.png": "partner skipped",
    }
    assert report.skipped_by_reason()["not an image"] == 2


def test_exif_rotation_and_padding(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed after turning 90 degrees clockwise
    src = tmp_path / "src"
    for role in ("before", "after"):
        solid(src / f"x_{role}.jpg", [(255, 0, 0), (0, 0, 255)], 120, 80, exif=exif, quality=95)
    out = tmp_path / "out"
    prepare_dataset(src, out, options(crop="none", test_fraction=0.0))
    image = np.asarray(Image.open(out / "train" / "before" / "x.png"))
    # Portrait once turned: red (stored left) on top, blue below, white padding at the sides.
    assert image[4, SIZE // 2, 0] > 200 and image[4, SIZE // 2, 2] < 60
    assert image[-4, SIZE // 2, 2] > 200 and image[-4, SIZE // 2, 0] < 60
    assert image[SIZE // 2, 2].min() > 245 and image[SIZE // 2, -3].min() > 245


def test_side_by_side_order(tmp_path: Path) -> None:
    src = tmp_path / "src"
    solid(src / "c.png", [(255, 0, 0), (0, 0, 255)], 100, 50)
    for order, before_colour in (("before-after", 0), ("after-before", 2)):
        out = tmp_path / order
        prepare_dataset(src, out, options(order=order, test_fraction=0.0))
        before = np.asarray(Image.open(out / "train" / "before" / "c.png"))
        after = np.asarray(Image.open(out / "train" / "after" / "c.png"))
        assert before[..., before_colour].min() > 240 and after[..., 2 - before_colour].min() > 240


def test_same_crop_for_different_resolutions(tmp_path: Path) -> None:
    """An after photo at twice the resolution gets the same crop: the outputs match."""
    src = tmp_path / "src"
    image = Image.new("RGB", (200, 100), (40, 40, 40))
    ImageDraw.Draw(image).ellipse((70, 20, 130, 80), fill=(230, 180, 40))
    (src).mkdir()
    image.save(src / "s_before.png")
    image.resize((400, 200), Image.Resampling.LANCZOS).save(src / "s_after.png")
    out = tmp_path / "out"
    prepare_dataset(src, out, options(test_fraction=0.0))
    before = np.asarray(Image.open(out / "train" / "before" / "s.png")).astype(int)
    after = np.asarray(Image.open(out / "train" / "after" / "s.png")).astype(int)
    assert np.abs(before - after).mean() < 3
    # Centre crop, no squash: the circle stays round (as wide as tall) and centred.
    yellow = before[..., 2] < 100
    rows, cols = np.nonzero(yellow)
    assert abs((rows.max() - rows.min()) - (cols.max() - cols.min())) <= 1
    assert abs(cols.mean() - (SIZE - 1) / 2) < 1


def test_subjects_never_split_and_split_is_deterministic(tmp_path: Path) -> None:
    src = tmp_path / "src"
    rows = ["before,after,subject"]
    for subject in range(10):
        for k in range(3):
            name = f"s{subject}_{k}"
            photo(src / f"{name}_before.jpg", seed=subject * 10 + k)
            photo(src / f"{name}_after.jpg", seed=100 + subject * 10 + k)
            rows.append(f"{name}_before.jpg,{name}_after.jpg,person{subject}")
    (src / "pairs.csv").write_text("\n".join(rows) + "\n")
    splits = []
    for name in ("a", "b"):
        prepare_dataset(src / "pairs.csv", tmp_path / name, options(test_fraction=0.3, seed=3))
        records = read_manifest(tmp_path / name)
        by_subject: dict[str, set[str]] = {}
        for record in records:
            by_subject.setdefault(record.subject, set()).add(record.split)
        assert all(len(s) == 1 for s in by_subject.values())
        assert sum(s == {"test"} for s in by_subject.values()) == 3
        splits.append({r.id: r.split for r in records})
    assert splits[0] == splits[1]


def test_rerun_is_incremental(collection: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = prepare_dataset(collection, out, options())
    outputs = tree_hashes(out / "train") | tree_hashes(out / "test")
    manifest = (out / "manifest.csv").read_bytes()

    second = prepare_dataset(collection, out, options())
    assert (second.written, second.kept) == (0, first.written)
    assert tree_hashes(out / "train") | tree_hashes(out / "test") == outputs
    assert (out / "manifest.csv").read_bytes() == manifest
    assert skipped(out)["broken/cut_before.jpg"] == "truncated"  # cached skips are still reported

    touched = collection / "clinicB" / "rhino" / "case1_pre.jpg"
    stat = touched.stat()
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    third = prepare_dataset(collection, out, options())
    assert (third.written, third.kept) == (1, first.written - 1)
    changed = {k for k, v in (tree_hashes(out / "train") | tree_hashes(out / "test")).items() if outputs.get(k) != v}
    assert {Path(k).name for k in changed} == {"clinicB-rhino-case1.png"}

    # A different size reprocesses everything; a removed source pair leaves OUT too.
    for path in (collection / "clinicB" / "rhino").glob("case2*"):
        path.unlink()
    fourth = prepare_dataset(collection, out, options(size=40))
    assert (fourth.written, fourth.kept, fourth.removed) == (first.written - 1, 0, 1)
    assert not list(out.rglob("clinicB-rhino-case2.png"))
    assert "size" in (out / STATE_FILE).read_text()


def test_force_rebuilds(collection: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = prepare_dataset(collection, out, options())
    again = prepare_dataset(collection, out, options(force=True))
    assert (again.written, again.kept) == (first.written, 0)


def test_workers_give_identical_results(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(4):
        photo(src / f"{i}_before.jpg", 200, 150, seed=i)
        photo(src / f"{i}_after.jpg", 200, 150, seed=10 + i)
    prepare_dataset(src, tmp_path / "one", options(workers=1))
    prepare_dataset(src, tmp_path / "two", options(workers=2))
    for name in ("manifest.csv", "skipped.csv"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    one, two = tree_hashes(tmp_path / "one"), tree_hashes(tmp_path / "two")
    pngs = sorted(k for k in one if k.endswith(".png"))
    assert len(pngs) == 8 and pngs == sorted(k for k in two if k.endswith(".png"))
    assert all(one[k][0] == two[k][0] for k in pngs)


def test_out_must_be_safe(collection: Path, tmp_path: Path) -> None:
    with pytest.raises(SvaiError, match="inside SOURCE"):
        prepare_dataset(collection, collection / "prepared", options())
    with pytest.raises(SvaiError, match="inside OUT"):
        prepare_dataset(collection, tmp_path, options())
    assert_foreign_folder_refused(collection, tmp_path / "foreign")
    # A dataset from another source is refused unless --force.
    other = tmp_path / "other"
    photo(other / "1_before.jpg")
    photo(other / "1_after.jpg")
    out = tmp_path / "out"
    prepare_dataset(other, out, options())
    with pytest.raises(SvaiError, match="--force"):
        prepare_dataset(collection, out, options())
    prepare_dataset(collection, out, options(force=True))
    assert "1" not in {r.id for r in read_manifest(out)}
    assert not list(out.rglob("1.png"))


def test_decompression_bomb_is_skipped(tmp_path: Path) -> None:
    src = tmp_path / "src"
    photo(src / "ok_before.png")
    photo(src / "ok_after.png")
    photo(src / "bomb_after.png")
    data = bytearray((src / "bomb_after.png").read_bytes())
    # Rewrite the header to claim 50000 x 50000 pixels (the CRC must match the new header).
    data[16:24] = struct.pack(">II", 50000, 50000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    (src / "bomb_after.png").write_bytes(bytes(data))
    photo(src / "bomb_before.png")
    out = tmp_path / "out"
    report = prepare_dataset(src, out, options())
    assert report.total == 1
    assert skipped(out) == {"bomb_after.png": "too large", "bomb_before.png": "partner skipped"}


def test_nothing_usable_reports_zero_pairs(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a_before.jpg").write_bytes(b"")
    (src / "a_after.jpg").write_bytes(b"")
    report = prepare_dataset(src, tmp_path / "out", options())
    assert report.total == 0 and set(skipped(tmp_path / "out").values()) == {"empty file", "partner skipped"}
    with pytest.raises(SvaiError, match="holds no image files"):
        empty = tmp_path / "empty"
        empty.mkdir()
        prepare_dataset(empty, tmp_path / "out2", options())


def _face_scene(path: Path, centre: tuple[int, int]) -> None:
    """A skin-coloured face on a blue backdrop, away from the middle of the frame."""
    image = Image.new("RGB", (240, 160), (40, 70, 160))
    x, y = centre
    ImageDraw.Draw(image).ellipse((x - 22, y - 30, x + 22, y + 30), fill=(224, 172, 140))
    image.save(path)


def test_face_crop_follows_the_face(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for role in ("before", "after"):
        _face_scene(src / f"f_{role}.png", (40, 80))
    (src / "g_before.png").parent.mkdir(exist_ok=True)
    Image.new("RGB", (240, 160), (40, 70, 160)).save(src / "g_before.png")  # no face: centre fallback
    Image.new("RGB", (240, 160), (40, 70, 160)).save(src / "g_after.png")
    centre_out, face_out = tmp_path / "centre", tmp_path / "face"
    prepare_dataset(src, centre_out, options(test_fraction=0.0))
    prepare_dataset(src, face_out, options(test_fraction=0.0, crop="face"))

    def is_skin(out: Path) -> bool:
        pixel = np.asarray(Image.open(out / "train" / "before" / "f.png"))[SIZE // 2, SIZE // 2]
        return bool(pixel[0] > 180 and pixel[2] < 170)

    assert not is_skin(centre_out) and is_skin(face_out)
    summary = (face_out / "prepare.json").read_text()
    assert '"found": 1' in summary and '"centre fallback": 1' in summary


def test_align_registers_after_onto_before(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(1)
    scene = Image.new("RGB", (128, 128), (200, 180, 160))
    draw = ImageDraw.Draw(scene)
    for _ in range(20):
        x, y = rng.integers(0, 128, 2)
        r = int(rng.integers(6, 20))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    scene.save(src / "m_before.png")
    scene.rotate(5, resample=Image.Resampling.BICUBIC, translate=(4, -3), fillcolor=(200, 180, 160)).save(
        src / "m_after.png")
    plain, aligned = tmp_path / "plain", tmp_path / "aligned"
    prepare_dataset(src, plain, options(size=64, test_fraction=0.0))
    prepare_dataset(src, aligned, options(size=64, test_fraction=0.0, align=True))

    def gap(out: Path) -> float:
        before = np.asarray(Image.open(out / "train" / "before" / "m.png")).astype(float)
        after = np.asarray(Image.open(out / "train" / "after" / "m.png")).astype(float)
        return float(np.abs(before - after)[8:-8, 8:-8].mean())

    assert gap(aligned) < 0.5 * gap(plain)
    summary = (aligned / "prepare.json").read_text()
    assert '"error_after"' in summary


def test_an_interrupted_run_is_finished_by_running_it_again(collection: Path, tmp_path: Path) -> None:
    import signal

    before_hashes = tree_hashes(collection)
    clean = tmp_path / "clean"
    prepare_dataset(collection, clean, options())

    out = tmp_path / "out"

    def interrupt(done: int, total: int) -> None:
        if done == 3:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: honoured after the pair in progress

    stopped = prepare_dataset(collection, out, options(), progress=interrupt)
    assert stopped.interrupted and stopped.processed == 3 < stopped.to_process
    assert not (out / "manifest.csv").exists()
    assert json.loads((out / STATE_FILE).read_text())["complete"] is False

    finished = prepare_dataset(collection, out, options())
    assert not finished.interrupted and finished.kept == stopped.written
    assert (out / "manifest.csv").read_bytes() == (clean / "manifest.csv").read_bytes()
    assert tree_hashes(out / "train").keys() == tree_hashes(clean / "train").keys()
    assert json.loads((out / STATE_FILE).read_text())["complete"] is True
    assert tree_hashes(collection) == before_hashes


def test_a_crashed_run_is_recognised_and_can_be_forced(collection: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"

    def crash(done: int, total: int) -> None:
        if done == 2:
            raise OSError(28, "No space left on device", str(out / "train" / "before" / "x.png"))

    with pytest.raises(OSError):
        prepare_dataset(collection, out, options(), progress=crash)
    # A leftover temporary of the crashed write, and no prepare.json: still recognised as ours.
    (out / "train" / "before" / ".x.png.tmp999999999").write_bytes(b"half")
    assert not (out / "prepare.json").exists()
    resumed = prepare_dataset(collection, out, options())
    assert resumed.kept >= 1 and resumed.written + resumed.kept == resumed.total == 11
    assert not list(out.rglob("*.tmp999999999"))
    assert prepare_dataset(collection, out, options(force=True)).kept == 0


def test_a_killed_first_run_with_only_its_state_file_is_redone(collection: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "train" / "before").mkdir(parents=True)
    (out / "train" / "before" / "half.png").write_bytes(b"\x89PNG")
    (out / STATE_FILE).write_text(json.dumps({"version": 1, "source": str(collection.resolve()),
                                              "image_settings": {}, "complete": False, "pairs": {}}))
    report = prepare_dataset(collection, out, options())
    assert report.total == 11 and not (out / "train" / "before" / "half.png").exists()


def assert_foreign_folder_refused(collection: Path, out: Path) -> None:
    """A new folder `out` holding a file svai did not write is refused, with and without
    force, and the file is left as it was."""
    out.mkdir()
    (out / "thesis.docx").write_text("precious")
    for force in (False, True):
        with pytest.raises(SvaiError, match="not made by `svai prepare`"):
            prepare_dataset(collection, out, options(force=force))
    assert (out / "thesis.docx").read_text() == "precious"


def test_a_folder_that_is_not_ours_is_still_refused_even_with_force(collection: Path, tmp_path: Path) -> None:
    assert_foreign_folder_refused(collection, tmp_path / "out")


def test_a_second_prepare_into_the_same_out_is_refused(collection: Path, tmp_path: Path) -> None:
    from svai.runlock import RunLock

    out = tmp_path / "out"
    with RunLock(out):
        with pytest.raises(SvaiError, match="in use by process"):
            prepare_dataset(collection, out, options())

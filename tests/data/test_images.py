"""Decoding: every mode to 8-bit RGB, EXIF orientation, reduced-scale JPEG decoding, bad files."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from svai.data.images import ImageProblem, draft_size, load_rgb_image, probe, read_rgb


def halves(width: int, height: int) -> Image.Image:
    """Red left half, blue right half: any rotation or mirror shows."""
    data = np.zeros((height, width, 3), np.uint8)
    data[:, : width // 2] = (255, 0, 0)
    data[:, width // 2:] = (0, 0, 255)
    return Image.fromarray(data)


def png_with_size(path: Path, width: int, height: int) -> None:
    """A valid 1x1 PNG whose header claims width x height (a decompression bomb's header)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(b"\x00\x00\x00\x00")) + chunk(b"IEND", b""))


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored image must be turned 90 degrees clockwise to display
    halves(60, 40).save(path, exif=exif, quality=95)
    image = read_rgb(path)
    assert image.shape == (60, 40, 3)  # portrait once displayed
    # Turning clockwise brings the stored left edge (red) to the top.
    assert image[5, 20, 0] > 200 and image[5, 20, 2] < 60
    assert image[55, 20, 2] > 200 and image[55, 20, 0] < 60
    assert (probe(path).width, probe(path).height) == (40, 60)


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        # CMYK: pure cyan -> (0, 255, 255) by the naive complement Pillow applies without a profile.
        (lambda: Image.new("CMYK", (8, 8), (255, 0, 0, 0)), (0, 255, 255)),
        (lambda: Image.new("L", (8, 8), 77), (77, 77, 77)),
        # Fully transparent red is white once composited on white.
        (lambda: Image.new("RGBA", (8, 8), (255, 0, 0, 0)), (255, 255, 255)),
        (lambda: Image.new("LA", (8, 8), (0, 0)), (255, 255, 255)),
        (lambda: Image.new("1", (8, 8), 1), (255, 255, 255)),
    ],
)
def test_modes_become_rgb(tmp_path: Path, make, expected) -> None:  # type: ignore[no-untyped-def]
    image = make()
    path = tmp_path / ("image.tif" if image.mode == "CMYK" else "image.png")
    image.save(path)
    result = read_rgb(path)
    assert result.dtype == np.uint8 and result.shape == (8, 8, 3)
    assert tuple(int(v) for v in result[4, 4]) == expected


def test_half_transparent_is_composited_on_white(tmp_path: Path) -> None:
    path = tmp_path / "half.png"
    Image.new("RGBA", (4, 4), (0, 0, 0, 128)).save(path)
    # out = a * 0 + (1 - a) * 255 with a = 128/255 -> 127.
    assert abs(int(read_rgb(path)[0, 0, 0]) - 127) <= 1


def test_palette_with_transparency(tmp_path: Path) -> None:
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 255, 0, 255, 0, 0] + [0] * 762)
    path = tmp_path / "palette.png"
    image.save(path, transparency=1)  # index 1 (red) is transparent
    assert tuple(int(v) for v in read_rgb(path)[0, 0]) == (255, 255, 255)
    image.save(path)
    assert tuple(int(v) for v in read_rgb(path)[0, 0]) == (255, 0, 0)


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    path = tmp_path / "grey16.png"
    Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")
    values = read_rgb(path)[0, :, 0].tolist()
    assert values == [0, round(32768 / 65535 * 255), 255]


def test_draft_decodes_large_jpeg_at_reduced_scale(tmp_path: Path) -> None:
    path = tmp_path / "large.jpg"
    halves(2000, 1500).save(path, quality=90)
    small = load_rgb_image(path, min_size=(300, 225))
    assert small.width >= 300 and small.height >= 225
    assert small.width <= 1000  # at least the 1/2 DCT scale was used
    assert load_rgb_image(path).size == (2000, 1500)


def test_draft_respects_orientation(tmp_path: Path) -> None:
    path = tmp_path / "portrait.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    halves(2000, 1500).save(path, exif=exif)
    small = load_rgb_image(path, min_size=(225, 300))  # oriented (width, height)
    assert small.width < small.height
    assert small.width >= 225 and small.height >= 300


def test_draft_size_keeps_aspect() -> None:
    assert draft_size(4032, 3024, 512) == (683, 512)
    assert draft_size(100, 80, 512) == (100, 80)  # never asks for more than there is


@pytest.mark.parametrize(
    ("write", "reason"),
    [
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_text("not a picture at all"), "not an image"),
    ],
)
def test_bad_files_are_classified(tmp_path: Path, write, reason) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "bad.jpg"
    write(path)
    with pytest.raises(ImageProblem) as caught:
        read_rgb(path)
    assert caught.value.reason == reason
    assert str(path) in str(caught.value)


def test_truncated_jpeg(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8)).save(buffer, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageProblem) as caught:
        read_rgb(path)
    assert caught.value.reason == "truncated"


def test_decompression_bomb_is_refused_from_its_header(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    png_with_size(path, 40000, 40000)
    with pytest.raises(ImageProblem) as caught:
        read_rgb(path)
    assert caught.value.reason == "too large"


def test_own_pixel_limit(tmp_path: Path) -> None:
    path = tmp_path / "image.png"
    Image.new("RGB", (100, 100)).save(path)
    with pytest.raises(ImageProblem) as caught:
        read_rgb(path, max_pixels=100 * 99)
    assert caught.value.reason == "too large"
    assert read_rgb(path, max_pixels=100 * 100).shape == (100, 100, 3)


def test_an_extreme_shape_is_refused_before_decoding(tmp_path: Path) -> None:
    from svai.data.images import MAX_ASPECT

    strip = tmp_path / "strip.png"
    Image.fromarray(np.zeros((10, 30000), np.uint8)).save(strip, optimize=True)
    assert strip.stat().st_size < 5000
    with pytest.raises(ImageProblem) as caught:
        read_rgb(strip)
    assert caught.value.reason == "extreme shape" and f"{MAX_ASPECT:g} times" in caught.value.detail
    ok = tmp_path / "wide.png"
    Image.fromarray(np.zeros((10, 90), np.uint8)).save(ok)
    assert read_rgb(ok).shape == (10, 90, 3)


def test_the_padded_square_is_what_counts_where_a_photo_is_padded(tmp_path: Path) -> None:
    wide = tmp_path / "wide.png"
    Image.fromarray(np.zeros((100, 400), np.uint8)).save(wide)
    assert read_rgb(wide, max_pixels=100 * 400).shape == (100, 400, 3)
    with pytest.raises(ImageProblem, match="padded to a square"):
        read_rgb(wide, max_pixels=100 * 400, square=True)


def test_every_file_passed_over_is_listed_with_its_reason(tmp_path: Path) -> None:
    from svai.data.images import scan_images

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "anim.gif")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "IMG_1.HEIC").write_bytes(b"heic")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".DS_Store").write_bytes(b"x")
    (tmp_path / "Thumbs.db").write_bytes(b"x")
    listing = scan_images(tmp_path)
    assert listing.images == [tmp_path / "a.png"]
    assert [(p.path.relative_to(tmp_path).as_posix(), p.reason) for p in listing.passed_over] == [
        ("anim.gif", "unsupported format"), ("notes.txt", "not an image"), ("sub/IMG_1.HEIC", "unsupported format")]


def test_pipes_broken_links_and_linked_folders_are_listed_never_opened(tmp_path: Path) -> None:
    import os

    from svai.data.images import scan_images

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    os.mkfifo(tmp_path / "pipe.png")  # opening it would wait forever
    (tmp_path / "broken.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    listing = scan_images(tmp_path)
    assert listing.images == [tmp_path / "a.png"]
    assert [(p.path.name, p.reason) for p in listing.passed_over] == [
        ("broken.jpg", "not a file"), ("linked", "linked folder"), ("pipe.png", "not a file")]

"""Finding and decoding image files: the one place that knows about formats and EXIF.

Every decoded image leaves here as a plain (H, W, 3) uint8 RGB array: EXIF orientation
applied, colour profile converted to sRGB, alpha composited on white, 16-bit scaled to
8-bit. Nothing else survives the trip (no EXIF, GPS, XMP or comments), because the array
carries pixels only.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from svai.data.options import MAX_PIXELS
from svai.errors import SvaiError

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})

# Photo formats users meet that svai does not read (HEIC and raw need plug-ins; GIF is not a
# photo format): listed with the reason "unsupported format" wherever they are passed over.
UNSUPPORTED_EXTENSIONS: frozenset[str] = frozenset(
    {".heic", ".heif", ".avif", ".cr2", ".nef", ".arw", ".dng", ".gif"})

# Files every OS leaves around; passed over without a word, like hidden files.
IGNORED_NAMES: frozenset[str] = frozenset({"thumbs.db", "desktop.ini", "icon\r"})

# A photo whose long side is more than this many times its short side is no photo of a face,
# and padding it to a square (generate) would multiply its memory by that ratio.
MAX_ASPECT: float = 10.0
# The largest square a photo is padded to where it is padded (generate): 12288 x 12288 takes
# a 108 MP phone photo (12000 x 9000); about 1.8 GB as a float image.
MAX_SQUARE_PIXELS: int = 12_288 * 12_288


class ImageProblem(SvaiError):
    """An image that cannot be used; `reason` is a short code for reports ("unreadable" …)."""

    def __init__(self, path: Path, reason: str, detail: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.path = Path(path)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ImageInfo:
    """What a file's header says: size after EXIF orientation, format and mode."""

    width: int
    height: int
    format: str
    mode: str


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


@dataclass(frozen=True)
class PassedOver:
    """A file under an input folder that is not read as an image, and why (a short reason code
    shared by every command: "unsupported format", "not an image")."""

    path: Path
    reason: str
    detail: str


@dataclass
class Listing:
    """What a folder of photos holds: the images to read, sorted, and every other visible file."""

    images: list[Path]
    passed_over: list[PassedOver]


def scan_images(root: Path) -> Listing:
    """Every file under `root`, recursively: image files to read, and the others passed over
    with a reason. Hidden files and folders (starting with ".") and OS clutter are ignored
    silently; links to folders are not followed. `root` must be a folder (an error otherwise).
    """
    root = Path(root)
    if not root.exists():
        raise SvaiError(f"{root} does not exist: give a folder of images")
    if not root.is_dir():
        raise SvaiError(f"{root} is not a folder: give a folder of images")
    images: list[Path] = []
    passed: list[PassedOver] = []
    for folder, dirs, files in os.walk(root):
        linked = [d for d in dirs if not d.startswith(".") and (Path(folder) / d).is_symlink()]
        passed += [PassedOver(Path(folder) / d, "linked folder", "a link to a folder is not followed: "
                              "give the folder itself") for d in linked]
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in linked)
        for name in sorted(files):
            if name.startswith(".") or name.casefold() in IGNORED_NAMES:
                continue
            path = Path(folder) / name
            suffix = path.suffix.lower()
            if not path.is_file():  # a pipe, a device, a broken link: never opened (it could block)
                passed.append(PassedOver(path, "not a file", "not a regular file (a pipe, device or broken link)"))
            elif suffix in IMAGE_EXTENSIONS:
                images.append(path)
            elif suffix in UNSUPPORTED_EXTENSIONS:
                passed.append(PassedOver(path, "unsupported format", f"{suffix} is not supported: convert it to JPEG or PNG"))
            else:
                passed.append(PassedOver(path, "not an image", f"{suffix or 'no extension'} is not an image extension"))
    return Listing(sorted(images), sorted(passed, key=lambda p: p.path))


def list_images(root: Path) -> list[Path]:
    """Every image file under `root`, recursively, sorted (see `scan_images`).

    A missing folder, a file given instead of a folder, or a folder without images is an
    error naming the folder (and the files it passed over).
    """
    listing = scan_images(root)
    if not listing.images:
        raise no_images(Path(root), listing)
    return listing.images


def no_images(root: Path, listing: Listing) -> SvaiError:
    """The error for a folder without images, naming a few of the files it passed over."""
    kinds = ", ".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
    left = "; ".join(f"{p.path.relative_to(root).as_posix()}: {p.reason}" for p in listing.passed_over[:3])
    more = f" and {len(listing.passed_over) - 3} more" if len(listing.passed_over) > 3 else ""
    return SvaiError(f"{root} holds no images ({kinds})" + (f"; passed over {left}{more}" if left else ""))


def check_dimensions(path: Path, width: int, height: int, max_pixels: int = MAX_PIXELS, square: bool = False) -> None:
    """Refuse, before any pixel is decoded, a photo whose memory would be out of bounds: over
    `max_pixels` (counted on the square it is padded to when `square`), or with one side more
    than `MAX_ASPECT` times the other."""
    if min(width, height) < 1:
        raise ImageProblem(path, "unreadable", f"the header gives a size of {width}x{height}")
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise ImageProblem(path, "extreme shape",
                           f"{width}x{height}: one side is more than {MAX_ASPECT:g} times the other")
    pixels = max(width, height) ** 2 if square else width * height
    if pixels > max_pixels:
        what = f"padded to a square ({max(width, height)} px a side)" if square else f"{width}x{height}"
        raise ImageProblem(path, "too large", f"{what} exceeds the safe limit of {max_pixels} pixels")


def _open(path: Path, max_pixels: int, square: bool = False) -> Image.Image:
    """Open the header only; classify every failure into an `ImageProblem`."""
    try:
        size = path.stat().st_size
    except OSError as error:
        raise ImageProblem(path, "unreadable", f"cannot read file ({error.strerror or error})") from None
    if size == 0:
        raise ImageProblem(path, "empty file", "the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Sizes between Pillow's warning and our own limit are accepted on purpose.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError as error:
        raise ImageProblem(path, "too large", f"refused as a possible decompression bomb ({error})") from None
    except Image.UnidentifiedImageError:
        raise ImageProblem(path, "not an image", "not an image Pillow can decode") from None
    except Exception as error:  # noqa: BLE001 - a malformed file can make any decoder step fail
        raise ImageProblem(path, "unreadable", f"cannot read image ({type(error).__name__}: {error})") from None
    try:
        check_dimensions(path, image.width, image.height, max_pixels, square)
    except ImageProblem:
        image.close()
        raise
    return image


def _oriented_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) once EXIF orientation is applied (5–8 swap the axes)."""
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # a corrupt EXIF block is ignored, as exif_transpose does
        orientation = 1
    return (image.height, image.width) if orientation in (5, 6, 7, 8) else (image.width, image.height)


def probe(path: Path, max_pixels: int = MAX_PIXELS) -> ImageInfo:
    """Read a file's header (no pixel decoding): oriented size, format and mode."""
    path = Path(path)
    image = _open(path, max_pixels)
    with image:
        width, height = _oriented_size(image)
        return ImageInfo(width, height, image.format or "", image.mode)


def read_rgb(
    path: Path,
    min_size: tuple[int, int] | None = None,
    max_pixels: int = MAX_PIXELS,
    square: bool = False,
) -> np.ndarray:
    """Decode an image file as (H, W, 3) uint8 RGB, EXIF orientation applied, alpha on white.

    `min_size` (width, height), in oriented pixels, lets formats that can decode at reduced
    scale (JPEG's DCT scaling: 1/2, 1/4, 1/8) skip the resolution nobody needs: the result is
    never smaller than `min_size` on either axis, but may be smaller than the file.

    Raises `ImageProblem` (an `SvaiError`) naming the file when it is empty, unreadable,
    truncated, not an image, larger than `max_pixels` (counted on the square it will be
    padded to when `square`) or of an extreme shape (`check_dimensions`).
    """
    return to_rgb_array(load_rgb_image(path, min_size, max_pixels, square))


def load_rgb_image(
    path: Path,
    min_size: tuple[int, int] | None = None,
    max_pixels: int = MAX_PIXELS,
    square: bool = False,
) -> Image.Image:
    """Like `read_rgb`, but returns a Pillow image in mode "RGB" (metadata dropped)."""
    path = Path(path)
    image = _open(path, max_pixels, square)
    try:
        with image, warnings.catch_warnings():
            # Pillow warns about odd EXIF blocks and the like; a photo either decodes or is skipped.
            warnings.simplefilter("ignore")
            if min_size is not None and image.format == "JPEG":
                width, height = _oriented_size(image)
                if (width, height) != image.size:
                    min_size = (min_size[1], min_size[0])
                # draft() picks the largest DCT scale that keeps both axes at least this big.
                image.draft("RGB", (max(1, int(min_size[0])), max(1, int(min_size[1]))))
            image.load()
            image = ImageOps.exif_transpose(image)
            # A fresh image from the pixels alone: no EXIF, GPS, XMP, comments or profile.
            return Image.fromarray(to_rgb_array(image))
    except SvaiError:
        raise
    except MemoryError:
        raise ImageProblem(path, "too large", "not enough memory to decode it") from None
    except Exception as error:  # noqa: BLE001 - a malformed file can make any decoder step fail
        reason = "truncated" if "truncated" in str(error).lower() else "unreadable"
        raise ImageProblem(path, reason, f"cannot decode image ({type(error).__name__}: {error})") from None


def draft_size(width: int, height: int, target: int) -> tuple[int, int]:
    """The smallest (w, h) with the aspect of (width, height) whose short side is >= target."""
    short = min(width, height)
    if short <= target:
        return width, height
    scale = target / short
    return max(target, math.ceil(width * scale)), max(target, math.ceil(height * scale))


def _to_srgb(image: Image.Image) -> Image.Image:
    """Convert through the embedded ICC profile to sRGB, so dropping the profile keeps colours.

    A missing or broken profile (or Pillow built without littlecms) leaves the pixels as they are.
    """
    icc = image.info.get("icc_profile")
    if not icc or image.mode not in ("RGB", "CMYK"):
        return image
    try:
        from PIL import ImageCms

        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        description = ImageCms.getProfileDescription(source).strip().lower()
        if image.mode == "RGB" and description.startswith("srgb"):
            return image
        return ImageCms.profileToProfile(image, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
    except Exception:  # any profile problem: keep the raw values rather than fail the photo
        return image


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """Any PIL mode -> (H, W, 3) uint8 RGB; transparency is composited on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit, 32-bit or float grayscale: scale the full range down to 8 bits, never clip.
        data = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16"):
            peak = 65535.0
        elif image.mode == "F" and data.size and data.max() <= 1.0:
            peak = 1.0
        else:
            peak = 65535.0 if data.size and data.max() > 255 else 255.0
        gray = np.clip(np.round(data / peak * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    image = _to_srgb(image)
    if image.mode == "P" or image.mode in ("LA", "PA", "La") or "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBa",):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()

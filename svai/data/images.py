"""Finding and decoding image files: the one place that knows about formats and EXIF."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from svai.errors import SvaiError

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})

# Pillow's own limit warns at ~89 Mpx and raises at twice that; we refuse anything over it
# explicitly so that a decompression bomb is a skipped file, not a warning or a crash.
MAX_PIXELS: int = 16384 * 16384


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_images(root: Path) -> list[Path]:
    """Every image file under `root`, recursively, sorted; hidden files and folders skipped.

    A missing folder, a file given instead of a folder, or a folder without images is an
    error naming the folder.
    """
    root = Path(root)
    if not root.exists():
        raise SvaiError(f"{root} does not exist: give a folder of images")
    if not root.is_dir():
        raise SvaiError(f"{root} is not a folder: give a folder of images")
    found = sorted(
        p for p in root.rglob("*")
        if p.is_file() and is_image_file(p) and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not found:
        raise SvaiError(
            f"{root} holds no images ({', '.join(sorted(e.lstrip('.') for e in IMAGE_EXTENSIONS))})"
        )
    return found


def read_rgb(path: Path) -> np.ndarray:
    """Decode an image file as (H, W, 3) uint8 RGB, EXIF orientation applied, alpha on white.

    Raises `SvaiError` naming the file when it is unreadable, truncated or too large.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_PIXELS:
                raise SvaiError(f"{path}: {image.width}x{image.height} exceeds the safe pixel limit")
            image = ImageOps.exif_transpose(image)
            return to_rgb_array(image)
    except SvaiError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise SvaiError(f"{path}: cannot read image ({error})") from None


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """Any PIL mode -> (H, W, 3) uint8 RGB; transparency is composited on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale the full range down to 8 bits rather than clipping.
        data = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if data.max() > 255 else 255.0
        gray = np.clip(np.round(data / peak * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode == "P" or image.mode in ("LA", "PA") or "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()

"""Helpers of the consultation app tests: drawn faces saved as phone-like JPEGs, and the
live server's description."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

# EXIF orientation -> the transpose that turns the upright photo into the stored pixels (the
# inverse of what a viewer applies).
STORED: dict[int, Image.Transpose | None] = {
    1: None,
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
}


@dataclass(frozen=True)
class FacePhoto:
    """A JPEG's bytes and, in the upright photo, its size (w, h) and the face's box."""

    data: bytes
    size: tuple[int, int]
    face: tuple[int, int, int, int]

    def upright(self) -> np.ndarray:
        """The pixels a viewer shows, EXIF orientation applied: (h, w, 3) uint8."""
        return np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(self.data))).convert("RGB"))


def face_jpeg(width: int, height: int, orientation: int = 1, seed: int = 0, quality: int = 90) -> FacePhoto:
    """A drawn face (from the synthetic data), 60 % of the short side, a little above the centre
    of a plain blue-grey photo with mild noise, stored under an EXIF `orientation`."""
    from svai.data.synthetic import generate_pairs

    face = next(iter(generate_pairs(1, 256, seed))).before
    side = int(0.6 * min(width, height))
    left, top = (width - side) // 2, max(0, (height - side) // 2 - side // 10)
    canvas = Image.new("RGB", (width, height), (70, 88, 118))
    canvas.paste(Image.fromarray(face).resize((side, side), Image.Resampling.BICUBIC), (left, top))
    pixels = np.asarray(canvas, dtype=np.int16)
    pixels += np.random.default_rng(seed).integers(-4, 5, pixels.shape, dtype=np.int16)
    upright = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    transpose = STORED[orientation]
    stored = upright.transpose(transpose) if transpose is not None else upright
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", quality=quality, exif=exif)
    return FacePhoto(buffer.getvalue(), (width, height), (left, top, left + side, top + side))


@dataclass
class LiveServer:
    """The app served on 127.0.0.1 by the `live_server` fixture: its base URL, the ASGI app and
    its audit log."""

    url: str
    app: Any
    audit: Path

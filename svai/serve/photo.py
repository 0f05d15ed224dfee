"""A consultation photo: the upload decoded, the face framed for the model, the change pasted back.

The photo keeps its full resolution from upload to export. The model sees only the square
around the face, cut and resized exactly as `svai prepare --crop face` frames its pairs
(`svai.data.align.face_box`, then `render`). Its change — prediction minus the model-sized
crop — is upsampled to the square's full-resolution size and added to the photo's own pixels
there, so the patient's skin keeps its detail wherever the model changed nothing, and seen at
the model's size the result is the model's output. Every pixel outside the square is the
photo's, byte for byte; with a composite, so is every pixel outside the model's own change map.

Uploads are decoded through the same code as every other photo (`svai.data.images`: EXIF
orientation applied, colour profile to sRGB, decompression bombs refused). That code reads
files, so an upload is written to a private folder (`PrivateFolder`: mode 0700, in memory on
Linux) for the few milliseconds of its decoding and deleted at once.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from svai.composite import CompositeOptions, composite
from svai.data.align import face_box, render
from svai.data.images import UNSUPPORTED_EXTENSIONS, ImageProblem, load_rgb_image
from svai.errors import SvaiError
from svai.io import describe_size

Box = tuple[int, int, int, int]

# A 200 MP phone photo is 16320 x 12240; its decoded pixels alone take 600 MB, and a
# consultation gains nothing over a 64 MP one.
MAX_UPLOAD_PIXELS: int = 64_000_000
MAX_UPLOAD_BYTES: int = 100 * 1024 * 1024
# The face square must hold at least this many pixels a side to be worth simulating.
MIN_FACE_SIDE: int = 32

VIEWS: tuple[str, ...] = ("face", "photo")
# The face view shows the model's square with this fraction of its side around it.
FACE_MARGIN: float = 0.25
# Longest side of the images the page shows, per view (the export has its own limit), and
# how they are shrunk (`shrink`): quickly, since they are shown at about that size or less.
DISPLAY_SIDE: dict[str, int] = {"face": 1024, "photo": 1600}
DISPLAY_REDUCING_GAP: float = 1.0
# The difference view multiplies each channel's absolute change by this, so a change of a few
# grey levels is visible.
DIFFERENCE_GAIN: int = 4


class PrivateFolder:
    """A folder only this user can read (mode 0700), in /dev/shm (memory) where there is one,
    removed by `close`. Uploads pass through it one file at a time."""

    def __init__(self) -> None:
        shm = Path("/dev/shm")
        parent = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
        self.path = Path(tempfile.mkdtemp(prefix="svai-serve-", dir=parent))
        os.chmod(self.path, 0o700)

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> "PrivateFolder":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


@dataclass(frozen=True)
class Photo:
    """An uploaded photo, decoded and framed.

    - name: the upload's file name, for messages only (it is never logged or written).
    - pixels: (H, W, 3) uint8 RGB, EXIF orientation applied.
    - sha256: hex digest of the uploaded bytes (what `sha256sum` gives for the file).
    - box: (x0, y0, x1, y1) integer square around the face, inside the photo.
    """

    name: str
    pixels: np.ndarray
    sha256: str
    box: Box

    @property
    def side(self) -> int:
        return self.box[2] - self.box[0]

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return self.pixels.shape[1], self.pixels.shape[0]


def decode_upload(data: bytes, name: str, folder: Path, max_pixels: int = MAX_UPLOAD_PIXELS) -> Image.Image:
    """Decode an uploaded file as an RGB Pillow image, EXIF orientation applied, metadata dropped.

    The bytes live in `folder` only while they are decoded. Any problem is an `SvaiError`
    naming the upload and the fix.
    """
    if not data:
        raise SvaiError(f"{name}: the file is empty (0 bytes); choose a photo")
    if len(data) > MAX_UPLOAD_BYTES:
        raise SvaiError(f"{name}: {describe_size(len(data))} is over the {describe_size(MAX_UPLOAD_BYTES)} limit; "
                        "export the photo at a smaller size")
    path = Path(folder) / f"upload-{uuid.uuid4().hex}"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        return load_rgb_image(path, max_pixels=max_pixels)
    except ImageProblem as problem:
        raise SvaiError(f"{name}: {problem.detail}; {_fix(problem.reason, name, max_pixels)}") from None
    finally:
        path.unlink(missing_ok=True)


def _fix(reason: str, name: str, max_pixels: int) -> str:
    if Path(name).suffix.lower() in UNSUPPORTED_EXTENSIONS:
        return "convert it to JPEG or PNG first (phones can save photos as JPEG: \"most compatible\")"
    if reason == "too large":
        return f"use a photo of at most {max_pixels / 1e6:.0f} megapixels"
    return "choose a JPEG, PNG, WebP, BMP or TIFF photo"


def square_inside(box: tuple[float, float, float, float], width: int, height: int) -> Box:
    """A float square box as the nearest integer square that lies inside a width x height photo."""
    x0, y0, x1, y1 = box
    side = max(1, min(round(x1 - x0), width, height))
    left = min(max(round(x0), 0), width - side)
    top = min(max(round(y0), 0), height - side)
    return left, top, left + side, top + side


def frame_photo(image: Image.Image, name: str, sha256: str) -> Photo:
    """Find the face of a decoded RGB photo (as `svai prepare --crop face` does)."""
    found = face_box(image, (0.0, 0.0, float(image.width), float(image.height)))
    if found is None:
        raise SvaiError(f"{name}: no face found; use a photo of one face seen from the front, "
                        "with some background around the head")
    box = square_inside(found, image.width, image.height)
    if box[2] - box[0] < MIN_FACE_SIDE:
        raise SvaiError(f"{name}: the face is only {box[2] - box[0]} pixels wide; use a photo where it is "
                        f"at least {MIN_FACE_SIDE}")
    return Photo(name, np.asarray(image, dtype=np.uint8), sha256, box)


def model_input(photo: Photo, size: int) -> np.ndarray:
    """The face square resized to the model's size: (size, size, 3) uint8 (Lanczos, as prepare)."""
    x0, y0, x1, y1 = photo.box
    square = Image.fromarray(np.ascontiguousarray(photo.pixels[y0:y1, x0:x1]))
    return render(square, (0.0, 0.0, float(photo.side), float(photo.side)), size)


def upsample(values: np.ndarray, side: int, resample: Image.Resampling) -> np.ndarray:
    """(S, S, C) float -> (side, side, C) float32, interpolated channel by channel.

    Pillow's float ("F") images resize several times faster than torch's bicubic on a CPU.
    """
    values = np.ascontiguousarray(values, dtype=np.float32)
    if values.shape[0] == side:
        return values
    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(values[..., c])).resize((side, side), resample))
                for c in range(values.shape[2])]
    return np.stack(channels, axis=-1)


def paste(photo: Photo, before: np.ndarray, predicted: np.ndarray,
          options: CompositeOptions | None = None, full: np.ndarray | None = None) -> np.ndarray:
    """The simulation inside the face square at full resolution: (side, side, 3) uint8.

    before: the model's input (S, S, 3) uint8 (`model_input`); predicted: its output, same
    shape. The change predicted − before is upsampled (bicubic) and added to the photo's own
    pixels — or, given `full`, the model's output at the face square's own size (a warp
    applied to the full-resolution pixels, `svai.generate.translate_batch`), the change is
    full − the photo's pixels. With `options`, the change is weighted by the model's feathered
    change map (`svai.composite.composite`, found at the model's size and upsampled
    bilinearly): where the weight is 0 the pixel is the photo's own, byte for byte.
    """
    if before.shape != predicted.shape:
        raise ValueError(f"before {before.shape} and predicted {predicted.shape} differ")
    x0, y0, x1, y1 = photo.box
    if full is not None:
        change = full.astype(np.float32) - photo.pixels[y0:y1, x0:x1]
    else:
        change = upsample(predicted.astype(np.float32) - before.astype(np.float32), photo.side,
                          Image.Resampling.BICUBIC)
    if options is not None:
        _, weight = composite(before, predicted, None, options)
        change *= np.clip(upsample(weight[..., None], photo.side, Image.Resampling.BILINEAR), 0.0, 1.0)
    change += photo.pixels[y0:y1, x0:x1]
    np.rint(change, out=change)
    np.clip(change, 0, 255, out=change)
    return change.astype(np.uint8)


def view_box(photo: Photo, view: str) -> Box:
    """The part of the photo a view shows: the face square with a margin ("face"), or all ("photo")."""
    width, height = photo.size
    if view == "photo":
        return 0, 0, width, height
    if view != "face":
        raise SvaiError(f"view {view!r}: use one of {', '.join(VIEWS)}")
    x0, y0, x1, y1 = photo.box
    margin = round(FACE_MARGIN * photo.side)
    return max(0, x0 - margin), max(0, y0 - margin), min(width, x1 + margin), min(height, y1 + margin)


def region(photo: Photo, area: Box, patch: np.ndarray | None = None) -> np.ndarray:
    """The photo's pixels inside `area`, with the simulated face square `patch` pasted where
    they overlap: (h, w, 3) uint8, a copy."""
    ax0, ay0, ax1, ay1 = area
    out = photo.pixels[ay0:ay1, ax0:ax1].copy()
    if patch is not None:
        x0, y0, x1, y1 = photo.box
        ix0, iy0, ix1, iy1 = max(ax0, x0), max(ay0, y0), min(ax1, x1), min(ay1, y1)
        if ix1 > ix0 and iy1 > iy0:
            out[iy0 - ay0:iy1 - ay0, ix0 - ax0:ix1 - ax0] = patch[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0]
    return out


def simulated_photo(photo: Photo, patch: np.ndarray) -> np.ndarray:
    """The whole photo with the simulation pasted back: (H, W, 3) uint8 at full resolution."""
    return region(photo, (0, 0, *photo.size), patch)


def shrink(pixels: np.ndarray, longest: int, reducing_gap: float = 3.0) -> np.ndarray:
    """(h, w, 3) uint8 resized (Lanczos) so its longest side is at most `longest`.

    `reducing_gap` is Pillow's: a large reduction first averages whole blocks of pixels,
    leaving Lanczos at least this factor; 1.0 is the fastest (what the page shows), 3.0
    indistinguishable from Lanczos alone (what "save" exports).
    """
    height, width = pixels.shape[:2]
    scale = longest / max(height, width)
    if scale >= 1:
        return pixels
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = Image.fromarray(pixels).resize(size, Image.Resampling.LANCZOS, reducing_gap=reducing_gap)
    return np.asarray(image, dtype=np.uint8)


def difference(before: np.ndarray, after: np.ndarray, gain: int = DIFFERENCE_GAIN) -> np.ndarray:
    """Where and how much the simulation changed the photo: gain x |after - before| per
    channel, capped at 255; black where nothing changed. Two (h, w, 3) uint8 -> same."""
    if before.shape != after.shape:
        raise ValueError(f"before {before.shape} and after {after.shape} differ")
    change = np.abs(after.astype(np.int16) - before.astype(np.int16)) * gain
    return np.minimum(change, 255).astype(np.uint8)


def pixels_sha256(pixels: np.ndarray) -> str:
    """sha256 of an image's pixels, (H, W, 3) uint8 RGB row by row: the same for any lossless
    file of it (`numpy.asarray(Image.open(f).convert("RGB")).tobytes()`)."""
    return hashlib.sha256(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()).hexdigest()


__all__ = [
    "MAX_UPLOAD_BYTES", "MAX_UPLOAD_PIXELS", "VIEWS", "Photo", "PrivateFolder", "decode_upload", "difference",
    "frame_photo", "model_input", "paste", "pixels_sha256", "region", "shrink", "simulated_photo",
    "view_box",
]

"""A consultation photo: the upload decoded, the face framed for the model, the simulation pasted back.

The photo keeps its full resolution from upload to export. The model is given only the square
around the face, framed as `svai prepare --crop face` frames its pairs (`svai.data.align.face_box`)
and simulated exactly as `svai generate` simulates a face square (`svai.generate.translate_batch`:
resized to the model's size, and the model's change applied to the square at its own size,
so the patient's skin keeps its detail wherever the model changed nothing). Every pixel
outside the square is the photo's, byte for byte; with a composite, so is every pixel
outside the composite's region.

Uploads are decoded through the same code as every other photo (`svai.data.images`: EXIF
orientation applied, colour profile to sRGB, decompression bombs refused). That code reads
files, so an upload is written to a private folder (`PrivateFolder`: mode 0700, in memory on
Linux) for the few milliseconds of its decoding and deleted at once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from svai.composite import CompositeOptions, blend_weight, composite
from svai.data.align import face_box
from svai.data.images import UNSUPPORTED_EXTENSIONS, ImageProblem, load_rgb_image
from svai.errors import SvaiError
from svai.face.mesh import square_inside
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

    PREFIX = "svai-serve-"

    def __init__(self) -> None:
        parent = self.parent()
        self.removed_stale = remove_stale_folders(parent)
        self.path = Path(tempfile.mkdtemp(prefix=f"{self.PREFIX}{os.getpid()}-", dir=parent))
        os.chmod(self.path, 0o700)

    @staticmethod
    def parent() -> Path:
        """/dev/shm (memory) where there is one we can write to, else the temporary folder."""
        shm = Path("/dev/shm")
        return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> "PrivateFolder":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_folders(parent: Path) -> int:
    """Remove the private folders of `svai serve` processes that no longer run (a killed
    server cannot remove its own): those named `svai-serve-<pid>-…`, owned by this user, whose
    process is gone. Returns how many were removed."""
    removed = 0
    try:
        entries = list(parent.iterdir())
    except OSError:
        return 0
    for entry in entries:
        name = entry.name
        if not name.startswith(PrivateFolder.PREFIX):
            continue
        pid_text = name[len(PrivateFolder.PREFIX):].split("-", 1)[0]
        try:
            info = entry.lstat()
        except OSError:
            continue
        if (not pid_text.isdigit() or info.st_uid != os.getuid() or not stat.S_ISDIR(info.st_mode)
                or _running(int(pid_text))):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed += 1
    return removed


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
    # Every face the face layer found, largest first (empty with the skin-colour fallback),
    # and which one `box` frames.
    faces: tuple = ()
    face: int = 0

    @property
    def landmarks(self) -> np.ndarray | None:
        """The framed face's 478 landmarks in photo pixels, None without the face layer."""
        return self.faces[self.face].landmarks if self.faces else None

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


def frame_photo(image: Image.Image, name: str, sha256: str) -> Photo:
    """Find the face of a decoded RGB photo and frame it as `svai prepare --crop face` does:
    the largest face's square from its landmarks (the face layer), else the skin-colour box."""
    from svai import face

    pixels = np.asarray(image, dtype=np.uint8)
    faces: tuple = ()
    finder = face.finder.usable_finder(logging.getLogger(__name__))
    if finder is not None:
        faces = tuple(finder.find(pixels))
        found = faces[0].square if faces else None
    else:
        found = face_box(image, (0.0, 0.0, float(image.width), float(image.height)))
    if found is None:
        raise SvaiError(f"{name}: no face found; use a photo of one face seen from the front, "
                        "with some background around the head")
    box = _checked_square(found, image.width, image.height, name)
    return Photo(name, pixels, sha256, box, faces)


def _checked_square(found: tuple[float, float, float, float], width: int, height: int, name: str) -> Box:
    box = square_inside(found, width, height)
    if box[2] - box[0] < MIN_FACE_SIDE:
        raise SvaiError(f"{name}: the face is only {box[2] - box[0]} pixels wide; use a photo where it is "
                        f"at least {MIN_FACE_SIDE}")
    return box


def reframe(photo: Photo, face: int | None = None, box: list | tuple | None = None) -> Photo:
    """The photo framed on another face (`face`, an index into `photo.faces`) or on a square
    the surgeon moved or resized (`box`, [x0, y0, x1, y1] in photo pixels, made square around
    its centre and kept inside the photo). SvaiError naming the field and the fix."""
    from dataclasses import replace

    width, height = photo.size
    if face is not None:
        if isinstance(face, bool) or not isinstance(face, int) or not 0 <= face < len(photo.faces):
            raise SvaiError(f"face must be one of 0..{len(photo.faces) - 1} (the faces found); got {face!r}")
        return replace(photo, face=face, box=_checked_square(photo.faces[face].square, width, height, photo.name))
    if (not isinstance(box, (list, tuple)) or len(box) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in box)):
        raise SvaiError(f"box must be [x0, y0, x1, y1] in photo pixels; got {box!r}")
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(x1 - x0, y1 - y0)
    if side <= 0:
        raise SvaiError(f"box {box}: x1 and y1 must be larger than x0 and y0")
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    square = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
    return replace(photo, box=_checked_square(square, width, height, photo.name))


def overlay_of(photo: Photo) -> dict:
    """What the page draws over the photo (photo pixels): every face's square, which is
    framed, the square the model sees, and the framed face's procedure regions as polygons."""
    from svai.face import mesh

    regions: dict[str, list] = {}
    if photo.landmarks is not None:
        for procedure in mesh.REGION_PROCEDURES:
            regions[procedure] = [[[round(float(x), 1), round(float(y), 1)] for x, y in polygon]
                                  for polygon in mesh.region_polygons(photo.landmarks, procedure)]
    return {
        "faces": [[round(v, 1) for v in found.square] for found in photo.faces],
        "face": photo.face,
        "box": list(photo.box),
        "regions": regions,
    }


def face_square(photo: Photo) -> np.ndarray:
    """The photo's face square at full resolution: (side, side, 3) uint8."""
    x0, y0, x1, y1 = photo.box
    return np.ascontiguousarray(photo.pixels[y0:y1, x0:x1])


def upsample(values: np.ndarray, side: int) -> np.ndarray:
    """(S, S) float -> (side, side) float32, interpolated bilinearly.

    Pillow's float ("F") images resize several times faster than torch on a CPU.
    """
    values = np.ascontiguousarray(values, dtype=np.float32)
    if values.shape[0] == side:
        return values
    return np.asarray(Image.fromarray(values).resize((side, side), Image.Resampling.BILINEAR))


# The side at which a composite's landmark region is drawn and feathered (then upsampled): fine
# enough to follow the anatomy within a few pixels of a 12 MP photo, cheap to feather.
REGION_SIDE = 256


def square_region(photo: Photo, procedures: tuple[str, ...]) -> np.ndarray | None:
    """The union of `procedures`' landmark regions (none given: eyes, nose and jaw) in the face
    square, drawn at `composite_side` px: (side, side) bool; None without landmarks or for a
    procedure the face mesh does not know."""
    from svai.composite import landmark_mask

    if photo.landmarks is None:
        return None
    size = composite_side(photo)
    x0, y0, _, _ = photo.box
    points = (photo.landmarks - np.array([x0, y0])) * (size / photo.side)
    return landmark_mask(points, procedures, size, size)


def paste(photo: Photo, simulated: np.ndarray, options: CompositeOptions | None = None,
          region: np.ndarray | None = None) -> np.ndarray:
    """The simulation inside the face square at full resolution: (side, side, 3) uint8.

    simulated: the model's result for the face square at the square's own size, (side, side,
    3) uint8 (`svai.generate.translate_batch` on `face_square`, as `svai generate` simulates
    a face square); without `options` it is the patch itself. With `options`, its change from
    the photo is weighted by a feathered map found at `composite_side` and upsampled
    bilinearly: `region` (the chosen procedures' landmark regions in the square at any size,
    `square_region`) feathered at its own size, or else the model's own change map
    (`svai.composite.composite`). Where the weight is 0 the pixel is the photo's own, byte for
    byte.
    """
    x0, y0, x1, y1 = photo.box
    own = photo.pixels[y0:y1, x0:x1]
    if simulated.shape != own.shape:
        raise ValueError(f"simulated {simulated.shape} and the face square {own.shape} differ")
    if options is None:
        return simulated
    if region is None:
        side = composite_side(photo)
        _, weight = composite(reduced(own, side), reduced(simulated, side), None, options)
    else:
        weight = blend_weight(region, options)
    change = simulated.astype(np.float32) - own
    change *= np.clip(upsample(weight, photo.side)[..., None], 0.0, 1.0)
    change += own
    np.rint(change, out=change)
    np.clip(change, 0, 255, out=change)
    return change.astype(np.uint8)


def composite_side(photo: Photo) -> int:
    """The side at which a composite's weight is found for this photo's face square."""
    return min(photo.side, REGION_SIDE)


def reduced(pixels: np.ndarray, side: int) -> np.ndarray:
    """(S, S, 3) uint8 resized to (side, side, 3) uint8 (bilinear; a copy-free no-op when equal)."""
    if pixels.shape[0] == side:
        return pixels
    return np.asarray(Image.fromarray(np.ascontiguousarray(pixels)).resize((side, side), Image.Resampling.BILINEAR))


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
    "face_square", "frame_photo", "overlay_of", "paste", "pixels_sha256", "reframe", "region",
    "remove_stale_folders", "shrink", "simulated_photo", "view_box",
]

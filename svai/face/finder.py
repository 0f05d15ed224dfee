"""Finding faces: OpenCV's YuNet detector, then MediaPipe's 478-point landmarker on each face.

YuNet runs first on the whole photo (it finds faces on warm backgrounds and dark skin where
MediaPipe's own short-range detector does not); each face it finds is cut out as a square
around its box, rendered at `CROP` pixels and given to the landmarker, whose points are
mapped back to the photo. A detection the landmarker cannot read is not a face.

Both networks are the published files listed by `svai weights` (keys `face-detector` and
`face-landmarker`); they are looked up on disk only. The libraries come with the optional
extra `svai[face]`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from svai import weights
from svai.errors import SvaiError
from svai.face import mesh

INSTALL_HINT = "pip install 'svai[face]'"
# Detection runs on the photo scaled so its long side is at most DETECT_MAX (speed) and its
# short side at least DETECT_MIN (YuNet's smallest anchors miss faces in 64 px thumbnails).
DETECT_MAX = 640
DETECT_MIN = 256
# Each face is cut out as a square of CROP_BOXES detector boxes, rendered at CROP pixels.
CROP_BOXES = 2.2
CROP = 256
MIN_SCORE = 0.6

_warned = threading.Event()


def available() -> bool:
    """Whether the face layer's libraries (OpenCV with the dnn face module, MediaPipe) import."""
    try:
        _libraries()
    except ImportError:
        return False
    return True


def missing_message(what: str = "finding faces") -> str:
    return f"{what} needs the face layer: {INSTALL_HINT}"


def warn_missing_once(logger, instead: str = "using the skin-colour box instead") -> None:  # type: ignore[no-untyped-def]
    """Log once per process, in one line, why the face layer cannot run and how to fix it."""
    if not _warned.is_set():
        _warned.set()
        logger.warning("%s; %s", problem() or missing_message(), instead)


FACE_WEIGHTS = ("face-detector", "face-landmarker", "face-identity")
# What finding faces needs; the identity score checks its own file when it starts.
FINDER_WEIGHTS = FACE_WEIGHTS[:2]


def problem(weights_dir: str | Path | None = None) -> str | None:
    """Why faces cannot be found here (libraries or a finder weights file missing), or None."""
    if not available():
        return missing_message()
    for key in FINDER_WEIGHTS:
        try:
            verified_weights(key, weights_dir)
        except SvaiError as error:
            return str(error)
    return None


def _libraries():  # type: ignore[no-untyped-def]
    # Quiet the libraries' own C++ logging before they load (it writes to stderr directly).
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import cv2
    from mediapipe.tasks.python import BaseOptions, vision

    if not hasattr(cv2, "FaceDetectorYN"):
        raise ImportError("this OpenCV build has no FaceDetectorYN")
    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    except AttributeError:
        pass
    return cv2, BaseOptions, vision


def require_libraries(what: str = "finding faces"):  # type: ignore[no-untyped-def]
    """(cv2, BaseOptions, vision), or a one-line error saying how to install the face layer."""
    try:
        return _libraries()
    except ImportError:
        raise SvaiError(missing_message(what)) from None


def verified_weights(key: str, weights_dir: str | Path | None) -> Path:
    """The verified file for `key`: missing or damaged is one line naming the file and the fix."""
    path = weights.require(key, weights_dir)
    if not weights.verify(key, path):
        raise SvaiError(f"{path}: not the published {weights.spec(key).filename} (sha256 differs): "
                        f"the file is damaged; fetch it again with `svai weights fetch {key}`")
    return path


@dataclass(frozen=True)
class Face:
    """One face in a photo, in the upright photo's pixels.

    Attributes:
        box: the detector's box [x0, y0, x1, y1].
        score: the detector's confidence in [0, 1].
        landmarks: (478, 2) float64 MediaPipe mesh points (x, y).
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray = field(repr=False)

    @property
    def square(self) -> mesh.Box:
        """The face square svai crops and models see (`mesh.frame_square`)."""
        return mesh.frame_square(self.landmarks)

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return (x1 - x0) * (y1 - y0)

    def regions(self, width: int, height: int, procedures: tuple[str, ...] = mesh.REGION_PROCEDURES) -> dict:
        """procedure -> bounding box [x0, y0, x1, y1] of its region, clipped to the photo."""
        return {p: mesh.region_box(self.landmarks, p, width, height) for p in procedures if p in mesh.REGION_SHAPES}

    def region_masks(self, width: int, height: int, procedures: tuple[str, ...] | list[str]) -> dict[str, np.ndarray]:
        return mesh.region_masks(self.landmarks, procedures, width, height)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null for the block (Python exceptions still propagate)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _detect_scale(width: int, height: int) -> float:
    if max(width, height) > DETECT_MAX:
        return DETECT_MAX / max(width, height)
    return max(1.0, DETECT_MIN / min(width, height))


class FaceFinder:
    """YuNet + MediaPipe FaceLandmarker, loaded once; use as a context manager or `close()`.

    `find(rgb)` returns every face, largest first. Not thread-safe: one finder per thread.
    """

    def __init__(self, weights_dir: str | Path | None = None, *, max_faces: int = 16, min_score: float = MIN_SCORE) -> None:
        cv2, BaseOptions, vision = require_libraries()
        self._cv2 = cv2
        self._max_faces = max_faces
        detector = verified_weights("face-detector", weights_dir)
        landmarker = verified_weights("face-landmarker", weights_dir)
        self._detector = cv2.FaceDetectorYN.create(str(detector), "", (DETECT_MIN, DETECT_MIN), min_score, 0.3, 5000)
        import mediapipe

        self._image_type = mediapipe.Image
        self._image_format = mediapipe.ImageFormat.SRGB
        # MediaPipe's C++ side writes start-up notes straight to stderr when its graph starts.
        with _quiet_stderr():
            try:
                options = vision.FaceLandmarkerOptions(
                    base_options=BaseOptions(model_asset_buffer=landmarker.read_bytes()),
                    running_mode=vision.RunningMode.IMAGE,
                    num_faces=1,
                )
                self._landmarker = vision.FaceLandmarker.create_from_options(options)
            except (RuntimeError, ValueError) as error:
                raise SvaiError(f"{landmarker}: MediaPipe cannot load it ({error}): fetch it again with "
                                "`svai weights fetch face-landmarker`") from None
            self._landmarker.detect(self._image_type(image_format=self._image_format,
                                                     data=np.zeros((CROP, CROP, 3), np.uint8)))

    def __enter__(self) -> "FaceFinder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the landmarker (MediaPipe complains at interpreter exit about one left open)."""
        landmarker, self._landmarker = getattr(self, "_landmarker", None), None
        if landmarker is not None:
            landmarker.close()

    def detect(self, rgb: np.ndarray) -> list[tuple[tuple[float, float, float, float], float]]:
        """YuNet's boxes [x0, y0, x1, y1] in photo pixels with their scores, largest first."""
        cv2 = self._cv2
        height, width = rgb.shape[:2]
        scale = _detect_scale(width, height)
        # Linear, not area, when shrinking: the box only seeds the landmark crop, which is cut
        # from the full-resolution photo, and area-averaging a 12 MP photo costs 50 ms.
        small = rgb if scale == 1.0 else cv2.resize(
            rgb, (max(1, round(width * scale)), max(1, round(height * scale))),
            interpolation=cv2.INTER_LINEAR if scale < 1 else cv2.INTER_CUBIC)
        self._detector.setInputSize((small.shape[1], small.shape[0]))
        _, rows = self._detector.detect(np.ascontiguousarray(small[..., ::-1]))
        found = []
        for row in ([] if rows is None else rows):
            x, y, w, h = (float(v) / scale for v in row[:4])
            found.append(((x, y, x + w, y + h), float(row[-1])))
        found.sort(key=lambda item: -(item[0][2] - item[0][0]) * (item[0][3] - item[0][1]))
        return found[: self._max_faces]

    def landmarks(self, rgb: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray | None:
        """The 478 landmarks of the face in `box` (photo pixels), or None when none is read."""
        cv2 = self._cv2
        x0, y0, x1, y1 = box
        side = max(1, round(CROP_BOXES * max(x1 - x0, y1 - y0)))
        left, top = round((x0 + x1) / 2 - side / 2), round((y0 + y1) / 2 - side / 2)
        height, width = rgb.shape[:2]
        # The square cut out of the photo (black outside it), then area-averaged to CROP px so a
        # face of a 12 MP photo reaches the landmarker without aliasing.
        inner = rgb[max(top, 0):min(top + side, height), max(left, 0):min(left + side, width)]
        square = cv2.copyMakeBorder(inner, max(-top, 0), max(top + side - height, 0), max(-left, 0),
                                    max(left + side - width, 0), cv2.BORDER_CONSTANT, value=(0, 0, 0))
        crop = cv2.resize(square, (CROP, CROP), interpolation=cv2.INTER_AREA if side > CROP else cv2.INTER_CUBIC)
        result = self._landmarker.detect(self._image_type(image_format=self._image_format, data=np.ascontiguousarray(crop)))
        if not result.face_landmarks:
            return None
        points = np.array([[p.x, p.y] for p in result.face_landmarks[0]], dtype=np.float64)
        if points.shape != (mesh.POINTS, 2):
            return None
        return points * side + np.array([left, top])

    def find(self, rgb: np.ndarray) -> list[Face]:
        """Every face in an (H, W, 3) uint8 RGB photo, largest first (empty when none)."""
        if self._landmarker is None:
            raise RuntimeError("this FaceFinder is closed")
        faces = []
        for box, score in self.detect(rgb):
            points = self.landmarks(rgb, box)
            if points is not None:
                faces.append(Face(box=box, score=score, landmarks=points))
        return faces


_shared = threading.local()


def usable_finder(logger, instead: str = "using the skin-colour box instead"):  # type: ignore[no-untyped-def]
    """The shared `FaceFinder` when the face layer can run here, else None after one warning
    (`warn_missing_once`) saying why and what happens `instead`."""
    if problem() is None:
        return shared_finder()
    warn_missing_once(logger, instead)
    return None


def shared_finder(weights_dir: str | Path | None = None) -> FaceFinder:
    """One `FaceFinder` per thread and weights folder, made on first use and closed at exit.

    Closed through the interpreter's thread-shutdown hooks, which run before the plain atexit
    ones: MediaPipe needs its worker threads to close a landmarker."""
    finders = getattr(_shared, "finders", None)
    if finders is None:
        finders = _shared.finders = {}
    key = str(weights_dir or "")
    if key not in finders:
        finders[key] = FaceFinder(weights_dir)
        register = getattr(threading, "_register_atexit", None)
        if register is None:  # pragma: no cover - every supported Python has it
            import atexit

            register = atexit.register
        register(finders[key].close)
    return finders[key]

"""Anatomy from MediaPipe's 478-point face mesh: procedure regions, the face square, units.

Everything here is plain geometry on a `(478, 2)` array of landmark positions in photo pixels
(x right, y down); no network is involved, so regions and framing are the same whichever
build of the landmarker produced the points. The index lists are written here once, as data.

Procedure regions are the anatomy a surgeon works on, drawn from the landmarks of the photo
being simulated (the before photo), never from an after photo. Each region is the union of
one or more convex hulls over landmark indices, grown by a margin proportional to the
inter-ocular distance (surgery moves tissue across the outline: the jaw line moves into
the background, the eyelid crease above the eye).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

POINTS = 478

# Outer eye corners (the subject's right eye is on the image's left): the unit of length.
RIGHT_EYE_OUTER, LEFT_EYE_OUTER = 33, 263
# Iris centres, nose tip and mouth corners: the five points a recognition model aligns on.
RIGHT_IRIS, LEFT_IRIS, NOSE_TIP, MOUTH_RIGHT, MOUTH_LEFT = 468, 473, 1, 61, 291

_RIGHT_EYE = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
_LEFT_EYE = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)
_RIGHT_BROW_LOWER = (46, 53, 52, 65, 55)
_LEFT_BROW_LOWER = (276, 283, 282, 295, 285)
_RIGHT_BROW = (46, 53, 52, 65, 55, 70, 63, 105, 66, 107)
_LEFT_BROW = (276, 283, 282, 295, 285, 300, 293, 334, 296, 336)
_LIPS = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185)
# Bridge, tip, columella and both alae (the wings the oval of the mesh does not reach).
_NOSE = (168, 6, 197, 195, 5, 4, 1, 19, 94, 2, 98, 97, 326, 327, 294, 278, 344, 440, 275, 45, 220,
         115, 48, 64, 49, 279, 129, 358, 102, 331, 209, 429, 217, 437, 198, 420, 193, 417)
# The face oval, clockwise from the top of the forehead.
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
             152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)
# The lower oval from below one cheekbone round the chin to the other.
_JAW = (132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288, 361)
_CHIN = (150, 149, 176, 148, 152, 377, 400, 378, 379, 18, 83, 313, 200, 199, 175)


@dataclass(frozen=True)
class RegionShape:
    """A procedure region: convex hulls over landmark indices, grown by `margin` inter-ocular
    distances."""

    hulls: tuple[tuple[int, ...], ...]
    margin: float


# Margins: the eyelid region reaches the lower brow; the jaw's reaches into the background and
# the neck, where a contour change moves the outline.
REGION_SHAPES: dict[str, RegionShape] = {
    "eyes": RegionShape((_RIGHT_EYE + _RIGHT_BROW_LOWER, _LEFT_EYE + _LEFT_BROW_LOWER), 0.10),
    "nose": RegionShape((_NOSE,), 0.08),
    "jaw": RegionShape((_JAW,), 0.22),
    "lips": RegionShape((_LIPS,), 0.08),
    "chin": RegionShape((_CHIN,), 0.15),
    "brows": RegionShape((_RIGHT_BROW, _LEFT_BROW), 0.10),
}
REGION_PROCEDURES: tuple[str, ...] = tuple(REGION_SHAPES)

# The face square (`frame_square`): the side in mesh widths and where the mesh centre sits.
# Chosen so a real photo is framed as the built-in faces are: over 100 of them the mesh is
# 0.40 of the frame wide and its centre sits 0.043 of the frame below the frame's centre.
SQUARE_WIDTHS = 2.4
SQUARE_HEIGHTS = 1.15
SQUARE_DROP = 0.043

Box = tuple[float, float, float, float]


def check_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """`landmarks` as a (478, 2) float64 array; any other shape is a ValueError."""
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape != (POINTS, 2):
        raise ValueError(f"expected ({POINTS}, 2) landmarks; got {points.shape}")
    return points


def interocular(landmarks: np.ndarray) -> float:
    """Distance between the outer eye corners, in the landmarks' units."""
    points = check_landmarks(landmarks)
    return float(np.linalg.norm(points[LEFT_EYE_OUTER] - points[RIGHT_EYE_OUTER]))


def frame_square(landmarks: np.ndarray) -> Box:
    """The face square: the same framing for every photo, so models see faces at one scale.

    Its side is `SQUARE_WIDTHS` mesh widths (at least `SQUARE_HEIGHTS` mesh heights, for a
    face in profile), centred on the mesh with the centre raised by `SQUARE_DROP` sides, so
    the whole mesh is inside with hair and neck around it. It may reach outside the photo.
    """
    points = check_landmarks(landmarks)
    low, high = points.min(axis=0), points.max(axis=0)
    width, height = high - low
    side = max(SQUARE_WIDTHS * width, SQUARE_HEIGHTS * height, 1.0)
    cx, cy = (low + high) / 2
    cy -= SQUARE_DROP * side
    return (float(cx - side / 2), float(cy - side / 2), float(cx + side / 2), float(cy + side / 2))


def square_inside(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """A float square box as the nearest integer square inside a width x height photo
    (shifted, and shrunk only when the photo is smaller than the square)."""
    x0, y0, x1, y1 = box
    side = max(1, min(round(x1 - x0), width, height))
    left = min(max(round(x0), 0), width - side)
    top = min(max(round(y0), 0), height - side)
    return left, top, left + side, top + side


def _disc(radius: float, corners: int = 16) -> np.ndarray:
    angles = np.linspace(0.0, 2 * np.pi, corners, endpoint=False)
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _convex_hull(points: np.ndarray) -> np.ndarray:
    """Vertices of the convex hull of (N, 2) points, counter-clockwise (monotone chain)."""
    ordered = points[np.lexsort((points[:, 1], points[:, 0]))]

    def half(seq: np.ndarray) -> list[np.ndarray]:
        chain: list[np.ndarray] = []
        for p in seq:
            while len(chain) >= 2:
                a, b = chain[-2], chain[-1]
                if (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0]) > 0:
                    break
                chain.pop()
            chain.append(p)
        return chain

    lower, upper = half(ordered), half(ordered[::-1])
    return np.asarray(lower[:-1] + upper[:-1])


def region_polygons(landmarks: np.ndarray, procedure: str) -> list[np.ndarray]:
    """The polygons (each (K, 2), photo pixels) whose union is `procedure`'s region.

    Each is a hull of the procedure's landmarks grown by its margin (the hull's Minkowski sum
    with a 16-sided disc). An unknown procedure is a KeyError; see `REGION_PROCEDURES`.
    """
    points = check_landmarks(landmarks)
    shape = REGION_SHAPES[procedure]
    grow = _disc(shape.margin * interocular(points))
    polygons = []
    for hull in shape.hulls:
        vertices = _convex_hull(points[list(hull)])
        polygons.append(_convex_hull((vertices[:, None, :] + grow[None, :, :]).reshape(-1, 2)))
    return polygons


def region_box(landmarks: np.ndarray, procedure: str, width: int, height: int) -> Box:
    """The bounding box [x0, y0, x1, y1] of `procedure`'s region, clipped to the photo."""
    corners = np.concatenate(region_polygons(landmarks, procedure))
    x0, y0 = np.clip(corners.min(axis=0), 0, [width, height])
    x1, y1 = np.clip(corners.max(axis=0), 0, [width, height])
    return (float(x0), float(y0), float(x1), float(y1))


def rasterise(polygons: list[np.ndarray], box: tuple[int, int, int, int]) -> np.ndarray:
    """The union of polygons (photo pixels) drawn inside `box` (x0, y0, x1, y1):
    (y1 − y0, x1 − x0) bool, True inside."""
    x0, y0, x1, y1 = box
    canvas = Image.new("L", (x1 - x0, y1 - y0), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in polygons:
        draw.polygon([(float(x) - x0, float(y) - y0) for x, y in polygon], fill=255)
    return np.asarray(canvas) > 0


def region_mask(landmarks: np.ndarray, procedure: str, width: int, height: int) -> np.ndarray:
    """(height, width) uint8: 255 inside `procedure`'s region, 0 elsewhere."""
    return rasterise(region_polygons(landmarks, procedure), (0, 0, width, height)).astype(np.uint8) * 255


def region_masks(landmarks: np.ndarray, procedures: tuple[str, ...] | list[str], width: int,
                 height: int) -> dict[str, np.ndarray]:
    """`region_mask` for each procedure this module knows; the others are left out."""
    return {p: region_mask(landmarks, p, width, height) for p in procedures if p in REGION_SHAPES}


def alignment_points(landmarks: np.ndarray) -> np.ndarray:
    """(5, 2) float32: right eye, left eye, nose tip, right and left mouth corner (photo order
    of a face-recognition alignment)."""
    points = check_landmarks(landmarks)
    return points[[RIGHT_IRIS, LEFT_IRIS, NOSE_TIP, MOUTH_RIGHT, MOUTH_LEFT]].astype(np.float32)


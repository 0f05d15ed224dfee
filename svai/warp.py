"""Warps driven by face landmarks: the face's own frame, a thin-plate spline, and resampling a
photo through it at the photo's own resolution.

A simulation moves some of the 478 landmarks (`svai.face.mesh`) and warps the photo so that
its pixels follow them. The warp is a backward map: each output pixel q takes the photo's
colour at q + f(q), where the thin-plate spline f interpolates, at every moved landmark's new
position, the way back to its old one (Bookstein 1989, "Principal warps"). Landmarks that do
not move, and points on the photo's border, hold the rest of the face and the frame in place.

Coordinates are continuous pixel coordinates (x, y): pixel (i, j) covers [j, j + 1) × [i, i + 1),
its centre is (j + 0.5, i + 0.5), and MediaPipe's normalised landmarks times the image size are
in these units. Lengths that must mean the same on every photo (spline smoothing, feather
widths) are in units of the inter-ocular distance of the face (`FaceFrame`).

At megapixel sizes the spline is evaluated on a coarse grid over the region that changes and
upsampled bilinearly; the photo is resampled only inside that region's box, so the work
follows the size of the change, not of the photo.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from svai.face import mesh
from svai.threads import single_thread

Box = tuple[int, int, int, int]


# -- the face's frame -------------------------------------------------------------------------
@dataclass(frozen=True)
class FaceFrame:
    """A face's own frame: origin at the landmarks' mean, x along the line of the outer eye
    corners (from the subject's right eye to the left), unit = the inter-ocular distance.

    Displacements measured in this frame mean the same on a small or large, rolled or upright
    face; `to_frame` and `to_photo` convert points, `vectors_to_photo` displacements.
    """

    centre: np.ndarray  # (2,) photo pixels
    unit: float  # pixels per inter-ocular distance
    rotation: np.ndarray  # (2, 2): columns are the frame's x and y axes in photo coordinates

    def to_frame(self, points: np.ndarray) -> np.ndarray:
        """(N, 2) photo pixels -> (N, 2) frame units."""
        return (np.asarray(points, np.float64) - self.centre) @ self.rotation / self.unit

    def to_photo(self, points: np.ndarray) -> np.ndarray:
        """(N, 2) frame units -> (N, 2) photo pixels."""
        return np.asarray(points, np.float64) @ self.rotation.T * self.unit + self.centre

    def vectors_to_photo(self, vectors: np.ndarray) -> np.ndarray:
        """(N, 2) displacements in frame units -> (N, 2) in photo pixels."""
        return np.asarray(vectors, np.float64) @ self.rotation.T * self.unit


def face_frame(landmarks: np.ndarray) -> FaceFrame:
    """The frame of a face given its (478, 2) landmarks in photo pixels."""
    points = mesh.check_landmarks(landmarks)
    eye = points[mesh.LEFT_EYE_OUTER] - points[mesh.RIGHT_EYE_OUTER]
    unit = float(np.hypot(*eye))
    if not np.isfinite(unit) or unit < 1e-6:
        raise ValueError(f"degenerate landmarks: the outer eye corners are {unit} apart")
    cos, sin = eye / unit
    # Image y points down, so (cos, sin) then (−sin, cos) keeps the frame's y pointing down the face.
    rotation = np.array([[cos, -sin], [sin, cos]])
    return FaceFrame(points.mean(axis=0), unit, rotation)


def landmarks_found(landmarks: np.ndarray | None) -> bool:
    """Whether `landmarks` is a (478, 2) array of finite points (NaN rows mean "no face")."""
    return landmarks is not None and np.shape(landmarks) == (mesh.POINTS, 2) and bool(np.isfinite(landmarks).all())


# -- the thin-plate spline --------------------------------------------------------------------
def _kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """U(r) = r² log r between (M, 2) and (N, 2) points (float64) -> (M, N); U(0) = 0."""
    squared = ((a * a).sum(dim=1, keepdim=True) + (b * b).sum(dim=1) - 2.0 * a @ b.T).clamp_min(0.0)
    # r² log r = ½ r² log r², and xlogy gives 0 at r = 0.
    return 0.5 * torch.xlogy(squared, squared)


class ThinPlateSpline:
    """f: R² -> R^D with f(p_i) ≈ v_i, minimising bending energy (Bookstein 1989).

    f(q) = a₀ + a₁·x + a₂·y + Σ w_i U(|q − p_i|), U(r) = r² log r, from the linear system
    [[K + λI, P], [Pᵀ, 0]] [w; a] = [v; 0]. λ = `smoothing` ≥ 0 trades exact interpolation for a
    smoother f (λ = 0 interpolates); it also keeps the system solvable when two points coincide.

    points: (N, 2); values: (N, D); N ≥ 3 points not all on one line. Computed in float64.
    """

    def __init__(self, points: np.ndarray, values: np.ndarray, smoothing: float = 0.0) -> None:
        points_t = torch.as_tensor(np.asarray(points, np.float64))
        values_t = torch.as_tensor(np.asarray(values, np.float64))
        if points_t.dim() != 2 or points_t.shape[1] != 2 or values_t.dim() != 2 or len(values_t) != len(points_t):
            raise ValueError(f"expected points (N, 2) and values (N, D); got {tuple(points_t.shape)} and "
                             f"{tuple(values_t.shape)}")
        if smoothing < 0:
            raise ValueError(f"smoothing must be >= 0; got {smoothing}")
        count = len(points_t)
        with single_thread():
            system = torch.zeros(count + 3, count + 3, dtype=torch.float64)
            system[:count, :count] = _kernel(points_t, points_t) + smoothing * torch.eye(count, dtype=torch.float64)
            affine = torch.cat([torch.ones(count, 1, dtype=torch.float64), points_t], dim=1)
            system[:count, count:] = affine
            system[count:, :count] = affine.T
            rhs = torch.zeros(count + 3, values_t.shape[1], dtype=torch.float64)
            rhs[:count] = values_t
            solution = torch.linalg.solve(system, rhs)
        self.points = points_t
        self.weights = solution[:count]
        self.affine = solution[count:]

    def __call__(self, query: np.ndarray) -> np.ndarray:
        """(M, 2) -> (M, D)."""
        q = torch.as_tensor(np.asarray(query, np.float64))
        with single_thread():
            out = self.affine[0] + q @ self.affine[1:] + _kernel(q, self.points) @ self.weights
        return out.numpy()


# -- regions and their feathered weight -------------------------------------------------------
def region_box(polygons: list[np.ndarray], width: int, height: int, pad: int = 2) -> Box | None:
    """The integer box [x0, y0, x1) × [y0, y1) around polygons (photo pixels), grown by `pad`
    and clipped to the photo; None when it is empty."""
    if not polygons:
        return None
    corners = np.concatenate(polygons)
    x0, y0 = np.floor(corners.min(axis=0)).astype(int) - pad
    x1, y1 = np.ceil(corners.max(axis=0)).astype(int) + pad
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(width, x1), min(height, y1)
    if x1 <= x0 or y1 <= y0:
        return None
    return int(x0), int(y0), int(x1), int(y1)


def inner_feather(region: np.ndarray, radius: float) -> np.ndarray:
    """A weight that is 1 deep inside the region and falls smoothly to 0 at its edge:
    (H, W) bool -> (H, W) float32 in [0, 1], exactly 0 outside the region.

    weight = smoothstep(d / radius), d the distance from a pixel to the nearest pixel outside
    the region. The image's own border does not count as outside (a region that reaches the
    frame goes on beyond it).
    """
    region = np.asarray(region, bool)
    if not region.any():
        return np.zeros(region.shape, np.float32)
    padded = np.pad(region, 1, mode="edge")
    if padded.all():
        return np.ones(region.shape, np.float32)
    distance = ndimage.distance_transform_edt(padded)[1:-1, 1:-1]
    t = np.clip(distance / max(radius, 1e-6), 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


# A procedure the mesh has no region of acts on the face oval grown by this many inter-ocular distances.
FACE_MARGIN = 0.05


def procedure_polygons(landmarks: np.ndarray, procedure: str) -> list[np.ndarray]:
    """The polygons whose union is `procedure`'s region on a face (photo pixels): the mesh's
    region (`svai.face.mesh.region_polygons`), or the whole face oval for a procedure the mesh
    has no region of."""
    if procedure in mesh.REGION_SHAPES:
        return mesh.region_polygons(landmarks, procedure)
    from scipy.spatial import ConvexHull

    points = mesh.check_landmarks(landmarks)
    oval = points[list(mesh.FACE_OVAL)]
    angles = np.linspace(0.0, 2 * np.pi, 16, endpoint=False)
    disc = FACE_MARGIN * mesh.interocular(points) * np.stack([np.cos(angles), np.sin(angles)], 1)
    grown = (oval[:, None, :] + disc[None]).reshape(-1, 2)
    return [grown[ConvexHull(grown).vertices]]


def region_weight(regions: list[list[np.ndarray]], box: Box, radius: float) -> np.ndarray:
    """How much of a change each pixel of `box` takes: 1 deep inside the regions (each a list
    of polygons in photo pixels), falling to 0 at their edge over `radius` pixels, or over half
    a region's depth when that is less (a narrow region, the nose's, still reaches full weight
    at its core); the largest over the regions -> (y1 − y0, x1 − x0) float32 in [0, 1], 0
    outside every region."""
    weight = np.zeros((box[3] - box[1], box[2] - box[0]), np.float32)
    for polygons in regions:
        inside = mesh.rasterise(polygons, box)
        if not inside.any():
            continue
        depth = float(ndimage.distance_transform_edt(np.pad(inside, 1)).max())
        weight = np.maximum(weight, inner_feather(inside, max(1.0, min(radius, 0.5 * depth))))
    return weight


def confine(photo: torch.Tensor, after: torch.Tensor, landmarks: np.ndarray, procedures: list[str],
            feather: float = 0.1) -> torch.Tensor:
    """A change kept to the regions of `procedures`: photo + w·(after − photo), w the
    `region_weight` of their regions with a `feather` of that many inter-ocular distances.

    photo, after: (1, C, H, W) float; landmarks: (478, 2) in the photo's pixels ->
    (1, C, H, W) float32, every pixel outside the regions the photo's bit for bit.
    """
    photo = photo.float()
    height, width = photo.shape[2:]
    regions = [procedure_polygons(landmarks, p) for p in procedures]
    box = region_box([polygon for polygons in regions for polygon in polygons], width, height)
    out = photo.clone()
    if box is None:
        return out
    x0, y0, x1, y1 = box
    weight = torch.from_numpy(region_weight(regions, box, feather * mesh.interocular(landmarks))).to(photo.device)
    crop = photo[:, :, y0:y1, x0:x1]
    blended = crop + weight * (after.float()[:, :, y0:y1, x0:x1] - crop)
    out[:, :, y0:y1, x0:x1] = torch.where(weight > 0, blended, crop)
    return out


# -- the warp --------------------------------------------------------------------------------
def border_points(width: float, height: float, per_side: int = 8) -> np.ndarray:
    """Points along the photo's border (continuous pixels), `per_side` on each side, corners once."""
    xs = np.linspace(0.0, width, per_side + 1)
    ys = np.linspace(0.0, height, per_side + 1)
    top = np.stack([xs, np.zeros_like(xs)], 1)
    bottom = np.stack([xs, np.full_like(xs, height)], 1)
    left = np.stack([np.zeros_like(ys[1:-1]), ys[1:-1]], 1)
    right = np.stack([np.full_like(ys[1:-1], width), ys[1:-1]], 1)
    return np.concatenate([top, bottom, left, right])


# Spacing of the nodes the spline is evaluated on, in inter-ocular distances (bilinear between).
GRID_STEP = 0.06


def backward_field(source: np.ndarray, target: np.ndarray, frame: FaceFrame, box: Box, size: tuple[int, int],
                   smoothing: float) -> np.ndarray:
    """The backward displacement at every pixel centre of `box`: output pixel q takes the
    photo's colour at q + field(q).

    source, target: (N, 2) landmarks before and after the move (photo pixels); the spline
    maps target_i to source_i − target_i, with the border of the photo (`size`: width, height)
    held still. It is evaluated in the face frame (`smoothing` in squared inter-ocular units)
    on a grid of nodes `GRID_STEP` inter-ocular distances apart over the box, and interpolated
    bilinearly between them. Returns (2, y1 − y0, x1 − x0) float32 pixels (x then y).
    """
    anchors = border_points(*size)
    points = frame.to_frame(np.concatenate([target, anchors]))
    back = np.concatenate([source - target, np.zeros_like(anchors)]) @ frame.rotation / frame.unit
    spline = ThinPlateSpline(points, back, smoothing)
    x0, y0, x1, y1 = box
    step = max(1.0, GRID_STEP * frame.unit)
    nx = min(x1 - x0, int(math.ceil((x1 - x0 - 1) / step)) + 1)
    ny = min(y1 - y0, int(math.ceil((y1 - y0 - 1) / step)) + 1)
    gx = np.linspace(x0 + 0.5, x1 - 0.5, max(nx, 1))
    gy = np.linspace(y0 + 0.5, y1 - 0.5, max(ny, 1))
    nodes = np.stack(np.meshgrid(gx, gy), axis=-1).reshape(-1, 2)
    values = frame.vectors_to_photo(spline(frame.to_frame(nodes))).reshape(len(gy), len(gx), 2)
    coarse = torch.from_numpy(values.transpose(2, 0, 1).astype(np.float32))[None]
    if coarse.shape[2:] == (y1 - y0, x1 - x0):
        return coarse[0].numpy()
    # Nodes sit on the first and last pixel centres of the box: align_corners interpolation.
    fine = F.interpolate(coarse, size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=True)
    return fine[0].numpy()


def resample_box(image: torch.Tensor, field: torch.Tensor, box: Box) -> torch.Tensor:
    """The image with `box` resampled through a backward field: out(q) = image(q + field(q)),
    bilinear, positions outside the image clamped to its border; every pixel where the field
    is zero, and every pixel outside the box, is the input's bit for bit.

    image: (1, C, H, W) float; field: (2, y1 − y0, x1 − x0) pixels -> (1, C, H, W) float32.
    """
    x0, y0, x1, y1 = box
    image = image.float()
    height, width = image.shape[2:]
    field = field.to(image.device, torch.float32)
    xs = torch.arange(x0, x1, device=image.device, dtype=torch.float32).view(1, -1) + 0.5
    ys = torch.arange(y0, y1, device=image.device, dtype=torch.float32).view(-1, 1) + 0.5
    grid = torch.stack([(xs + field[0]) * (2.0 / width) - 1.0, (ys + field[1]) * (2.0 / height) - 1.0], dim=-1)
    sampled = F.grid_sample(image, grid[None], mode="bilinear", padding_mode="border", align_corners=False)
    out = image.clone()
    crop = out[:, :, y0:y1, x0:x1]
    still = (field == 0).all(dim=0)
    out[:, :, y0:y1, x0:x1] = torch.where(still, crop, sampled)
    return out


__all__ = ["Box", "FaceFrame", "ThinPlateSpline", "backward_field", "border_points", "confine",
           "face_frame", "inner_feather", "landmarks_found", "procedure_polygons", "region_box", "region_weight",
           "resample_box"]

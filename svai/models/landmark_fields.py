"""Per-procedure landmark displacement fields, fitted in closed form from before/after pairs.

Each training pair gives the motion of its 478 landmarks, after − before, measured in the
before face's own frame (`svai.warp.FaceFrame`: centred, the eye line level, one inter-ocular
distance = 1). The motion is modelled as the sum over the pair's procedures of the procedure's
strength (the manifest's, in [0, 1]) times that procedure's field:

    d = Σ_p s_p · (D_p + Σ_k z_k · W_pk)

D_p is the procedure's mean field (one 2-vector per landmark); z are the before face's shape
coordinates (its frame landmarks projected on their first K principal components, scaled to
unit variance), so W lets the motion depend on the face's own shape (a wide jaw is slimmed
more). The fit is least squares, ridge-penalised on W only, optionally with Huber weights per
pair (iteratively reweighted) so that a pair whose landmarks were misread counts less.

Each procedure may move only the landmarks inside its own region (`support`): those the mesh
region of that procedure covers on the mean face; a procedure the mesh does not know may move
any landmark. A landmark outside every ticked procedure's support stays where it is.

With `align`, the after landmarks are first brought onto the before ones by the similarity
(rotation, scale, shift) fitted on the landmarks no procedure may move, so a change of pose or
distance between the two photos is not taken for surgery.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from svai.face import mesh
from svai.face.identity import similarity_transform
from svai.threads import single_thread
from svai.warp import FaceFrame, face_frame

HUBER = 1.345  # Huber's threshold in robust standard deviations (95 % efficiency under normal noise)


@dataclass
class Fields:
    """A fitted landmark model, as plain arrays (the family keeps them as buffers).

    mean_shape: (956,) mean frame landmarks of the training before faces, flattened (x, y);
    basis: (K, 956) principal directions divided by their standard deviation (z = basis @ (s − mean));
    fields: (P, 1 + K, 956) per procedure: the mean field, then one per shape coordinate;
    explained: the fraction of the training landmark motion the fit explains (1 − SSE/SST);
    pairs: how many pairs were fitted.
    """

    mean_shape: np.ndarray
    basis: np.ndarray
    fields: np.ndarray
    explained: float
    pairs: int

    def displacement(self, frame_points: np.ndarray, strengths: np.ndarray) -> np.ndarray:
        """The predicted motion of one face: frame_points (478, 2) in frame units, strengths (P,)
        -> (478, 2) displacement in frame units."""
        z = self.basis @ (frame_points.reshape(-1) - self.mean_shape)
        coefficients = np.concatenate([[1.0], z])
        per_procedure = np.einsum("k,pkd->pd", coefficients, self.fields)
        return (np.asarray(strengths, np.float64) @ per_procedure).reshape(mesh.POINTS, 2)


def support_masks(procedures: tuple[str, ...], mean_points: np.ndarray) -> np.ndarray:
    """(P, 478) bool: the landmarks each procedure may move, those inside its mesh region on the
    mean face `mean_points` (478, 2); every landmark for a procedure the mesh has no region of."""
    masks = np.ones((len(procedures), mesh.POINTS), bool)
    for index, procedure in enumerate(procedures):
        if procedure in mesh.REGION_SHAPES:
            polygons = mesh.region_polygons(mean_points, procedure)
            masks[index] = np.any([inside_convex(mean_points, polygon) for polygon in polygons], axis=0)
    return masks


def inside_convex(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """(N,) bool: which of (N, 2) points lie inside (or on) the convex polygon (K, 2), either winding."""
    edges = np.roll(polygon, -1, axis=0) - polygon
    relative = points[:, None, :] - polygon[None, :, :]
    cross = edges[None, :, 0] * relative[..., 1] - edges[None, :, 1] * relative[..., 0]
    return (cross >= -1e-9).all(axis=1) | (cross <= 1e-9).all(axis=1)


def frame_motions(before: np.ndarray, after: np.ndarray, frames: list[FaceFrame], shapes: np.ndarray,
                  still: np.ndarray | None) -> np.ndarray:
    """Each pair's motion in its before face's frame.

    before, after: (N, 478, 2) photo pixels; frames: the before faces' frames; shapes: (N, 956)
    the before landmarks in them; still: (478,) bool landmarks used to align the after face
    onto the before one by a similarity, or None for no alignment -> (N, 956) frame units.
    """
    motions = []
    for b, a, frame, shape in zip(before, after, frames, shapes):
        if still is not None and still.sum() >= 3:
            matrix = similarity_transform(a[still], b[still])
            a = a @ matrix[:, :2].T + matrix[:, 2]
        motions.append(frame.to_frame(a).reshape(-1) - shape)
    return np.asarray(motions)


def shape_coordinates(shapes: np.ndarray, components: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean shape (956,) and the first `components` principal directions divided by their
    standard deviation (K, 956), so the coordinates z = basis @ (s − mean) have unit variance."""
    mean = shapes.mean(axis=0)
    if components == 0 or len(shapes) < 2:
        return mean, np.zeros((components, shapes.shape[1]))
    with single_thread():
        _, singular, vt = torch.linalg.svd(torch.from_numpy(shapes - mean), full_matrices=False)
    singular, vt = singular.numpy(), vt.numpy()
    k = min(components, len(singular))
    std = singular[:k] / np.sqrt(max(len(shapes) - 1, 1))
    basis = np.zeros((components, shapes.shape[1]))
    keep = std > 1e-12
    basis[:k][keep] = vt[:k][keep] / std[keep, None]
    return mean, basis


@dataclass(frozen=True)
class FitSettings:
    """How `fit_fields` fits. components: K ≥ 0 shape coordinates; ridge ≥ 0: penalty on the
    shape terms, relative to the mean squared strength; robust: Huber weights per pair; align:
    similarity-align each after face on the landmarks no procedure moves; support: each
    procedure moves only the landmarks of its region."""

    components: int = 8
    ridge: float = 0.01
    robust: bool = False
    align: bool = True
    support: bool = True


def fit_fields(before: np.ndarray, after: np.ndarray, strengths: np.ndarray, procedures: tuple[str, ...],
               settings: FitSettings = FitSettings()) -> Fields:
    """Fit the fields of every procedure (module docstring).

    before, after: (N, 478, 2) landmarks of N pairs in their photos' pixels; strengths: (N, P)
    in [0, 1] over `procedures`.
    """
    components, ridge, robust = settings.components, settings.ridge, settings.robust
    before, after = np.asarray(before, np.float64), np.asarray(after, np.float64)
    strengths = np.asarray(strengths, np.float64)
    count, n_proc = strengths.shape
    if before.shape != (count, mesh.POINTS, 2) or after.shape != before.shape or n_proc != len(procedures):
        raise ValueError(f"expected before/after ({count}, {mesh.POINTS}, 2) and strengths (N, {len(procedures)}); "
                         f"got {before.shape}, {after.shape}, {strengths.shape}")
    frames = [face_frame(b) for b in before]
    shapes = np.asarray([frame.to_frame(b).reshape(-1) for frame, b in zip(frames, before)])  # (N, 956)
    mean_points = shapes.mean(axis=0).reshape(mesh.POINTS, 2)
    masks = support_masks(procedures, mean_points) if settings.support else np.ones((n_proc, mesh.POINTS), bool)
    still = ~masks.any(axis=0) if settings.align else None
    motions = frame_motions(before, after, frames, shapes, still)
    mean, basis = shape_coordinates(shapes, components)
    z = (shapes - mean) @ basis.T  # (N, K)
    # Columns: s_p, then s_p·z_k for every p and k, grouped per procedure as `fields` is.
    design = np.concatenate([strengths[:, :, None], strengths[:, :, None] * z[:, None, :]], axis=2)
    design = design.reshape(count, n_proc * (1 + components))
    penalty = np.tile(np.concatenate([[0.0], np.full(components, 1.0)]), n_proc)
    penalty *= ridge * max(float((strengths ** 2).mean()), 1e-12) * count
    # Each coordinate (landmark, axis) may use only the procedures whose support holds it.
    allowed = np.repeat(masks, 2, axis=1)  # (P, 956)
    weights = np.ones(count)
    coefficients = np.zeros((design.shape[1], motions.shape[1]))
    for _ in range(5 if robust else 1):
        coefficients = _solve(design, motions, weights, penalty, allowed)
        if not robust:
            break
        residual = np.linalg.norm(motions - design @ coefficients, axis=1)
        scale = 1.4826 * np.median(np.abs(residual - np.median(residual))) + 1e-12
        cutoff = np.median(residual) + HUBER * scale
        weights = np.where(residual <= cutoff, 1.0, cutoff / np.maximum(residual, 1e-12))
    residual = motions - design @ coefficients
    total = float((motions ** 2).sum())
    explained = 1.0 - float((residual ** 2).sum()) / total if total > 0 else 0.0
    fields = coefficients.reshape(n_proc, 1 + components, -1)
    return Fields(mean, basis, fields, explained, count)


def _solve(design: np.ndarray, targets: np.ndarray, weights: np.ndarray, penalty: np.ndarray,
           allowed: np.ndarray) -> np.ndarray:
    """Weighted ridge least squares per group of output coordinates sharing the same allowed
    procedures: (features, 956) coefficients, zero for a procedure a coordinate may not use.

    design: (N, P·(1+K)) columns grouped per procedure; allowed: (P, 956) bool."""
    n_proc = allowed.shape[0]
    per = design.shape[1] // n_proc
    coefficients = np.zeros((design.shape[1], targets.shape[1]))
    patterns, groups = np.unique(allowed.T, axis=0, return_inverse=True)
    groups = np.asarray(groups).reshape(-1)
    for index, pattern in enumerate(patterns):
        columns = np.concatenate([np.arange(p * per, (p + 1) * per) for p in range(n_proc) if pattern[p]]) \
            if pattern.any() else np.zeros(0, int)
        if not len(columns):
            continue
        outputs = np.flatnonzero(groups == index)
        x = design[:, columns]
        gram = x.T @ (x * weights[:, None]) + np.diag(penalty[columns])
        rhs = x.T @ (targets[:, outputs] * weights[:, None])
        with single_thread():
            solved = torch.linalg.lstsq(torch.from_numpy(gram), torch.from_numpy(rhs)).solution.numpy()
        coefficients[np.ix_(columns, outputs)] = solved
    return coefficients


__all__ = [
    "FitSettings", "Fields", "fit_fields", "frame_motions", "inside_convex", "shape_coordinates", "support_masks",
]

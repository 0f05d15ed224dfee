"""Putting the two photos of a pair in one square frame: crop boxes, the face box, registration.

Boxes are `(x0, y0, x1, y1)` floats in the pixel coordinates of the image they apply to and
may reach outside it: the outside is padded, never squashed. The before photo decides the
box; the after photo gets the same box, carried over by `carry_box` when its resolution or
aspect ratio differs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from svai.threads import single_thread

Box = tuple[float, float, float, float]
CROPS: tuple[str, ...] = ("center", "face", "none")
PAD_COLOUR: tuple[int, int, int] = (255, 255, 255)


def square_box(region: Box, crop: str) -> Box:
    """The centred square of a region: inside it ("center") or around it ("none", padded)."""
    x0, y0, x1, y1 = region
    width, height = x1 - x0, y1 - y0
    side = min(width, height) if crop == "center" else max(width, height)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)


def carry_box(box: Box, region_from: Box, region_to: Box) -> Box:
    """Map a box from one photo to the other of a pair.

    The `region_to` photo is scaled to fit inside `region_from` (same centre, uniform scale),
    so two photos of different resolution or aspect share a frame without distortion.
    """
    fx0, fy0, fx1, fy1 = region_from
    tx0, ty0, tx1, ty1 = region_to
    fw, fh, tw, th = fx1 - fx0, fy1 - fy0, tx1 - tx0, ty1 - ty0
    scale = min(fw / tw, fh / th)  # to-pixels -> from-pixels
    ox, oy = fx0 + (fw - tw * scale) / 2, fy0 + (fh - th * scale) / 2
    x0, y0, x1, y1 = box
    return (tx0 + (x0 - ox) / scale, ty0 + (y0 - oy) / scale, tx0 + (x1 - ox) / scale, ty0 + (y1 - oy) / scale)


def render(image: Image.Image, box: Box, size: int) -> np.ndarray:
    """Crop `box` out of an RGB image and resize it to (size, size, 3) uint8, padding outside.

    Pillow's `resize(box=...)` crops and resamples in one pass (Lanczos, with a reducing gap
    so big reductions stay fast without aliasing).
    """
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"empty box {box}")
    sx, sy = size / (x1 - x0), size / (y1 - y0)
    ix0, iy0 = max(x0, 0.0), max(y0, 0.0)
    ix1, iy1 = min(x1, float(image.width)), min(y1, float(image.height))
    if ix0 <= x0 and iy0 <= y0 and ix1 >= x1 and iy1 >= y1:
        out = image.resize((size, size), Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)
        return np.asarray(out, dtype=np.uint8).copy()
    canvas = Image.new("RGB", (size, size), PAD_COLOUR)
    if ix1 > ix0 and iy1 > iy0:
        dx0, dy0 = round((ix0 - x0) * sx), round((iy0 - y0) * sy)
        dx1, dy1 = round((ix1 - x0) * sx), round((iy1 - y0) * sy)
        if dx1 > dx0 and dy1 > dy0:
            part = image.resize((dx1 - dx0, dy1 - dy0), Image.Resampling.LANCZOS,
                                box=(ix0, iy0, ix1, iy1), reducing_gap=3.0)
            canvas.paste(part, (dx0, dy0))
    return np.asarray(canvas, dtype=np.uint8).copy()


# -------------------------------------------------------------------------------------- face box

def skin_mask(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) bool: pixels in the YCbCr skin cluster.

    The fixed chroma box Cb in [77, 127], Cr in [133, 173] is the classic rule of
    Chai & Ngan (1999). It is a heuristic: warm backgrounds (wood, beige walls) pass it, and
    very dark or strongly tinted lighting can fail it.
    """
    data = rgb.astype(np.float32)
    r, g, b = data[..., 0], data[..., 1], data[..., 2]
    cb = 128.0 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128.0 + 0.5 * r - 0.418688 * g - 0.081312 * b
    luma = 0.299 * r + 0.587 * g + 0.114 * b
    return (cb >= 77) & (cb <= 127) & (cr >= 133) & (cr <= 173) & (luma > 40)


def face_box(image: Image.Image, region: Box, work_size: int = 128) -> Box | None:
    """A square box around the largest skin-coloured blob of a region, or None.

    The blob must cover 3–80 % of the region (smaller is noise, larger is a close-up or a
    skin-toned background, where the centre crop is as good). The square is 1.4x the blob's
    longer side (hair, chin and ears stay in), at least half the region's short side, at
    most its short side, and is shifted to stay inside the region when it can.
    """
    x0, y0, x1, y1 = region
    width, height = x1 - x0, y1 - y0
    scale = work_size / max(width, height)
    small_w, small_h = max(1, round(width * scale)), max(1, round(height * scale))
    small = image.resize((small_w, small_h), Image.Resampling.BILINEAR, box=region, reducing_gap=2.0)
    mask = ndimage.binary_opening(skin_mask(np.asarray(small)), iterations=2)
    labels, count = ndimage.label(mask)
    if count == 0:
        return None
    areas = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))
    best = int(np.argmax(areas)) + 1
    share = areas[best - 1] / mask.size
    if not 0.03 <= share <= 0.8:
        return None
    rows, cols = np.nonzero(labels == best)
    cy, cx = (rows.min() + rows.max() + 1) / 2 / scale, (cols.min() + cols.max() + 1) / 2 / scale
    blob = max(rows.max() + 1 - rows.min(), cols.max() + 1 - cols.min()) / scale
    short = min(width, height)
    side = min(max(1.4 * blob, short / 2), short)
    left = min(max(cx - side / 2, 0.0), width - side)
    top = min(max(cy - side / 2, 0.0), height - side)
    return (x0 + left, y0 + top, x0 + left + side, y0 + top + side)


# ---------------------------------------------------------------------------------- registration

@dataclass(frozen=True)
class Alignment:
    """The similarity that maps the after photo onto the before photo, and how well it fits.

    Errors are mean absolute differences in 8-bit grey levels (0–255) over the pixels both
    photos cover, measured at the registration resolution: `error_before` unaligned,
    `error_after` once aligned.
    """

    angle: float
    scale: float
    shift: tuple[float, float]
    error_before: float
    error_after: float
    ok: bool
    why: str = ""


def _masked_error(a, b, valid) -> float:  # type: ignore[no-untyped-def]
    weight = valid.sum().clamp(min=1.0)
    return float(((a - b).abs().mean(dim=1, keepdim=True) * valid).sum() / weight * 255.0)


@dataclass(frozen=True)
class RegistrationLimits:
    """How the similarity is fitted (working size, iterations, tolerance) and which fits are
    accepted: at most `max_angle` degrees of rotation, a scale in `scale_range`, a shift of at
    most `max_shift` of the frame."""

    work_size: int = 96
    iterations: int = 50
    tolerance: float = 1e-4
    max_angle: float = 20.0
    scale_range: tuple[float, float] = (0.75, 1.33)
    max_shift: float = 0.25


def register_pair(
    before: np.ndarray, after: np.ndarray, limits: RegistrationLimits = RegistrationLimits()
) -> tuple[np.ndarray, Alignment]:
    """Warp `after` onto `before` with a similarity fitted by kornia's `ImageRegistrator`.

    before, after: (S, S, 3) uint8. Returns the warped after photo (S, S, 3) uint8 (edges
    it leaves uncovered repeat the border) and the `Alignment`. A fit is rejected (`ok`
    False) when it is not finite, rotates, scales or shifts more than `limits` allow, or leaves
    the photos further apart than they started: then the returned image is `after` unchanged.
    """
    import torch
    import torch.nn.functional as F
    from kornia.geometry import ImageRegistrator
    from kornia.geometry.transform import HomographyWarper

    with single_thread(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        full_before = torch.from_numpy(np.array(before)).permute(2, 0, 1)[None].float() / 255.0
        full_after = torch.from_numpy(np.array(after)).permute(2, 0, 1)[None].float() / 255.0
        size = full_before.shape[-1]
        work = min(limits.work_size, size)
        small_before = F.interpolate(full_before, size=(work, work), mode="area")
        small_after = F.interpolate(full_after, size=(work, work), mode="area")
        registrator = ImageRegistrator("similarity", lr=1e-2, num_iterations=limits.iterations, pyramid_levels=3,
                                       tolerance=limits.tolerance)
        model = registrator.model
        # The angle is in degrees while scale and shift are fractions of the frame: give the
        # angle a 30x larger Adam step so a few degrees of head tilt are reachable.
        registrator.optimizer = lambda params, lr: torch.optim.Adam(  # type: ignore[assignment]
            [{"params": [model.rot], "lr": 30 * lr}, {"params": [model.scale, model.shift], "lr": lr}]
        )
        homography = registrator.register(small_after, small_before).detach()
        angle = float(model.rot.detach())
        scale = float(model.scale.detach())
        shift = tuple(float(v) for v in model.shift.detach().flatten())
        ones = torch.ones_like(small_after[:, :1])
        warper = HomographyWarper(work, work, padding_mode="zeros")
        warped_small = warper(small_after, homography)
        valid = (warper(ones, homography) > 0.999).float()
        error_before = _masked_error(small_before, small_after, torch.ones_like(valid))
        error_after = _masked_error(small_before, warped_small, valid)
        problems = []
        if not all(math.isfinite(v) for v in (angle, scale, *shift, error_after)):
            problems.append("the fit did not converge")
        else:
            if abs(angle) > limits.max_angle:
                problems.append(f"rotation {angle:.1f} deg exceeds {limits.max_angle:g}")
            if not limits.scale_range[0] <= scale <= limits.scale_range[1]:
                problems.append(f"scale {scale:.2f} outside {limits.scale_range[0]:g}-{limits.scale_range[1]:g}")
            largest_shift = max(abs(shift[0]), abs(shift[1])) / 2  # kornia's shift spans the frame as 2
            if largest_shift > limits.max_shift:
                problems.append(f"shift {largest_shift:.2f} of the frame exceeds {limits.max_shift:g}")
            if error_after > error_before:
                problems.append(f"alignment raised the error from {error_before:.1f} to {error_after:.1f}")
        result = Alignment(angle, scale, (shift[0], shift[1]), error_before, error_after, not problems, "; ".join(problems))
        if problems:
            return after, result
        full_warper = HomographyWarper(size, size, padding_mode="border")
        warped = full_warper(full_after, homography)
        out = (warped[0].permute(1, 2, 0).clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()
        return np.ascontiguousarray(out), result

"""Paired augmentation at training time: one random draw moves before, after and mask together.

A paired loss (L1 between the translated before photo and the true after photo) only makes
sense if both were moved the same way, so geometry is drawn once per sample and applied to
`before`, `after` and `mask` as one affine warp (flip, rotation, scale and translation
composed, so each image is resampled once). The brightness/contrast change is also shared by
before and after. `after_unpaired` (an unrelated after photo, for unpaired families) gets a
draw of its own. All draws come from the caller's `torch.Generator`, so a seeded generator
gives the same batch every time. Everything is off by default; evaluation and generation
never call this.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from kornia.enhance import adjust_brightness, adjust_contrast
from kornia.geometry.transform import get_affine_matrix2d, warp_affine
from torch import Tensor

# Reflection keeps the frame filled with plausible skin and background instead of a hard
# border the discriminator could learn to spot.
PADDING = "reflection"


@dataclass
class AugmentOptions:
    """Probabilities (0 = off) and ranges of each augmentation.

    hflip: probability of a horizontal mirror.
    rotate_p, rotate_degrees: probability of a rotation, uniform in [-deg, deg].
    scale_p, scale_range, translate: probability of a zoom, uniform in `scale_range`, with a
        shift uniform in [-translate, translate] times the image size on each axis.
    color_p, brightness, contrast: probability of a photometric change: brightness added
        uniform in [-b, b] and contrast multiplied by a factor uniform in [1 - c, 1 + c], on
        images seen in [0, 1].
    """

    hflip: float = 0.0
    rotate_p: float = 0.0
    rotate_degrees: float = 10.0
    scale_p: float = 0.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    translate: float = 0.05
    color_p: float = 0.0
    brightness: float = 0.1
    contrast: float = 0.1

    def __post_init__(self) -> None:
        for name in ("hflip", "rotate_p", "scale_p", "color_p"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"augment.{name} is a probability in [0, 1]; got {value}")
        low, high = self.scale_range
        if not 0.0 < low <= high:
            raise ValueError(f"augment.scale_range must be 0 < low <= high; got {self.scale_range}")
        for name in ("rotate_degrees", "translate", "brightness", "contrast"):
            if getattr(self, name) < 0:
                raise ValueError(f"augment.{name} must be >= 0; got {getattr(self, name)}")
        if self.contrast >= 1.0:
            raise ValueError(f"augment.contrast must be < 1 (a factor in [1 - c, 1 + c]); got {self.contrast}")

    @property
    def enabled(self) -> bool:
        return any(p > 0 for p in (self.hflip, self.rotate_p, self.scale_p, self.color_p))


@dataclass
class _Draw:
    """One sample-wise draw: an affine matrix per sample and photometric factors."""

    matrix: Tensor  # (B, 2, 3)
    moved: Tensor  # (B,) bool: any geometry for this sample
    brightness: Tensor  # (B,)
    contrast: Tensor  # (B,)
    coloured: Tensor  # (B,) bool


def _draw(options: AugmentOptions, batch: int, height: int, width: int, generator: torch.Generator,
          device: torch.device) -> _Draw:
    # Always draw every number, in a fixed order, so turning one augmentation on or off
    # does not change what the others draw.
    u = torch.rand(10, batch, generator=generator, device=generator.device).to(device)
    flip = u[0] < options.hflip
    rotate = u[1] < options.rotate_p
    zoom = u[3] < options.scale_p
    coloured = u[7] < options.color_p
    angle = torch.where(rotate, (2 * u[2] - 1) * options.rotate_degrees, torch.zeros_like(u[2]))
    low, high = options.scale_range
    scale = torch.where(zoom, low + (high - low) * u[4], torch.ones_like(u[4]))
    shift = torch.stack([(2 * u[5] - 1) * options.translate * width, (2 * u[6] - 1) * options.translate * height], 1)
    shift = torch.where(zoom[:, None], shift, torch.zeros_like(shift))
    centre = torch.tensor([(width - 1) / 2, (height - 1) / 2], device=device).expand(batch, 2)
    sign = torch.where(flip, -1.0, 1.0)
    matrix = get_affine_matrix2d(shift, centre, torch.stack([scale * sign, scale], 1), angle)[:, :2]
    brightness = torch.where(coloured, (2 * u[8] - 1) * options.brightness, torch.zeros_like(u[8]))
    contrast = torch.where(coloured, 1 + (2 * u[9] - 1) * options.contrast, torch.ones_like(u[9]))
    return _Draw(matrix, flip | rotate | zoom, brightness, contrast, coloured)


def _warp(images: Tensor, draw: _Draw) -> Tensor:
    if not bool(draw.moved.any()):
        return images
    warped = warp_affine(images, draw.matrix.to(images.dtype), tuple(images.shape[-2:]), padding_mode=PADDING)
    return torch.where(draw.moved[:, None, None, None], warped, images)


def _colour(images: Tensor, draw: _Draw) -> Tensor:
    """images: (B, 3, H, W) in [-1, 1]; contrast then brightness, on [0, 1], clipped."""
    if not bool(draw.coloured.any()):
        return images
    unit = (images + 1) / 2
    changed = adjust_brightness(adjust_contrast(unit, draw.contrast.to(images.dtype)), draw.brightness.to(images.dtype))
    return torch.where(draw.coloured[:, None, None, None], changed * 2 - 1, images)


def _move_points(points: Tensor, draw: _Draw, hflip: bool) -> Tensor:
    """Face landmarks (B, N, 2), continuous pixels (centres at +0.5), moved with their images.

    The affine matrix maps source to destination pixels with centres at integers (kornia's
    convention). A mirrored face's landmarks would name the subject's left eye as the right:
    mirrored samples get NaN (no face) instead.
    """
    if not bool(draw.moved.any()):
        return points
    matrix = draw.matrix.to(points.dtype)
    centred = points - 0.5
    moved = centred @ matrix[:, :, :2].transpose(1, 2) + matrix[:, None, :, 2] + 0.5
    moved = torch.where(draw.moved[:, None, None], moved, points)
    if hflip:
        mirrored = torch.linalg.det(matrix[:, :, :2]) < 0
        moved = torch.where(mirrored[:, None, None], torch.full_like(moved, float("nan")), moved)
    return moved


def augment_batch(batch: dict, options: AugmentOptions, generator: torch.Generator) -> dict:
    """Augment a training batch; returns a new dict (other keys passed through unchanged).

    batch: `before`, `after` (B, 3, H, W) in [-1, 1]; optional `mask` (B, 1, H, W) in [0, 1],
    `after_unpaired` (B, 3, H, W) in [-1, 1] and `landmarks` (B, 478, 2) pixels of the before
    photo (moved with it; NaN for a mirrored sample). Outputs keep shapes and ranges.
    """
    if not options.enabled:
        return dict(batch)
    before = batch["before"]
    if before.ndim != 4 or batch["after"].shape != before.shape:
        raise ValueError(f"before and after must share a (B, C, H, W) shape; got {tuple(before.shape)} "
                         f"and {tuple(batch['after'].shape)}")
    size, height, width = before.shape[0], before.shape[-2], before.shape[-1]
    out = dict(batch)
    draw = _draw(options, size, height, width, generator, before.device)
    out["before"] = _colour(_warp(before, draw), draw)
    out["after"] = _colour(_warp(batch["after"], draw), draw)
    if batch.get("mask") is not None:
        out["mask"] = _warp(batch["mask"], draw).clamp(0, 1)
    if batch.get("landmarks") is not None:
        out["landmarks"] = _move_points(batch["landmarks"], draw, hflip=options.hflip > 0)
    if batch.get("after_unpaired") is not None:
        own = _draw(options, size, height, width, generator, before.device)
        out["after_unpaired"] = _colour(_warp(batch["after_unpaired"], own), own)
    return out

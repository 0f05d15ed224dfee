"""Tensor image operations shared by training, generation and the app: uint8 arrays to and from
signed float tensors, antialiased resizing, and backward warping by a displacement field."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def to_signed(image: torch.Tensor) -> torch.Tensor:
    """uint8 tensor -> float32 in [-1, 1], same shape."""
    return image.float().div_(127.5).sub_(1.0)  # in place on the new float copy


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [-1, 1]."""
    return to_signed(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8, rounded to nearest."""
    # One copy (the clamp), then in place: a 12-megapixel photo is 150 MB per float copy.
    scaled = torch.clamp(images.detach().float(), -1, 1).add_(1.0).mul_(127.5)
    return scaled.round_().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def resize(images: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Resize (B, C, H, W) to `size` with antialiased bilinear filtering (a no-op when equal)."""
    target = (size, size) if isinstance(size, int) else size
    if tuple(images.shape[-2:]) == tuple(target):
        return images
    return F.interpolate(images, size=target, mode="bilinear", align_corners=False, antialias=True)


def warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Backward warping: each output pixel samples `image` where the field points.

    image: (B, C, H, W); flow: (B, 2, H, W) displacements in pixels, channel 0 along the width
    (x), channel 1 along the height (y) -> (B, C, H, W) in float32, with
    ``out[b, :, y, x] = image[b, :, y + flow_y, x + flow_x]`` interpolated bilinearly and
    positions outside the image clamped to its border.

    This is what ``grid_sample(mode="bilinear", padding_mode="border", align_corners=False)``
    computes for the grid ``identity + flow·2/size`` (the tests check it), written in pixel
    coordinates so that a zero field returns the image bit for bit at every image size: the
    normalised identity grid that grid_sample needs is exact only at power-of-two sizes.
    """
    if image.dim() != 4 or flow.dim() != 4 or flow.shape[1] != 2 or flow.shape[2:] != image.shape[2:] \
            or flow.shape[0] != image.shape[0]:
        raise ValueError(f"warp expects image (B, C, H, W) and flow (B, 2, H, W); got {tuple(image.shape)} "
                         f"and {tuple(flow.shape)}")
    batch, channels, height, width = image.shape
    image, flow = image.float(), flow.float()
    xs = torch.arange(width, device=image.device, dtype=torch.float32).view(1, 1, width)
    ys = torch.arange(height, device=image.device, dtype=torch.float32).view(1, height, 1)
    x = (xs + flow[:, 0]).clamp(0, width - 1)
    y = (ys + flow[:, 1]).clamp(0, height - 1)
    x0, y0 = x.floor(), y.floor()
    wx, wy = (x - x0).unsqueeze(1), (y - y0).unsqueeze(1)
    x0i, y0i = x0.long(), y0.long()
    x1i, y1i = (x0i + 1).clamp(max=width - 1), (y0i + 1).clamp(max=height - 1)
    flat = image.reshape(batch, channels, height * width)

    def at(yi: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        index = (yi * width + xi).reshape(batch, 1, height * width).expand(-1, channels, -1)
        return flat.gather(2, index).reshape(batch, channels, height, width)

    # With a zero field the weights are exactly 1 and 0, so the sum is the pixel itself.
    top = at(y0i, x0i) * (1 - wx) + at(y0i, x1i) * wx
    bottom = at(y1i, x0i) * (1 - wx) + at(y1i, x1i) * wx
    return top * (1 - wy) + bottom * wy


def warp_fast(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """`warp` through ``grid_sample``: about 4× faster on a multi-megapixel photo, within about
    1e-3 of `warp` there (float32 rounding of the normalised grid), and exact wherever the field
    is zero. image: (B, C, H, W); flow: (B, 2, H, W) in pixels -> (B, C, H, W) float32."""
    image, flow = image.float(), flow.float()
    height, width = image.shape[2:]
    xs = ((torch.arange(width, device=image.device, dtype=torch.float32) + 0.5) * 2 / width - 1).view(1, 1, width)
    ys = ((torch.arange(height, device=image.device, dtype=torch.float32) + 0.5) * 2 / height - 1).view(1, height, 1)
    grid = torch.stack([xs + flow[:, 0] * 2 / width, ys + flow[:, 1] * 2 / height], dim=-1)
    out = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return torch.where((flow == 0).all(dim=1, keepdim=True), image, out)

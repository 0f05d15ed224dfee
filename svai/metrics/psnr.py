"""Peak signal-to-noise ratio on 8-bit images, per image (as skimage's `peak_signal_noise_ratio`).

PSNR = 10 log10(255^2 / MSE), the MSE taken over all pixels and the three channels of one
image. Identical images have MSE 0 and an infinite PSNR: the functions here return `inf` for
them and the evaluation driver counts them apart instead of averaging an infinity.
"""

from __future__ import annotations

import torch

PEAK_8BIT: float = 255.0


def squared_error_map(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error summed over channels, exact on 8-bit data.

    pred, target: (B, C, H, W) uint8 (0-255). Returns (B, H, W) float64; divide by C for the
    per-pixel MSE. Integer arithmetic first, so the sums are exact whatever the image size.
    """
    if pred.shape != target.shape or pred.ndim != 4:
        raise ValueError(f"expected two (B, C, H, W) tensors of one shape; got {tuple(pred.shape)} and {tuple(target.shape)}")
    difference = pred.to(torch.int32) - target.to(torch.int32)
    return (difference * difference).sum(dim=1).to(torch.float64)


def psnr_from_mse(mse: torch.Tensor, peak: float = PEAK_8BIT) -> torch.Tensor:
    """10 log10(peak^2 / mse) in dB; `inf` where mse == 0. mse: any shape, float64."""
    mse = mse.to(torch.float64)
    return 10.0 * torch.log10(peak * peak / mse)


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image on the 0-255 scale. (B, C, H, W) uint8 -> (B,) float64."""
    channels = pred.shape[1]
    return squared_error_map(pred, target).mean(dim=(1, 2)) / channels


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR per image in dB. pred, target: (B, C, H, W) uint8 -> (B,) float64, `inf` if identical."""
    return psnr_from_mse(mse(pred, target))

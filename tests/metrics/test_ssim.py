"""SSIM against scikit-image's Gaussian-window SSIM (the convention svai documents)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from svai.metrics.ssim import SSIM_WINDOW, crop_to_ssim_map, gaussian_kernel_1d, ssim, ssim_map


def reference(a: np.ndarray, b: np.ndarray, full: bool = False):
    """skimage with the documented settings on (H, W, 3) uint8 images scaled to [0, 1]."""
    return structural_similarity(
        a / 255.0, b / 255.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        channel_axis=-1, data_range=1, full=full,
    )


def as_batch(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).double() / 255.0


def image_pairs(shape: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three kinds of pairs: noise vs noisy copy, smooth vs shifted, flat vs gradient."""
    rng = np.random.default_rng(seed)
    h, w = shape
    noise = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    noisy = np.clip(noise.astype(int) + rng.integers(-40, 41, noise.shape), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    smooth = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), (xx + yy) % 256], -1).astype(np.uint8)
    shifted = np.roll(smooth, 2, axis=1)
    flat = np.full((h, w, 3), 128, np.uint8)
    return np.stack([noise, smooth, flat]), np.stack([noisy, shifted, smooth])


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-9), (torch.float32, 1e-6)])
@pytest.mark.parametrize("shape", [(11, 11), (32, 32), (40, 57)])
def test_matches_skimage(shape: tuple[int, int], dtype: torch.dtype, tolerance: float) -> None:
    a, b = image_pairs(shape, seed=sum(shape))
    ours = ssim(as_batch(a), as_batch(b), dtype=dtype).numpy()
    expected = np.array([reference(x, y) for x, y in zip(a, b)])
    np.testing.assert_allclose(ours, expected, atol=tolerance, rtol=0)


def test_float32_keeps_precision_on_bright_low_contrast_images() -> None:
    # Bright, nearly flat images are where E[x^2] - E[x]^2 cancels worst in float32.
    rng = np.random.default_rng(7)
    a = (250 + rng.integers(-2, 3, (3, 48, 48, 3))).astype(np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-1, 2, a.shape), 0, 255).astype(np.uint8)
    ours = ssim(as_batch(a).float(), as_batch(b).float(), dtype=torch.float32).numpy()
    expected = np.array([reference(x, y) for x, y in zip(a, b)])
    np.testing.assert_allclose(ours, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-9), (torch.float32, 1e-5)])
def test_map_is_skimage_map_without_its_border(dtype: torch.dtype, tolerance: float) -> None:
    a, b = image_pairs((30, 36), seed=5)
    ours = ssim_map(as_batch(a), as_batch(b), dtype=dtype).numpy()
    for i in range(len(a)):
        _, full = reference(a[i], b[i], full=True)
        r = (SSIM_WINDOW - 1) // 2
        np.testing.assert_allclose(ours[i], full[r:-r, r:-r].mean(axis=-1), atol=tolerance)


def test_identical_images_give_one_and_mask_crop_matches_map() -> None:
    a, _ = image_pairs((24, 20), seed=1)
    x = as_batch(a)
    np.testing.assert_allclose(ssim(x, x, dtype=torch.float64).numpy(), 1.0, atol=1e-12)
    np.testing.assert_allclose(ssim(x, x).numpy(), 1.0, atol=1e-6)
    mask = torch.ones(len(a), 24, 20, dtype=torch.bool)
    assert crop_to_ssim_map(mask).shape == ssim_map(x, x).shape


def test_kernel_is_scipy_gaussian() -> None:
    from scipy.ndimage import gaussian_filter1d

    impulse = np.zeros(11)
    impulse[5] = 1.0
    expected = gaussian_filter1d(impulse, sigma=1.5, truncate=3.5, mode="constant")
    np.testing.assert_allclose(gaussian_kernel_1d().numpy(), expected, atol=1e-15)


def test_too_small_and_mismatched_inputs_raise() -> None:
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.zeros(1, 3, 10, 20), torch.zeros(1, 3, 10, 20))
    with pytest.raises(ValueError, match="one shape"):
        ssim(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 17))

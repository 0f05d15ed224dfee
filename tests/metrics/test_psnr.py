"""PSNR against scikit-image's `peak_signal_noise_ratio` on 8-bit images."""

from __future__ import annotations

import math

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio

from svai.metrics.psnr import mse, psnr, squared_error_map


def as_batch(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2)


def test_matches_skimage() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (5, 33, 47, 3), dtype=np.uint8)
    b = a.copy()
    for i in range(5):
        # From a single changed pixel to heavy noise: PSNR from ~80 dB down to ~8 dB.
        count = 10 ** i
        idx = rng.integers(0, a[i].size, count)
        b[i].flat[idx] = rng.integers(0, 256, count, dtype=np.uint8)
    ours = psnr(as_batch(a), as_batch(b)).numpy()
    expected = np.array([peak_signal_noise_ratio(x, y) for x, y in zip(a, b)])
    np.testing.assert_allclose(ours, expected, atol=1e-6, rtol=0)


def test_extremes_are_exact() -> None:
    black = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    white = torch.full((1, 3, 8, 8), 255, dtype=torch.uint8)
    # MSE = 255^2, so PSNR = 0 dB exactly.
    assert psnr(black, white).item() == 0.0
    assert math.isinf(psnr(black, black).item())
    assert mse(black, white).item() == 255.0**2


def test_squared_error_map_is_exact_integer_sum() -> None:
    a = torch.tensor([[[[0]], [[10]], [[255]]]], dtype=torch.uint8)
    b = torch.tensor([[[[3]], [[0]], [[0]]]], dtype=torch.uint8)
    assert squared_error_map(a, b).item() == 9 + 100 + 255**2

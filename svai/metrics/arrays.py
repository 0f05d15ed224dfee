"""Checked float64 arrays for the distribution metrics (FID, KID, Inception Score)."""

from __future__ import annotations

import numpy as np
import torch


def as_float64(values: np.ndarray | torch.Tensor) -> np.ndarray:
    """A tensor or array as a float64 NumPy array (tensors detached and moved to the CPU)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float64)


def float_matrix(values: np.ndarray | torch.Tensor, name: str, columns: str = "D", min_rows: int = 1) -> np.ndarray:
    """`values` as a finite (N, columns) float64 matrix with at least `min_rows` rows;
    ValueError naming `name` otherwise."""
    x = as_float64(values)
    if x.ndim != 2:
        raise ValueError(f"{name} must be (N, {columns}). Got shape {x.shape}")
    if x.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} rows. Got {x.shape[0]}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinity")
    return x

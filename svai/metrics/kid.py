"""Kernel Inception Distance (Bińkowski et al. 2018, "Demystifying MMD GANs", section 5).

KID is the squared maximum mean discrepancy between two sets of Inception features under
the cubic polynomial kernel

    k(x, y) = (xᵀy / d + 1)³,        d = feature dimension,

estimated without bias (Gretton et al. 2012, eq. 3): within-set sums leave out the
diagonal, the cross term keeps every pair. Unlike FID the estimator is unbiased, so it is
meaningful for small sets; it is averaged over random subsets to bound the O(m²) cost and
to report a spread. Conventions follow the paper's code and torch-fidelity: subsets drawn
without replacement from `numpy.random.RandomState(seed)`, first from `a` then from `b`,
and the spread is the population standard deviation (ddof=0) over subsets.
"""

from __future__ import annotations

import numpy as np
import torch

from svai.metrics.arrays import float_matrix


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (xᵀy / d + 1)³ for every pair of rows: (n, d), (m, d) → (n, m)."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² estimate between two samples (m, d) and (n, d), m, n >= 2.

    MMD²_u = Σ_{i≠j} k(xᵢ,xⱼ)/(m(m−1)) + Σ_{i≠j} k(yᵢ,yⱼ)/(n(n−1)) − 2 Σ_{i,j} k(xᵢ,yⱼ)/(mn).
    Can be slightly negative when the two distributions are equal.
    """
    m, n = x.shape[0], y.shape[0]
    k_xx = polynomial_kernel(x, x)
    k_yy = polynomial_kernel(y, y)
    k_xy = polynomial_kernel(x, y)
    within_x = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    within_y = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(within_x + within_y - 2.0 * k_xy.sum() / (m * n))


def kernel_inception_distance(
    a: np.ndarray | torch.Tensor,
    b: np.ndarray | torch.Tensor,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """KID between feature sets `a` (N₁, D) and `b` (N₂, D).

    Args:
        subsets: number of random subset pairs averaged.
        subset_size: samples per subset, clipped to min(N₁, N₂) (needs at least 2).
        seed: seeds the subset draws, so the value is reproducible.

    Returns:
        (mean, std) of the unbiased MMD² over the subsets. Reported unscaled (papers often
        multiply by 100 or 1000).
    """
    x = float_matrix(a, "a")
    y = float_matrix(b, "b")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"a and b must have the same feature dimension. Got {x.shape[1]} and {y.shape[1]}")
    if subsets < 1:
        raise ValueError(f"subsets must be >= 1. Got {subsets}")
    m = min(subset_size, x.shape[0], y.shape[0])
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set. Got {x.shape[0]} and {y.shape[0]}")
    rng = np.random.RandomState(seed)
    values = np.empty(subsets, dtype=np.float64)
    for i in range(subsets):
        subset_x = x[rng.choice(x.shape[0], m, replace=False)]
        subset_y = y[rng.choice(y.shape[0], m, replace=False)]
        values[i] = mmd2_unbiased(subset_x, subset_y)
    return float(values.mean()), float(values.std())

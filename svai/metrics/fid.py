"""Fréchet Inception Distance (Heusel et al. 2017, "GANs trained by a two time-scale update
rule converge to a local Nash equilibrium", eq. 6).

FID fits a Gaussian to the Inception features of each image set and measures

    d² = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^{1/2}).

Features come from `svai.metrics.inception.inception_outputs`; with the same weights the
value equals pytorch-fid's `calculate_fid_given_paths` (the tests check 1e-3 relative).
"""

from __future__ import annotations

import numpy as np
import torch

from svai.metrics.arrays import as_float64, float_matrix



def _feature_matrix(features: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    x = float_matrix(features, name)
    if x.shape[0] < 2:
        raise ValueError(f"a covariance needs at least 2 feature rows. Got {x.shape[0]} in {name}")
    return x


def feature_statistics(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of a feature matrix.

    Args:
        features: (N, D), N >= 2, one row per image.

    Returns:
        mu: (D,) float64. sigma: (D, D) float64, normalised by N − 1 like
        `numpy.cov(features, rowvar=False)` (and so like pytorch-fid).
    """
    x = _feature_matrix(features, "features")
    mu = x.mean(axis=0)
    centred = x - mu
    sigma = centred.T @ centred / (x.shape[0] - 1)
    return mu, sigma


def _clip_eigenvalues(eigenvalues: np.ndarray) -> np.ndarray:
    """Zero the eigenvalues that are round-off, as numpy.linalg.matrix_rank decides rank.

    A covariance of N <= D feature rows has D − N + 1 zero eigenvalues, which a solver
    returns as ±ε·λmax. Left in, each adds √(ε·λmax) to a trace of square roots: with 2048
    dims that sums to ~1e-4, so identical statistics would not give 0.
    """
    tolerance = max(eigenvalues.max(initial=0.0), 0.0) * eigenvalues.shape[0] * np.finfo(np.float64).eps
    return np.where(eigenvalues > tolerance, eigenvalues, 0.0)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix via its eigendecomposition."""
    eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2)
    roots = np.sqrt(_clip_eigenvalues(eigenvalues))
    return (eigenvectors * roots) @ eigenvectors.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr((Σ₁ Σ₂)^{1/2}) for symmetric PSD Σ₁, Σ₂, in float64.

    Σ₁Σ₂ is not symmetric, which is why pytorch-fid needs a general `scipy.linalg.sqrtm` (and
    its `disp` argument, gone in scipy 1.18). But AB and BA share their eigenvalues, so
    Σ₁Σ₂ = Σ₁^{1/2}(Σ₁^{1/2}Σ₂) has those of M = Σ₁^{1/2} Σ₂ Σ₁^{1/2}, which is symmetric PSD:
    the trace of the square root is Σᵢ √λᵢ(M), computed with the stable symmetric solver.
    """
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    return float(np.sqrt(_clip_eigenvalues(eigenvalues)).sum())


def frechet_distance(
    mu1: np.ndarray | torch.Tensor,
    sigma1: np.ndarray | torch.Tensor,
    mu2: np.ndarray | torch.Tensor,
    sigma2: np.ndarray | torch.Tensor,
) -> float:
    """Squared Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    Args:
        mu1, mu2: (D,) means. sigma1, sigma2: (D, D) covariances (symmetric PSD).

    Returns:
        d² >= 0. Identical statistics give 0 up to round-off (~1e-10 for 2048 dims).
    """
    m1, m2 = as_float64(mu1), as_float64(mu2)
    s1, s2 = as_float64(sigma1), as_float64(sigma2)
    if m1.ndim != 1 or m1.shape != m2.shape:
        raise ValueError(f"means must be (D,) of equal length. Got shapes {m1.shape} and {m2.shape}")
    d = m1.shape[0]
    if s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"covariances must be ({d}, {d}). Got shapes {s1.shape} and {s2.shape}")
    for name, value in (("mu1", m1), ("sigma1", s1), ("mu2", m2), ("sigma2", s2)):
        if not np.isfinite(value).all():
            raise ValueError(f"{name} contains NaN or infinity")
    diff = m1 - m2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2))
    # d² is a squared distance; a tiny negative value is round-off around 0.
    return max(value, 0.0)


def fid_from_features(features1: np.ndarray | torch.Tensor, features2: np.ndarray | torch.Tensor) -> float:
    """FID between two feature sets (N₁, D) and (N₂, D), e.g. from `inception_outputs`.

    Same value as `frechet_distance(*feature_statistics(f1), *feature_statistics(f2))`, but
    when both sets have fewer rows than D it never forms a D × D matrix: with centred
    features Cᵢ and Σᵢ = CᵢᵀCᵢ/(Nᵢ−1), the eigenvalues of Σ₁Σ₂ are the squared singular
    values of C₁C₂ᵀ/√((N₁−1)(N₂−1)), so Tr((Σ₁Σ₂)^{1/2}) is the nuclear norm of that small
    N₁ × N₂ matrix, with no D × D eigendecomposition.
    """
    a = _feature_matrix(features1, "features1")
    b = _feature_matrix(features2, "features2")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ. Got shapes {a.shape} and {b.shape}")
    n1, n2, d = a.shape[0], b.shape[0], a.shape[1]
    if max(n1, n2) >= d:
        return frechet_distance(*feature_statistics(a), *feature_statistics(b))
    mu1, mu2 = a.mean(axis=0), b.mean(axis=0)
    c1, c2 = a - mu1, b - mu2
    scale = np.sqrt((n1 - 1) * (n2 - 1))
    trace_sqrt = np.linalg.svd(c1 @ c2.T, compute_uv=False).sum() / scale
    diff = mu1 - mu2
    value = float(diff @ diff + (c1 * c1).sum() / (n1 - 1) + (c2 * c2).sum() / (n2 - 1) - 2.0 * trace_sqrt)
    return max(value, 0.0)

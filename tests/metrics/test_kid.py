"""KID: against a direct O(n²) evaluation of the unbiased MMD² formula, and its properties."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from svai.metrics.kid import kernel_inception_distance


def direct_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² with k(u, v) = (uᵀv/d + 1)³, pair by pair (Bińkowski et al. 2018, eq. 4)."""
    d = x.shape[1]

    def k(u: np.ndarray, v: np.ndarray) -> float:
        return (float(np.dot(u, v)) / d + 1.0) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(n), 2)) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_whole_sets_equal_direct_formula() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(12, 6))
    b = rng.normal(loc=0.5, size=(12, 6))
    # subset_size >= N: every subset is the whole set (reordered), so every estimate is the same.
    mean, std = kernel_inception_distance(torch.from_numpy(a), b, subsets=3, subset_size=50)
    assert mean == pytest.approx(direct_mmd2(a, b), rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_subsets_follow_documented_sampling() -> None:
    # Documented convention (as torch-fidelity): RandomState(seed), a's subset then b's,
    # without replacement, size min(subset_size, N_a, N_b).
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(15, 4)), rng.normal(size=(9, 4))
    draws = np.random.RandomState(7)
    expected = []
    for _ in range(4):
        sub_a = a[draws.choice(15, 6, replace=False)]
        sub_b = b[draws.choice(9, 6, replace=False)]
        expected.append(direct_mmd2(sub_a, sub_b))
    mean, std = kernel_inception_distance(a, b, subsets=4, subset_size=6, seed=7)
    assert mean == pytest.approx(np.mean(expected), rel=1e-10)
    assert std == pytest.approx(np.std(expected), rel=1e-8)


def test_same_distribution_is_zero_in_expectation() -> None:
    # Unbiasedness: averaged over independent pairs of samples from one distribution the
    # estimate is centred on 0 (a biased V-statistic would sit clearly above it).
    rng = np.random.default_rng(2)
    estimates = [
        kernel_inception_distance(rng.normal(size=(20, 8)), rng.normal(size=(20, 8)), subsets=1, subset_size=20)[0]
        for _ in range(60)
    ]
    spread = np.std(estimates) / np.sqrt(len(estimates))
    assert abs(np.mean(estimates)) < 4 * spread


def test_different_distributions_are_clearly_positive() -> None:
    rng = np.random.default_rng(3)
    a = rng.normal(size=(60, 8))
    b = rng.normal(loc=1.0, size=(60, 8))
    mean, std = kernel_inception_distance(a, b, subsets=20, subset_size=30)
    assert mean > 4 * std > 0


def test_seed_makes_it_reproducible() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(30, 5)), rng.normal(size=(30, 5))
    first = kernel_inception_distance(a, b, subsets=5, subset_size=10, seed=3)
    assert kernel_inception_distance(a, b, subsets=5, subset_size=10, seed=3) == first
    assert kernel_inception_distance(a, b, subsets=5, subset_size=10, seed=4) != first


def test_bad_inputs_are_errors() -> None:
    with pytest.raises(ValueError, match="feature dimension"):
        kernel_inception_distance(np.zeros((4, 3)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="at least 2"):
        kernel_inception_distance(np.zeros((1, 3)), np.zeros((4, 3)))

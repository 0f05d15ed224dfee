"""Inception Score: closed forms on hand-made predictions, and the FID network's logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import entropy

from svai.metrics.inception import inception_outputs, load_inception
from svai.metrics.inception_score import inception_score

CLASSES = 1008


def one_hot_logits(labels: np.ndarray, margin: float = 60.0) -> np.ndarray:
    logits = np.zeros((len(labels), CLASSES))
    logits[np.arange(len(labels)), labels] = margin
    return logits


@pytest.mark.parametrize("splits", [1, 4])
def test_uniform_predictions_give_one(splits: int) -> None:
    mean, std = inception_score(np.zeros((40, CLASSES)), splits=splits)
    assert mean == pytest.approx(1.0, abs=1e-12)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_identical_confident_predictions_give_one() -> None:
    # Every image the same (sharp) prediction: p(y|x) = p(y), no diversity.
    logits = np.tile(np.random.default_rng(0).normal(scale=5.0, size=CLASSES), (30, 1))
    assert inception_score(logits, splits=3)[0] == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("k", [2, 7, 50])
def test_confident_even_predictions_over_k_classes_give_k(k: int) -> None:
    labels = np.repeat(np.arange(k), 4)
    mean, std = inception_score(torch.from_numpy(one_hot_logits(labels)), splits=1)
    assert mean == pytest.approx(k, rel=1e-9)
    assert std == 0.0


def test_two_groups_closed_form() -> None:
    # Half the images predict q1, half q2: IS = exp(½ KL(q1‖m) + ½ KL(q2‖m)), m = (q1 + q2)/2.
    rng = np.random.default_rng(1)
    z1, z2 = rng.normal(size=CLASSES), rng.normal(scale=2.0, size=CLASSES)
    q1, q2 = np.exp(z1) / np.exp(z1).sum(), np.exp(z2) / np.exp(z2).sum()
    m = (q1 + q2) / 2
    expected = np.exp(0.5 * entropy(q1, m) + 0.5 * entropy(q2, m))
    logits = np.vstack([np.tile(z1, (5, 1)), np.tile(z2, (5, 1))])
    assert inception_score(logits, splits=1)[0] == pytest.approx(expected, rel=1e-10)


def test_score_is_bounded_and_seeded() -> None:
    labels = np.random.default_rng(2).integers(0, 10, size=60)
    logits = one_hot_logits(labels, margin=8.0)
    mean, std = inception_score(logits, splits=6, seed=5)
    assert 1.0 <= mean <= 10.0 and std >= 0.0
    assert inception_score(logits, splits=6, seed=5) == (mean, std)
    # With one split, the shuffle cannot matter.
    assert inception_score(logits, splits=1, seed=0)[0] == pytest.approx(inception_score(logits, splits=1, seed=9)[0])


def test_bad_inputs_are_errors() -> None:
    with pytest.raises(ValueError, match="splits"):
        inception_score(np.zeros((3, CLASSES)), splits=4)
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        inception_score(np.zeros(CLASSES))


def test_runs_on_fid_network_logits(use_torch_home: Path) -> None:
    _, logits = inception_outputs(load_inception(), torch.rand(4, 3, 32, 32))
    mean, std = inception_score(logits, splits=2)
    assert logits.shape == (4, CLASSES)
    assert 1.0 <= mean <= 2.0 and np.isfinite(std)

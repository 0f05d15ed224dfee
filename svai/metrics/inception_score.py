"""Inception Score (Salimans et al. 2016, "Improved techniques for training GANs", section 4).

    IS = exp( E_x KL( p(y|x) ‖ p(y) ) ),    p(y) = E_x p(y|x),

computed on each of `splits` equal parts of the (shuffled) set; mean and spread over parts.

Conventions, chosen to match the original code (openai/improved-gan) and torch-fidelity,
which torchmetrics wraps:
- p(y|x) is the softmax over all 1008 outputs of the TensorFlow 2015-12-05 Inception graph
  (pytorch-fid's weights): the 1000 ImageNet classes plus 8 unused outputs, which the
  original code kept. The logits are pool-3 features times the classifier weights without
  the bias (`inception_outputs` returns exactly these).
- Rows are shuffled with `numpy.random.RandomState(seed).permutation` before splitting
  (torch-fidelity's default seed is 2020, ours is 0), part i is rows
  [i·N // splits, (i+1)·N // splits), and the spread is the population standard deviation
  (ddof=0). torchmetrics instead shuffles with torch's global generator and uses ddof=1.
- Everything is computed in float64.
"""

from __future__ import annotations

import numpy as np
import torch

from svai.metrics.arrays import float_matrix
from scipy.special import log_softmax, xlogy


def inception_score(logits: np.ndarray | torch.Tensor, splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """Inception Score of a set of classifier logits.

    Args:
        logits: (N, C) unnormalised class scores, C = 1008 for the FID Inception weights;
            N >= splits.
        splits: number of parts the score is computed on.
        seed: seeds the shuffle before splitting.

    Returns:
        (mean, std) over parts; 1 <= IS <= min(C, N / splits). Uniform or identical
        predictions give 1; confident predictions spread evenly over K classes give K.
    """
    z = float_matrix(logits, "logits", columns="C")
    n = z.shape[0]
    if splits < 1 or n < splits:
        raise ValueError(f"need 1 <= splits <= N. Got splits={splits}, N={n}")

    z = z[np.random.RandomState(seed).permutation(n)]
    log_p = log_softmax(z, axis=1)
    p = np.exp(log_p)
    scores = np.empty(splits, dtype=np.float64)
    for i in range(splits):
        part, log_part = p[i * n // splits : (i + 1) * n // splits], log_p[i * n // splits : (i + 1) * n // splits]
        marginal = part.mean(axis=0)
        # KL(p(y|x) ‖ p(y)) = Σ_y p log p − p log p(y); xlogy makes 0·log 0 = 0 for classes
        # no image in the part predicts.
        kl = (part * log_part - xlogy(part, marginal)).sum(axis=1)
        scores[i] = np.exp(kl.mean())
    return float(scores.mean()), float(scores.std())

"""Facts about networks that tests check: parameter counts, and whether a step changed them."""

from __future__ import annotations

import torch
from torch import nn


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def snapshot(module: nn.Module) -> list[torch.Tensor]:
    """Copies of `module`'s parameters."""
    return [p.detach().clone() for p in module.parameters()]


def changed(module: nn.Module, before: list[torch.Tensor]) -> bool:
    """Whether any parameter of `module` differs from `before` (a `snapshot`)."""
    return any(not torch.equal(p, q) for p, q in zip(module.parameters(), before))

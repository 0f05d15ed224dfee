"""Facts about networks that tests check against closed forms."""

from __future__ import annotations

from torch import nn


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

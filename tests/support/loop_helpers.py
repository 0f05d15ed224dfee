"""Helpers for tests that drive `Trainer._step` directly."""

from __future__ import annotations

import torch

from svai.train import Trainer


def first_batch(t: Trainer) -> dict:
    """The trainer's first loader batch, on its device."""
    raw = next(iter(t._loader()))
    return {k: v.to(t.accelerator.device) if torch.is_tensor(v) else v for k, v in raw.items()}


def snapshot(t: Trainer, name: str) -> list[torch.Tensor]:
    """Copies of network `name`'s parameters."""
    return [p.detach().clone() for p in t.nets[name].parameters()]


def changed(before: list[torch.Tensor], t: Trainer, name: str) -> bool:
    """Whether any parameter of network `name` differs from `before`."""
    return any(not torch.equal(a, p.detach()) for a, p in zip(before, t.nets[name].parameters()))

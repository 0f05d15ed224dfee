"""Helpers for tests that drive `Trainer._step` directly."""

from __future__ import annotations

import torch

from svai.train import Trainer


def first_batch(t: Trainer) -> dict:
    """The trainer's first loader batch, on its device."""
    raw = next(iter(t._loader()))
    return {k: v.to(t.accelerator.device) if torch.is_tensor(v) else v for k, v in raw.items()}


"""The plug-in interface every model family implements.

A family describes *what* to train; the shared loop in `svai.train` decides *how*
(devices, precision, backward, optimiser steps, checkpoints). Families never call
`backward`, `.to(device)` or save anything.

Batches handed to a family are dicts of tensors already on the right device:

- ``before``: (B, 3, H, W) in [-1, 1]
- ``after``: (B, 3, H, W) in [-1, 1], the same subject after surgery (paired)
- ``after_unpaired``: (B, 3, H, W) in [-1, 1], an independently drawn "after" image,
  for families that learn from unpaired domains (``paired = False``)
- ``mask``: (B, 1, H, W) in [0, 1], where the procedures changed the face (zeros if unknown)
- ``procedures``: (B, P) float multi-hot over `svai.data.layout.PROCEDURES`
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

Batch = dict[str, torch.Tensor]
Networks = dict[str, nn.Module]
LossResult = tuple[torch.Tensor, dict[str, float]]


@dataclass(frozen=True)
class Phase:
    """One optimiser and the networks it updates.

    Each training step runs the family's phases in order. A phase whose `every` is k runs
    on steps where ``step % k == 0`` (StarGAN updates G once per 5 critic steps).
    """

    name: str
    networks: tuple[str, ...]
    lr: float
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 0.0
    every: int = 1
    # Per-network learning rates that differ from `lr` (StarGAN v2's mapping network).
    lr_overrides: tuple[tuple[str, float], ...] = ()


class ModelFamily:
    """Base class of a model family. Subclasses set the class attributes and methods below.

    A family instance holds only its options and image size; network weights live in the
    `Networks` dict built by `build`, so the loop can wrap them for devices and processes.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type] = type(None)
    paired: ClassVar[bool] = True           # learns from aligned before/after pairs
    condition: ClassVar[str] = "none"       # "none" | "procedures" | "style" | "text"
    description: ClassVar[str] = ""

    def __init__(self, options: Any, image_size: int) -> None:
        if not dataclasses.is_dataclass(options) or not isinstance(options, self.Options):
            raise TypeError(f"{self.name} expects {self.Options.__name__}; got {type(options).__name__}")
        self.options = options
        self.image_size = image_size

    # -- building -----------------------------------------------------------------
    def build(self) -> Networks:
        """Create every network, initialised. Keys are stable names used in checkpoints.

        Besides trained networks this may hold state modules (an image pool, an EMA copy):
        everything returned is saved and restored with the run.
        """
        raise NotImplementedError

    def inference_networks(self) -> tuple[str, ...]:
        """The networks `translate` needs (generate loads only these)."""
        raise NotImplementedError

    # -- training -----------------------------------------------------------------
    def phases(self) -> list[Phase]:
        raise NotImplementedError

    def lr_factor(self, step: int, total_steps: int) -> float:
        """Learning-rate multiplier at `step` of `total_steps` (default: constant)."""
        return 1.0

    def loss(self, phase: str, nets: Networks, batch: Batch, ctx: dict[str, Any], step: int) -> LossResult:
        """Loss of one phase: `(scalar loss, {"name": float})`.

        `ctx` is an empty dict at the start of every step and is shared by that step's
        phases, so a generator output made in one phase can be reused by the next.
        """
        raise NotImplementedError

    def after_step(self, nets: Networks, step: int) -> None:
        """Called after every optimiser step of a training step (EMA updates go here)."""

    # -- inference ----------------------------------------------------------------
    @torch.no_grad()
    def translate(self, nets: Networks, before: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """before: (B, 3, H, W) in [-1, 1] -> predicted after, same shape and range."""
        raise NotImplementedError


def set_requires_grad(nets: Networks, names: tuple[str, ...] | list[str], flag: bool) -> None:
    """Switch gradients on or off for the named networks (frozen discriminators save work)."""
    for name in names:
        for parameter in nets[name].parameters():
            parameter.requires_grad_(flag)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


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


def each_phase(family, nets: dict[str, nn.Module]):  # type: ignore[no-untyped-def]
    """The family's phases of one step at which all are due, each entered as the training loop
    enters it: every network trainable with no gradient first (the loop's switch then freezes
    what the phase does not train)."""
    from svai.models.base import PhaseGradients

    phases = family.phases()
    gradients, due = PhaseGradients(nets, phases, family.prepares), [p.name for p in phases]
    for phase in phases:
        for net in nets.values():
            net.requires_grad_(True)
            net.zero_grad(set_to_none=True)
        gradients.enter(phase, due)
        yield phase


def step_losses(family, nets: dict[str, nn.Module], batch: dict,  # type: ignore[no-untyped-def]
                bf16: bool = False) -> list[torch.Tensor]:
    """Each phase's loss of one step on `batch` (under bf16 autocast when asked), each
    backpropagated, in phase order."""
    ctx: dict = {}
    losses = []
    for phase in family.phases():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, _ = family.loss(phase.name, nets, batch, ctx, 0)
        loss.backward()
        losses.append(loss)
    return losses

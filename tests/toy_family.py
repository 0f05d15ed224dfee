"""A tiny model family that exercises every hook of the shared loop.

Networks: ``A`` and ``A2`` (1×1 convolutions, the "generator"), ``B`` (a linear critic) and
``A_ema`` (an exponential moving average of ``A``, a state module). Phases, in order:
``B`` every 2 steps (WGAN-GP critic), ``A`` on both generator networks with a lower learning
rate for ``A2``, and ``A_again`` sharing ``A``'s optimiser. Everything is linear, so the
gradient penalty has a closed form (see `critic_penalty_closed_form`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from svai.models.base import Batch, LossResult, ModelFamily, Networks, Phase, Request, StepContext
from svai.models.penalties import wgan_gradient_penalty
from svai.models.registry import _FAMILIES

NAME = "toy-loop"
EMA_DECAY = 0.5


@dataclass
class ToyOptions:
    lr: float = 1e-2
    lr_a2: float = 1e-3
    lambda_gp: float = 10.0
    critic_every: int = 2


class ToyFamily(ModelFamily):
    name = NAME
    Options = ToyOptions
    paired = True
    uses = frozenset({"procedures"})
    description = "test family"

    def build(self) -> Networks:
        ema = nn.Conv2d(3, 3, 1)
        ema.requires_grad_(False)
        nets: Networks = {"A": nn.Conv2d(3, 3, 1), "A2": nn.Conv2d(3, 3, 1), "B": nn.Conv2d(3, 1, 1), "A_ema": ema}
        ema.load_state_dict(nets["A"].state_dict())
        return nets

    def inference_networks(self) -> tuple[str, ...]:
        return ("A", "A2")

    def phases(self) -> list[Phase]:
        o = self.options
        return [
            Phase("B", ("B",), o.lr, every=o.critic_every),
            Phase("A", ("A", "A2"), o.lr, lr_overrides=(("A2", o.lr_a2),)),
            Phase("A_again", ("A",), o.lr, shares="A"),
        ]

    def _fake(self, nets: Networks, batch: Batch) -> torch.Tensor:
        return nets["A2"](nets["A"](batch["before"]))

    def loss(self, phase: str, nets: Networks, batch: Batch, ctx: StepContext, step: int) -> LossResult:
        fake = self._fake(nets, batch)
        if phase == "B":
            critic = nets["B"]
            wasserstein = critic(fake.detach()).float().mean() - critic(batch["after"]).float().mean()
            penalty = wgan_gradient_penalty(critic, batch["after"], fake, scaler=ctx.scaler)
            total = wasserstein + self.options.lambda_gp * penalty
            return total, {"B": total.item(), "gp": penalty.item()}
        total = (fake.float() - batch["after"].float()).abs().mean() - nets["B"](fake).float().mean()
        return total, {phase: total.item()}

    def after_step(self, nets: Networks, step: int) -> None:
        if isinstance(nets["A"], nn.parallel.DistributedDataParallel):
            raise TypeError("after_step was handed a DDP wrapper")
        with torch.no_grad():
            for ema, live in zip(nets["A_ema"].parameters(), nets["A"].parameters()):
                ema.mul_(EMA_DECAY).add_(live, alpha=1 - EMA_DECAY)

    @torch.no_grad()
    def translate(self, nets: Networks, before: torch.Tensor, request: Request | None = None) -> torch.Tensor:
        return self._fake(nets, {"before": before}).clamp(-1, 1)


def critic_penalty_closed_form(critic: nn.Conv2d, height: int, width: int) -> float:
    """The WGAN-GP term of a 1×1 linear critic: its input gradient is the weight vector w at
    every pixel, so ‖∇‖₂ = ‖w‖·√(H·W) for every sample and the penalty is (‖w‖·√(HW) − 1)²."""
    norm = float(critic.weight.detach().double().norm()) * math.sqrt(height * width)
    return (norm - 1.0) ** 2


def register() -> None:
    _FAMILIES[NAME] = ToyFamily


def unregister() -> None:
    _FAMILIES.pop(NAME, None)

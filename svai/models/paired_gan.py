"""What the conditional GANs on aligned pairs share: pix2pix and the basic DCGAN-style `gan`.

A generator ``G`` maps the before photo to the after photo through the family's output head
(`svai.models.heads`); a discriminator ``D`` judges the pair (before, after), real or
generated, stacked on channels (Isola et al. 2017, Sec. 3.1). Each training step runs ``D``
(the generated image detached), then ``G``, with one Adam per network; the generated image is
made once per step and shared through the step context. A family supplies the networks
(`build`), its options (with ``init_gain``, ``lambda_l1``, ``gan_mode``,
``lr``, ``beta1``, ``beta2``, ``lr_decay_fraction``) and, where the generator takes more than
the before photo, `_input`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from svai.models.base import Batch, GeneratorFamily, LossResult, Networks, Phase
from svai.models.gan_training import gan_loss, linear_decay_factor


class PairedGan(GeneratorFamily):
    """Phases ``D`` and ``G`` of a conditional GAN on pairs; subclasses build
    ``{"G": generator, "D": discriminator}`` and give `generator_output`."""

    # The factor on D's loss: pix2pix halves it so D learns more slowly than G (Sec. 3.3).
    d_loss_scale: ClassVar[float] = 1.0
    prepares = {"D": "G"}

    def inference_networks(self) -> tuple[str, ...]:
        return ("G",)

    def phases(self) -> list[Phase]:
        o = self.options
        betas = (o.beta1, o.beta2)
        return [Phase("D", ("D",), o.lr, betas), Phase("G", ("G",), o.lr, betas)]

    def lr_factor(self, step: int, total_steps: int) -> float:
        return linear_decay_factor(step, total_steps, self.options.lr_decay_fraction)

    def _input(self, before: torch.Tensor, procedures: torch.Tensor | None) -> torch.Tensor:
        """G's input for before (B, 3, H, W) and the procedure strengths (B, P): the before image."""
        return before

    def _fake(self, nets: Networks, batch: Batch, ctx: dict[str, Any]) -> torch.Tensor:
        if "fake" not in ctx:
            # Made in the D phase with G's graph (D prepares G), for the G phase to reuse.
            raw = nets["G"](self._input(batch["before"], batch["procedures"]))
            ctx["fake"], ctx["aux"] = self.head(raw, batch["before"])
        return ctx["fake"]

    def loss(self, phase: str, nets: Networks, batch: Batch, ctx: dict[str, Any], step: int) -> LossResult:
        """before, after: (B, 3, H, W) in [-1, 1].

        - ``D``: `d_loss_scale`·(GAN(D(before, G(before)) → fake) + GAN(D(before, after) → real)),
          the generated image detached; logs ``D_fake``, ``D_real``, ``D``.
        - ``G``: GAN(D(before, G(before)) → real) (the non-saturating loss) + λ_L1·‖after −
          G(before)‖₁ with D frozen, plus the output head's regularisers (logged unweighted);
          logs ``G_gan``, ``G_l1``, ``G``.
        """
        o = self.options
        before, after = batch["before"], batch["after"]
        fake = self._fake(nets, batch, ctx)
        if phase == "D":
            loss_fake = gan_loss(nets["D"](torch.cat([before, fake.detach()], dim=1)), False, o.gan_mode)
            loss_real = gan_loss(nets["D"](torch.cat([before, after], dim=1)), True, o.gan_mode)
            total = self.d_loss_scale * (loss_fake + loss_real)
            return total, {"D_fake": loss_fake.item(), "D_real": loss_real.item(), "D": total.item()}
        if phase == "G":
            loss_gan = gan_loss(nets["D"](torch.cat([before, fake], dim=1)), True, o.gan_mode)
            loss_l1 = F.l1_loss(fake.float(), after.float())
            head_loss, head_logs = self.head.regularizer(ctx.get("aux", {}))
            total = loss_gan + o.lambda_l1 * loss_l1 + head_loss
            return total, {"G_gan": loss_gan.item(), "G_l1": loss_l1.item(), **head_logs, "G": total.item()}
        raise ValueError(f"{self.name} has phases D and G; got {phase!r}")

"""CycleGAN: translation between unpaired domains (Zhu et al. 2017, "Unpaired Image-to-Image
Translation using Cycle-Consistent Adversarial Networks").

Domain A is "before" photos, domain B independently drawn "after" photos
(``batch["after_unpaired"]``); the aligned ``batch["after"]`` is never read, so training
cannot exploit pairs. Two generators G_AB: A → B and G_BA: B → A are trained with LSGAN
losses against D_B and D_A, the cycle-consistency loss (eq. 2) and the identity loss
(Sec. 5.2). Optional SAGAN self-attention (Zhang et al. 2019) in G and/or D.

`model.output` chooses how G_AB's last layer becomes the after image (`svai.models.heads`;
"direct" is the paper's). G_BA always draws directly, as in the paper: it never makes a
prediction (only G_AB does), it is the cycle's way back, and were it to start as the identity
too, the cycle and identity losses would start at exactly zero for a generator pair that
changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from svai.data.layout import PROCEDURES
from svai.errors import SvaiError
from svai.models.base import Batch, GeneratorFamily, LossResult, Networks, Phase, Request
from svai.models.gan_training import ImagePool, gan_loss, linear_decay_factor
from svai.models.heads import Aux, OutputHead
from svai.models.layers import (
    PatchDiscriminator, ResnetGenerator, check_attention_heads, check_before, check_residual_trunk, init_weights,
    patch_output_size,
)
from svai.models.options import GanOptions, Norm, check_at_least, check_between
from svai.models.registry import register_family

GENERATORS: tuple[str, ...] = ("G_AB", "G_BA")
DISCRIMINATORS: tuple[str, ...] = ("D_A", "D_B")


@dataclass
class CycleGANOptions(GanOptions):
    """Options of `cyclegan`; defaults are the reference ``--model cycle_gan`` settings.

    The shared ones are described on `GanOptions`. Here dropout applies inside the residual
    blocks (the reference uses none), gan_mode is "lsgan" | "vanilla", and the default
    lr_decay_fraction 0.5 matches the reference's decay over the second 100 of its 200
    epochs. Own options:

    - n_blocks: residual blocks in each generator, >= 0; None follows the image size as in
      the paper (Sec. 7.2): 9 from 256 px up, 6 below.
    - lambda_cycle: weight of both cycle losses, A→B→A and B→A→B (eq. 3), >= 0.
    - lambda_identity: identity loss weight as a multiple of lambda_cycle, >= 0 (0 disables it).
    - pool_size: generated images each discriminator's history pool keeps (0 disables it).
    - attention_position: index of the residual block the generators' attention precedes
      (0 = before the first, n_blocks = after the last); None = the middle of the trunk
      (n_blocks // 2). The discriminators' attention sits before their last conv.
    """

    norm: Norm = "instance"
    dropout: float = 0.0
    gan_mode: Literal["lsgan", "vanilla"] = "lsgan"
    n_blocks: int | None = None
    lambda_cycle: float = 10.0
    lambda_identity: float = 0.5
    pool_size: int = 50
    attention_position: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_blocks is not None:
            check_between("n_blocks", self.n_blocks, 0, 64)
        for key in ("lambda_cycle", "lambda_identity"):
            check_at_least(key, getattr(self, key), 0)
        # The pool is allocated at its full size on first use: 1000 images is 20x the reference.
        check_between("pool_size", self.pool_size, 0, 1000)


@register_family
class CycleGAN(GeneratorFamily):
    """Networks: ``G_AB`` (before → after), ``G_BA`` (after → before), ``D_A`` (judges
    before photos), ``D_B`` (judges after photos), and the state modules ``pool_A`` /
    ``pool_B`` (histories of generated A / B images for D_A / D_B).

    Phases per step, in the reference order: ``G`` (both generators, discriminators frozen),
    then ``D`` (both discriminators, on pooled generated images). With an output mode other
    than "direct", ``G_AB`` returns the head's raw channels and `self.head` makes the image.
    """

    name = "cyclegan"
    Options = CycleGANOptions
    paired = False
    uses = frozenset({"intensity"})
    description = "CycleGAN: two ResNet generators + PatchGANs, LSGAN + cycle + identity losses, unpaired"

    def __init__(self, options: CycleGANOptions, image_size: int, procedures: tuple[str, ...] = PROCEDURES) -> None:
        super().__init__(options, image_size, procedures)
        o = options
        self.n_blocks = o.n_blocks if o.n_blocks is not None else (9 if image_size >= 256 else 6)
        self.attention_position = o.attention_position if o.attention_position is not None else self.n_blocks // 2
        check_residual_trunk("cyclegan", image_size, o, self.attention_position, self.n_blocks, "n_blocks")
        if o.attention == "generator+discriminator":
            check_attention_heads(o.attention_heads, o.ndf * min(2 ** o.n_layers_d, 8))
        if patch_output_size(image_size, o.n_layers_d) < 1:
            raise SvaiError(
                f"model.n_layers_d={o.n_layers_d} is too deep for image size {image_size}; lower it"
            )

    # -- building -----------------------------------------------------------------------
    def _generator(self, head: OutputHead | None = None) -> ResnetGenerator:
        """A generator ending in `head`'s raw channels, or in the reference tanh image without one."""
        o = self.options
        return ResnetGenerator(
            in_channels=3,
            out_channels=head.channels if head is not None else 3,
            ngf=o.ngf,
            n_blocks=self.n_blocks,
            norm=o.norm,
            dropout=o.dropout,
            attention_position=self.attention_position if o.attention != "none" else None,
            attention_heads=o.attention_heads,
            final_tanh=head.final_tanh if head is not None else True,
        )

    def _discriminator(self) -> PatchDiscriminator:
        o = self.options
        return PatchDiscriminator(
            in_channels=3,
            ndf=o.ndf,
            n_layers=o.n_layers_d,
            norm=o.norm,
            attention=o.attention == "generator+discriminator",
            attention_heads=o.attention_heads,
        )

    def build(self) -> Networks:
        nets: Networks = {}
        # Built in a fixed order from the global RNG, so one seed gives one set of weights.
        nets["G_AB"] = self._generator(self.head)
        nets["G_BA"] = self._generator()
        for name in DISCRIMINATORS:
            nets[name] = self._discriminator()
        for name in (*GENERATORS, *DISCRIMINATORS):
            init_weights(nets[name], self.options.init_gain)
        self.head.initialise(nets["G_AB"].output_layer)
        nets["pool_A"] = ImagePool(self.options.pool_size)
        nets["pool_B"] = ImagePool(self.options.pool_size)
        return nets

    def inference_networks(self) -> tuple[str, ...]:
        return ("G_AB",)

    # -- training -----------------------------------------------------------------------
    def phases(self) -> list[Phase]:
        o = self.options
        betas = (o.beta1, o.beta2)
        return [Phase("G", GENERATORS, o.lr, betas), Phase("D", DISCRIMINATORS, o.lr, betas)]

    def lr_factor(self, step: int, total_steps: int) -> float:
        return linear_decay_factor(step, total_steps, self.options.lr_decay_fraction)

    def _a_to_b(self, nets: Networks, images: torch.Tensor) -> tuple[torch.Tensor, Aux]:
        """G_AB through the output head: images (B, 3, H, W) in [-1, 1] -> (after, aux maps)."""
        return self.head(nets["G_AB"](images), images)

    def loss(self, phase: str, nets: Networks, batch: Batch, ctx: dict[str, Any], step: int) -> LossResult:
        """Losses of eq. 3 plus identity. before (A), after_unpaired (B): (B, 3, H, W) in [-1, 1].

        - ``G``: GAN(D_B(G_AB(a)) → real) + GAN(D_A(G_BA(b)) → real)
          + λ_cyc·(‖G_BA(G_AB(a)) − a‖₁ + ‖G_AB(G_BA(b)) − b‖₁)
          + λ_idt·λ_cyc·(‖G_AB(b) − b‖₁ + ‖G_BA(a) − a‖₁), both D frozen, plus the output
          head's regularisers on G_AB(a) (`OutputHead.regularizer`, logged unweighted);
          logs ``G_gan_AB``, ``G_gan_BA``, ``cycle_A``, ``cycle_B``, ``idt_A``, ``idt_B``, ``G``.
        - ``D``: for each D, ½·(GAN(D(real) → real) + GAN(D(pooled fake) → fake));
          logs ``D_A``, ``D_B``, ``D``.
        """
        o = self.options
        real_a, real_b = batch["before"], batch["after_unpaired"]
        if phase == "G":
            fake_b, aux = self._a_to_b(nets, real_a)
            fake_a = nets["G_BA"](real_b)
            ctx["fake_a"], ctx["fake_b"] = fake_a.detach(), fake_b.detach()
            gan_ab = gan_loss(nets["D_B"](fake_b), True, o.gan_mode)
            gan_ba = gan_loss(nets["D_A"](fake_a), True, o.gan_mode)
            cycle_a = F.l1_loss(nets["G_BA"](fake_b).float(), real_a.float())
            cycle_b = F.l1_loss(self._a_to_b(nets, fake_a)[0].float(), real_b.float())
            head_loss, head_logs = self.head.regularizer(aux)
            total = gan_ab + gan_ba + o.lambda_cycle * (cycle_a + cycle_b) + head_loss
            logs = {"G_gan_AB": gan_ab.item(), "G_gan_BA": gan_ba.item(),
                    "cycle_A": cycle_a.item(), "cycle_B": cycle_b.item(), **head_logs}
            if o.lambda_identity > 0:
                # Identity mapping (Sec. 5.2, after Taigman et al. 2017): a generator fed an image
                # of its target domain should leave it unchanged, which preserves colour.
                idt_a = F.l1_loss(nets["G_BA"](real_a).float(), real_a.float())
                idt_b = F.l1_loss(self._a_to_b(nets, real_b)[0].float(), real_b.float())
                total = total + o.lambda_identity * o.lambda_cycle * (idt_a + idt_b)
                logs.update(idt_A=idt_a.item(), idt_B=idt_b.item())
            logs["G"] = total.item()
            return total, logs
        if phase == "D":
            if "fake_a" not in ctx:
                # Only reached if the G phase did not run this step.
                with torch.no_grad():
                    ctx["fake_b"] = self._a_to_b(nets, real_a)[0]
                    ctx["fake_a"] = nets["G_BA"](real_b)
            pooled_a = nets["pool_A"].query(ctx["fake_a"])
            pooled_b = nets["pool_B"].query(ctx["fake_b"])
            loss_a = self._discriminator_loss(nets["D_A"], real_a, pooled_a)
            loss_b = self._discriminator_loss(nets["D_B"], real_b, pooled_b)
            total = loss_a + loss_b
            return total, {"D_A": loss_a.item(), "D_B": loss_b.item(), "D": total.item()}
        raise ValueError(f"cyclegan has phases G and D; got {phase!r}")

    def _discriminator_loss(self, discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """½·(GAN(D(real) → real) + GAN(D(fake) → fake)); halved so D learns more slowly than G."""
        mode = self.options.gan_mode
        return 0.5 * (gan_loss(discriminator(real), True, mode) + gan_loss(discriminator(fake.detach()), False, mode))

    # -- inference ----------------------------------------------------------------------
    def generator_output(self, nets: Networks, before: torch.Tensor, request: Request | None) -> torch.Tensor:
        """G_AB's raw output for before (B, 3, H, W) in [-1, 1], H and W divisible by 4."""
        check_before(before, multiple=4)
        return nets["G_AB"](before)

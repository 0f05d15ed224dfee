"""StarGAN: one generator for many domains (Choi et al. 2018, "StarGAN: Unified Generative
Adversarial Networks for Multi-Domain Image-to-Image Translation"; reference code
yunjey/stargan).

Domains are the procedures of the run's vocabulary (`ModelFamily.procedures`; by default
eyes, nose, jaw), as a multi-label vector: a patient may have several procedures, so the
labels are multi-hot (or strengths in [0, 1]) and classified with binary cross-entropy, as
the reference does for CelebA's attributes.
A before photo is "no procedure" (all-zero label); its after photo carries the pair's
procedures. Every step trains on both photos of each pair: the real images are
before ∪ after, each is translated to its partner's label (before → its procedures,
after → no procedure), and the reconstruction goes back to the original label.

Networks (Sec. 3 and appendix; the reference's ``model.py``):

- generator G(x, c): the target label c tiled over the image as extra input channels,
  a 7×7 convolution, two 4×4 stride-2 down-samplings, `n_res_blocks` residual blocks, two
  4×4 stride-2 transposed convolutions, a 7×7 convolution and tanh; affine instance norm.
- discriminator D(x): `n_layers_d` 4×4 stride-2 convolutions with LeakyReLU(0.01), then a
  3×3 convolution to a real/fake map (D_src) and a convolution spanning the whole last map
  to one logit per label (D_cls, the auxiliary classifier).

Losses (eqs. 1–7 with the Wasserstein objective of Sec. 4.1): D minimises
−D_src(x) + D_src(G(x, c)) + λ_gp·GP + λ_cls·BCE(D_cls(x), c′); G minimises
−D_src(G(x, c)) + λ_cls·BCE(D_cls(G(x, c)), c) + λ_rec·‖x − G(G(x, c), c′)‖₁, updated once
every `n_critic` steps. Optional: λ·‖G(before, procedures) − after‖₁ on the aligned pairs
(`paired_l1`, off in the paper), and SAGAN self-attention (Zhang et al. 2019) in G and D.
`model.output` chooses how G's last layer becomes the after image (`svai.models.heads`;
"direct" is the paper's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from svai.data.layout import PROCEDURES
from svai.errors import SvaiError
from svai.models.base import Batch, GeneratorFamily, LossResult, Networks, Phase, Request, StepContext
from svai.models.gan_training import initialised_pair, linear_decay_factor
from svai.models.heads import Aux
from svai.models.layers import (
    SelfAttention, check_attention_heads, check_before, check_residual_trunk, run_trunk, sampling_path, tile_labels,
)
from svai.models.options import GanOptions, Norm, check_at_least
from svai.models.penalties import wgan_gradient_penalty
from svai.models.registry import register_family

# Label count of the default vocabulary (the networks' default; the family passes its own).
NUM_LABELS = len(PROCEDURES)
# The reference's discriminator ends on a 2×2 map at 128 px (6 layers); the stack never
# halves past that, so smaller images get fewer layers.
MIN_DISCRIMINATOR_MAP = 2
# Input maps up to this side run the discriminator's convolutions as matrix products on CPU
# (`SmallMapConv2d`): measured faster from here down on a 2-core CPU, 2 to 64 images a call.
SMALL_MAP = 8


@dataclass
class StarGANOptions(GanOptions):
    """Options of `stargan`; the presets carry the reference settings (yunjey/stargan).

    The shared ones are described on `GanOptions`. Here:

    - norm applies to the generator ("instance": affine instance norm that tracks running
      statistics, as the reference; "batch"; "none"). The discriminator has no norm.
    - n_layers_d is the most stride-2 layers of the discriminator: the stack stops once its
      map is 2×2, which at 128 px is the reference's 6 layers (the presets set 6).
    - dropout applies between the two convolutions of each residual block (the reference
      uses none).
    - gan_mode is "wgan-gp" only (Sec. 4.1).
    - lr: the presets set the reference's 1e-4 for both networks.

    Own options:

    - n_res_blocks: residual blocks in the generator's trunk (6), >= 0.
    - lambda_gp: weight of the WGAN-GP gradient penalty (10), >= 0.
    - lambda_cls: weight of the domain classification losses, eqs. 2 and 3 (1), >= 0.
    - lambda_rec: weight of the reconstruction (cycle) loss, eq. 4 (10), >= 0.
    - n_critic: discriminator updates per generator update (5), >= 1.
    - paired_l1: weight of ‖G(before, procedures) − after‖₁ on the aligned pairs, >= 0;
      0 (the paper's setting) leaves the pairing unused.
    - attention_position: index of the residual block the generator's attention precedes
      (0 = before the first, n_res_blocks = after the last); None = the middle of the
      trunk (n_res_blocks // 2). The discriminator's attention sits before its two heads.
    """

    norm: Norm = "instance"
    dropout: float = 0.0
    gan_mode: Literal["wgan-gp"] = "wgan-gp"
    n_res_blocks: int = 6
    lambda_gp: float = 10.0
    lambda_cls: float = 1.0
    lambda_rec: float = 10.0
    n_critic: int = 5
    paired_l1: float = 0.0
    attention_position: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("n_res_blocks", "lambda_gp", "lambda_cls", "lambda_rec", "paired_l1"):
            check_at_least(key, getattr(self, key), 0)
        check_at_least("n_critic", self.n_critic, 1)


# -- building blocks ------------------------------------------------------------------------
class TrackedInstanceNorm(nn.InstanceNorm2d):
    """Affine instance norm with running statistics, as in the StarGAN reference, that
    always normalises each image by its own statistics.

    The reference tracks running statistics but never switches its generator to eval mode,
    so its inference uses per-image statistics too; here eval mode (which svai's inference
    uses) keeps that behaviour instead of switching to the running averages, and leaves them
    untouched. The buffers keep the reference's state-dict layout.

    x: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, channels: int) -> None:
        super().__init__(channels, affine=True, track_running_stats=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = self.training
        return F.instance_norm(
            x, self.running_mean if update else None, self.running_var if update else None,
            self.weight, self.bias, use_input_stats=True, momentum=self.momentum or 0.0, eps=self.eps,
        )


def generator_norm(kind: str) -> Callable[[int], nn.Module]:
    """Factory `channels -> norm module` for the generator: "instance" is the reference's
    affine instance norm with running statistics (`TrackedInstanceNorm`)."""
    if kind == "instance":
        return TrackedInstanceNorm
    if kind == "batch":
        return lambda channels: nn.BatchNorm2d(channels, affine=True, track_running_stats=True)
    if kind == "none":
        return lambda channels: nn.Identity()
    raise ValueError(f"unknown norm {kind!r}")


class StarResidualBlock(nn.Module):
    """The reference's residual block: 3×3 conv (zero padding) → norm → ReLU → 3×3 conv → norm,
    added to the input. Convolutions have no bias where a norm follows.

    x: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, channels: int, norm: str = "instance", dropout: float = 0.0) -> None:
        super().__init__()
        make_norm, bias = generator_norm(norm), norm == "none"
        layers: list[nn.Module] = [
            nn.Conv2d(channels, channels, 3, padding=1, bias=bias), make_norm(channels), nn.ReLU(inplace=True),
        ]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers += [nn.Conv2d(channels, channels, 3, padding=1, bias=bias), make_norm(channels)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class StarGenerator(nn.Module):
    """The StarGAN generator (appendix, Table 4).

    With ``attention_position = k`` a SAGAN block follows the k-th residual block
    (0 = before the first, n_blocks = after the last); None means no attention. Zero padding
    throughout, as the reference notes that tiled labels do not survive reflection padding
    followed by instance norm.

    x: (B, 3, H, W) in [-1, 1] with H, W divisible by 4; labels: (B, P) target labels, 0/1
    in training (strengths in [0, 1] at inference) -> (B, out_channels, H, W) in [-1, 1]
    (unbounded without `final_tanh`: an output head of `svai.models.heads` bounds it).
    """

    def __init__(
        self,
        n_labels: int = NUM_LABELS,
        ngf: int = 64,
        n_blocks: int = 6,
        norm: str = "instance",
        dropout: float = 0.0,
        attention_position: int | None = None,
        attention_heads: int = 1,
        out_channels: int = 3,
        final_tanh: bool = True,
    ) -> None:
        super().__init__()
        make_norm, bias = generator_norm(norm), norm == "none"
        self.stem = nn.Sequential(
            nn.Conv2d(3 + n_labels, ngf, 7, padding=3, bias=bias), make_norm(ngf), nn.ReLU(inplace=True),
        )
        self.down = sampling_path(
            ngf, (1, 2, 4), lambda i, o: nn.Conv2d(i, o, 4, stride=2, padding=1, bias=bias), make_norm)
        trunk = 4 * ngf
        self.blocks = nn.ModuleList(StarResidualBlock(trunk, norm, dropout) for _ in range(n_blocks))
        self.attention_position = attention_position
        self.attention = SelfAttention(trunk, attention_heads) if attention_position is not None else None
        self.up = sampling_path(
            ngf, (4, 2, 1), lambda i, o: nn.ConvTranspose2d(i, o, 4, stride=2, padding=1, bias=bias), make_norm)
        # The reference's last convolution has no bias either.
        self.head = nn.Sequential(
            nn.Conv2d(ngf, out_channels, 7, padding=3, bias=False), *([nn.Tanh()] if final_tanh else []),
        )

    @property
    def output_layer(self) -> nn.Conv2d:
        """The last convolution (an output head initialises it)."""
        return self.head[0]

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.down(self.stem(tile_labels(x, labels)))
        h = run_trunk(h, self.blocks, self.attention, self.attention_position)
        return self.head(self.up(h))


def discriminator_layout(image_size: int, n_layers: int) -> tuple[int, int]:
    """(stride-2 layers, side of the last map) of the StarGAN discriminator at `image_size`.

    Each 4×4 stride-2 convolution with padding 1 halves the side (rounding down); the stack
    stops after `n_layers` or once the map is 2×2 (128 px, 6 layers: the reference).
    """
    side, depth = image_size, 0
    while depth < n_layers and side // 2 >= MIN_DISCRIMINATOR_MAP:
        side //= 2
        depth += 1
    return depth, side


class SmallMapConv2d(nn.Conv2d):
    """A convolution that runs as one matrix product over unfolded patches when it sees a CPU
    tensor of at most `SMALL_MAP` × `SMALL_MAP` positions; otherwise an ordinary `nn.Conv2d`
    (same parameters, same state dict, same result up to float rounding).

    StarGAN's discriminator ends in layers whose weights are far larger than their inputs
    (at 128 px, 128 MiB of weights on a 4×4 map). On CPU, oneDNN copies such a weight into its
    blocked layout on every forward and backward call; with glibc's default allocator each
    copy is a fresh mapping, and its page faults cost several times the arithmetic. A matrix
    product reads the weight where it is (docs/models.md has the measurements).

    x: (B, C_in, H, W) -> (B, C_out, H', W') as `nn.Conv2d`.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if (x.device.type != "cpu" or height > SMALL_MAP or width > SMALL_MAP or self.groups != 1
                or self.padding_mode != "zeros" or isinstance(self.padding, str)):
            return super().forward(x)
        batch = x.shape[0]
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        out_h = (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        out_w = (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        patches = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # (B, C_in·kh·kw, L)
        patches = patches.transpose(0, 1).reshape(patches.shape[1], -1)                   # (C_in·kh·kw, B·L)
        weight = self.weight.reshape(self.out_channels, -1)
        if self.bias is not None:
            y = torch.addmm(self.bias[:, None], weight, patches)
        else:
            y = weight @ patches
        return y.reshape(self.out_channels, batch, out_h, out_w).transpose(0, 1)


class StarDiscriminator(nn.Module):
    """The StarGAN discriminator (appendix, Table 5): a PatchGAN whose widths double from
    `ndf` at every stride-2 layer, no norm, LeakyReLU(0.01), and two heads on the last map:
    D_src, a 3×3 convolution to one real/fake score per position, and D_cls, a convolution
    as large as the map to one logit per label. With ``attention=True`` a SAGAN block sits
    before the heads.

    x: (B, 3, S, S) with S = `image_size` -> (scores (B, 1, s, s), unbounded;
    label logits (B, n_labels), unbounded), s the side of `discriminator_layout`.
    """

    def __init__(
        self,
        image_size: int,
        n_labels: int = NUM_LABELS,
        ndf: int = 64,
        n_layers: int = 6,
        attention: bool = False,
        attention_heads: int = 1,
    ) -> None:
        super().__init__()
        depth, side = discriminator_layout(image_size, n_layers)
        layers: list[nn.Module] = [nn.Conv2d(3, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.01)]
        width = ndf
        for _ in range(1, depth):
            layers += [SmallMapConv2d(width, 2 * width, 4, stride=2, padding=1), nn.LeakyReLU(0.01)]
            width *= 2
        self.body = nn.Sequential(*layers)
        self.attention = SelfAttention(width, attention_heads) if attention else None
        self.source = nn.Conv2d(width, 1, 3, padding=1, bias=False)
        self.classes = nn.Conv2d(width, n_labels, side, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        if self.attention is not None:
            h = self.attention(h)
        return self.source(h), self.classes(h).flatten(1)


def discriminator_width(ndf: int, image_size: int, n_layers: int) -> int:
    """Channels of the discriminator's last map (where its attention sits)."""
    return ndf * 2 ** (discriminator_layout(image_size, n_layers)[0] - 1)


# -- losses ---------------------------------------------------------------------------------
def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Multi-label domain classification loss (eqs. 2 and 3, binary cross-entropy per label,
    as the reference for CelebA): summed over labels, averaged over the batch.

    logits: (B, P) unbounded; labels: (B, P) in [0, 1] -> scalar float32.
    """
    logits = logits.float()
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="sum") / logits.shape[0]


# -- the family -----------------------------------------------------------------------------
@register_family
class StarGAN(GeneratorFamily):
    """Networks: ``G`` (label-conditioned generator) and ``D`` (critic + label classifier).

    Phases per step, in the reference order: ``D`` every step, then ``G`` every
    `n_critic`-th step (steps 0, n_critic, 2·n_critic …). On steps where the loop says G is
    due, the translated images made in the D phase are kept, with their graph, for the G phase. With an output
    mode other than "direct", ``G`` returns the head's raw channels and `self.head` makes the
    image.
    """

    name = "stargan"
    Options = StarGANOptions
    paired = True
    uses = frozenset({"procedures", "intensity"})
    description = "StarGAN: one generator conditioned on procedure labels, WGAN-GP + label classifier + reconstruction"
    prepares = {"D": "G"}

    def __init__(self, options: StarGANOptions, image_size: int, procedures: tuple[str, ...] = PROCEDURES) -> None:
        super().__init__(options, image_size, procedures)
        o = options
        if not self.procedures:
            raise SvaiError("stargan needs at least one procedure to condition on (data.procedures is empty)")
        self.attention_position = o.attention_position if o.attention_position is not None else o.n_res_blocks // 2
        check_residual_trunk("stargan", image_size, o, self.attention_position, o.n_res_blocks, "n_res_blocks")
        if o.attention == "generator+discriminator":
            check_attention_heads(o.attention_heads, discriminator_width(o.ndf, image_size, o.n_layers_d))

    # -- building -----------------------------------------------------------------------
    def build(self) -> Networks:
        o = self.options
        generator = StarGenerator(
            n_labels=len(self.procedures),
            ngf=o.ngf,
            n_blocks=o.n_res_blocks,
            norm=o.norm,
            dropout=o.dropout,
            attention_position=self.attention_position if o.attention != "none" else None,
            attention_heads=o.attention_heads,
            out_channels=self.head.channels,
            final_tanh=self.head.final_tanh,
        )
        discriminator = StarDiscriminator(
            self.image_size,
            n_labels=len(self.procedures),
            ndf=o.ndf,
            n_layers=o.n_layers_d,
            attention=o.attention == "generator+discriminator",
            attention_heads=o.attention_heads,
        )
        return initialised_pair(generator, discriminator, o.init_gain, self.head)

    def inference_networks(self) -> tuple[str, ...]:
        return ("G",)

    # -- training -----------------------------------------------------------------------
    def phases(self) -> list[Phase]:
        o = self.options
        betas = (o.beta1, o.beta2)
        return [Phase("D", ("D",), o.lr, betas), Phase("G", ("G",), o.lr, betas, every=o.n_critic)]

    def lr_factor(self, step: int, total_steps: int) -> float:
        return linear_decay_factor(step, total_steps, self.options.lr_decay_fraction)

    @staticmethod
    def domains(batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Real images and their labels, before ∪ after, and each one's target label.

        before, after: (B, 3, H, W) in [-1, 1]; procedures: (B, P) in [0, 1] ->
        (images (2B, 3, H, W), original labels (2B, P), target labels (2B, P)): the before
        photos are "no procedure" and go to their pair's procedures; the after photos carry
        the procedures and go back to "no procedure".
        """
        procedures = batch["procedures"].float()
        none = torch.zeros_like(procedures)
        real = torch.cat([batch["before"], batch["after"]], dim=0)
        return real, torch.cat([none, procedures], dim=0), torch.cat([procedures, none], dim=0)

    def _translate(self, nets: Networks, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, Aux]:
        """G through the output head: images (N, 3, H, W) in [-1, 1], labels (N, P) -> (images, aux maps)."""
        return self.head(nets["G"](images, labels), images)

    def loss(self, phase: str, nets: Networks, batch: Batch, ctx: StepContext, step: int) -> LossResult:
        """Losses of Sec. 3 with WGAN-GP. Batch as in `svai.models.base` (before, after,
        procedures).

        - ``D``: −mean D_src(x) + mean D_src(G(x, c)) + λ_gp·GP + λ_cls·BCE(D_cls(x), c′) over the
          real images x (before ∪ after) with original labels c′ and targets c, G(x, c)
          detached; logs ``D_real``, ``D_fake``, ``D_cls``, ``D_gp``, ``D``.
        - ``G``: −mean D_src(G(x, c)) + λ_cls·BCE(D_cls(G(x, c)), c) + λ_rec·‖x − G(G(x, c), c′)‖₁
          (+ paired_l1·‖G(before, procedures) − after‖₁) + the output head's regularisers on
          G(x, c) (`OutputHead.regularizer`, logged unweighted), D frozen; logs ``G_fake``,
          ``G_cls``, ``G_rec`` (``G_l1``) and ``G``.
        """
        o = self.options
        real, original, target = self.domains(batch)
        if phase == "D":
            if "G" in ctx.due:
                # The G phase follows in this step: keep the graph and reuse the images there.
                fake, ctx["aux"] = self._translate(nets, real, target)
                ctx["fake"] = fake
            else:
                with torch.no_grad():
                    fake = self._translate(nets, real, target)[0]
            # D holds no batch statistics, so real and translated images share one pass.
            scores, logits = nets["D"](torch.cat([real, fake.detach()], dim=0))
            scores = scores.float()
            n = real.shape[0]
            loss_real = -scores[:n].mean()
            loss_fake = scores[n:].mean()
            loss_cls = classification_loss(logits[:n], original)
            penalty = wgan_gradient_penalty(nets["D"], real, fake, scaler=ctx.scaler)
            total = loss_real + loss_fake + o.lambda_cls * loss_cls + o.lambda_gp * penalty
            return total, {"D_real": loss_real.item(), "D_fake": loss_fake.item(), "D_cls": loss_cls.item(),
                           "D_gp": penalty.item(), "D": total.item()}
        if phase == "G":
            fake, aux = ctx.pop("fake", None), ctx.pop("aux", {})
            if fake is None:
                fake, aux = self._translate(nets, real, target)
            scores, logits = nets["D"](fake)
            loss_fake = -scores.float().mean()
            loss_cls = classification_loss(logits, target)
            # Reconstruction back to the original label (eq. 4).
            loss_rec = F.l1_loss(self._translate(nets, fake, original)[0].float(), real.float())
            head_loss, head_logs = self.head.regularizer(aux)
            total = loss_fake + o.lambda_cls * loss_cls + o.lambda_rec * loss_rec + head_loss
            logs = {"G_fake": loss_fake.item(), "G_cls": loss_cls.item(), "G_rec": loss_rec.item(), **head_logs}
            if o.paired_l1 > 0:
                # The first half of `fake` is G(before, procedures), the pair's after photo's twin.
                half = batch["before"].shape[0]
                loss_l1 = F.l1_loss(fake[:half].float(), batch["after"].float())
                total = total + o.paired_l1 * loss_l1
                logs["G_l1"] = loss_l1.item()
            logs["G"] = total.item()
            return total, logs
        raise ValueError(f"stargan has phases D and G; got {phase!r}")

    # -- inference ----------------------------------------------------------------------
    def generator_output(self, nets: Networks, before: torch.Tensor, request: Request | None) -> torch.Tensor:
        """G's raw output for before (B, 3, H, W) in [-1, 1], H and W divisible by 4, conditioned
        on the target label ``request.procedures`` ((B, P) or (1, P) strengths in [0, 1] over
        `self.procedures`).

        The intensity α scales the change from the before photo in every output mode, in the
        head (in direct mode α·drawn + (1 − α)·before), so α = 0 returns the before photo.
        (Scaling the labels instead, as svai once did, makes the generator redraw the whole
        face even at α = 0.)
        """
        check_before(before, multiple=4)
        return nets["G"](before, self.requested_procedures(request, before))

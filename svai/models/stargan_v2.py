"""StarGAN v2: diverse translation between domains with per-domain style codes (Choi et al.
2020, "StarGAN v2: Diverse Image Synthesis for Multiple Domains"; reference code
clovaai/stargan-v2).

Two domains: 0 = "before" (no surgery), 1 = "after". Every step reads both images of each
pair as real samples of their domain (``batch["before"]`` in domain 0, ``batch["after"]`` in
domain 1) and translates each to the other domain. No loss compares a before photo with
its own after photo, so the family does not exploit the alignment of the pairs.

Networks (Sec. 2.1 and appendix; widths as in the reference ``core/model.py``):

- generator G(x, s): a pre-activation residual encoder (instance norm) down to 16×16, two
  bottleneck blocks, and a mirrored decoder of AdaIN residual blocks driven by the style
  code s. The reference's optional high-pass "wing" branch for faces (a pretrained landmark
  network, ``w_hpf``) is left out.
- mapping network F_y(z): a latent z to one style code per domain (shared then per-domain
  MLP heads).
- style encoder E_y(x): an image to one style code per domain.
- discriminator D_y(x): one real/fake logit per domain (multi-task).
- exponential moving averages of G, F and E (β = 0.999), which inference uses.

Losses (Sec. 2.2): non-saturating adversarial (eq. 1) with the R1 penalty on real images
(Mescheder et al. 2018), style reconstruction (eq. 2), diversity sensitivity (eq. 3, its
weight decayed linearly to 0) and cycle consistency (eq. 4), combined as in eq. 5.

The options are their own dataclass rather than an extension of `GanOptions`: the
architecture fixes the normalisation (instance norm in the encoder, AdaIN in the decoder,
none in D and E), the discriminator's depth follows the image size, the adversarial loss is
the non-saturating one only, weights are He-initialised and the learning rate is constant,
so GanOptions' norm, n_layers_d, dropout, gan_mode, attention, init_gain and
lr_decay_fraction would be options that do nothing. The widths keep the GAN families' names
``ngf`` / ``ndf``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from svai.data.layout import PROCEDURES
from svai.errors import SvaiError
from svai.models.base import Batch, LossResult, ModelFamily, Networks, Phase, Request, StepContext
from svai.models.layers import check_before
from svai.models.options import check_at_least, check_in_unit_interval, check_positive
from svai.models.penalties import r1_penalty
from svai.models.registry import register_family

NUM_DOMAINS = 2
BEFORE, AFTER = 0, 1
TRAINED: tuple[str, ...] = ("G", "mapping", "style_encoder", "D")
# Live network -> its moving average (the reference's ``nets_ema``).
EMA_OF: dict[str, str] = {"G": "G_ema", "mapping": "mapping_ema", "style_encoder": "style_encoder_ema"}
# Latent draws at inference use this seed when the request brings no generator, so an
# unseeded call is repeatable.
DEFAULT_LATENT_SEED = 0


@dataclass
class StarGANv2Options:
    """Options of `stargan-v2`; defaults are the reference's (``main.py``) apart from the
    high-pass branch, which this family does not have.

    - ngf: width of the generator's first layer, >= 1; None follows the reference rule
      2^14 / image size (64 at 256 px, 512 at 32 px).
    - ndf: width of the style encoder's and discriminator's first layer (the two share one
      backbone layout), >= 1; None follows the same rule.
    - max_conv_dim: cap on every convolution width (512), >= 1.
    - latent_dim: size of the mapping network's input z ~ N(0, I) (16), >= 1.
    - style_dim: size of a style code s (64), >= 1.
    - hidden_dim: width of the mapping network's hidden layers (512), >= 1.
    - lambda_reg: weight of the R1 penalty on real images (1), >= 0.
    - lambda_sty: weight of the style reconstruction loss, eq. 2 (1), >= 0.
    - lambda_ds: initial weight of the diversity-sensitive loss, eq. 3 (1), >= 0.
    - ds_decay_steps: steps over which lambda_ds decays linearly to 0 (100000, the
      reference's ds_iter), >= 1.
    - lambda_cyc: weight of the cycle-consistency loss, eq. 4 (1), >= 0.
    - lr: Adam learning rate of G, E and D (1e-4), > 0.
    - mapping_lr: Adam learning rate of the mapping network (1e-6, the reference's f_lr), > 0.
    - beta1, beta2: Adam β (0, 0.99), each in [0, 1).
    - weight_decay: Adam's L2 weight decay on every network (1e-4), >= 0.
    - ema_beta: decay of the moving averages (0.999), in [0, 1].
    """

    ngf: int | None = None
    ndf: int | None = None
    max_conv_dim: int = 512
    latent_dim: int = 16
    style_dim: int = 64
    hidden_dim: int = 512
    lambda_reg: float = 1.0
    lambda_sty: float = 1.0
    lambda_ds: float = 1.0
    ds_decay_steps: int = 100_000
    lambda_cyc: float = 1.0
    lr: float = 1e-4
    mapping_lr: float = 1e-6
    beta1: float = 0.0
    beta2: float = 0.99
    weight_decay: float = 1e-4
    ema_beta: float = 0.999

    def __post_init__(self) -> None:
        for key in ("ngf", "ndf"):
            if getattr(self, key) is not None:
                check_at_least(key, getattr(self, key), 1)
        for key in ("max_conv_dim", "latent_dim", "style_dim", "hidden_dim", "ds_decay_steps"):
            check_at_least(key, getattr(self, key), 1)
        for key in ("lambda_reg", "lambda_sty", "lambda_ds", "lambda_cyc", "weight_decay"):
            check_at_least(key, getattr(self, key), 0)
        check_positive("lr", self.lr)
        check_positive("mapping_lr", self.mapping_lr)
        # β = 1 would freeze Adam's moment estimates at their initial zeros.
        check_in_unit_interval("beta1", self.beta1, closed=False)
        check_in_unit_interval("beta2", self.beta2, closed=False)
        check_in_unit_interval("ema_beta", self.ema_beta, closed=True)


# -- building blocks ------------------------------------------------------------------------
class PreActResBlock(nn.Module):
    """Pre-activation residual block (He et al. 2016, "Identity Mappings"), optionally with
    affine instance norm and a 2× average-pool downsampling, as in the StarGAN v2 encoder,
    style encoder and discriminator.

    The sum of shortcut and residual is divided by √2 so the output keeps unit variance.
    x: (B, C_in, H, W) -> (B, C_out, H, W), or (B, C_out, H/2, W/2) when downsampling.
    """

    def __init__(self, dim_in: int, dim_out: int, normalize: bool = False, downsample: bool = False) -> None:
        super().__init__()
        self.downsample = downsample
        self.conv1 = nn.Conv2d(dim_in, dim_in, 3, 1, 1)
        self.conv2 = nn.Conv2d(dim_in, dim_out, 3, 1, 1)
        self.norm1 = nn.InstanceNorm2d(dim_in, affine=True) if normalize else nn.Identity()
        self.norm2 = nn.InstanceNorm2d(dim_in, affine=True) if normalize else nn.Identity()
        # A learned 1×1 projection only where the width changes (bias-free, as in the reference).
        self.shortcut = nn.Conv2d(dim_in, dim_out, 1, 1, 0, bias=False) if dim_in != dim_out else nn.Identity()
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.shortcut(x)
        h = self.conv1(self.act(self.norm1(x)))
        if self.downsample:
            skip = F.avg_pool2d(skip, 2)
            h = F.avg_pool2d(h, 2)
        h = self.conv2(self.act(self.norm2(h)))
        return (skip + h) / math.sqrt(2)


class AdaIN(nn.Module):
    """Adaptive instance normalisation (Huang & Belongie 2017): ``(1 + γ(s))·IN(x) + β(s)``
    with γ, β an affine map of the style code (the 1 + γ form starts near the identity).

    x: (B, C, H, W), s: (B, style_dim) -> (B, C, H, W).
    """

    def __init__(self, style_dim: int, channels: int) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.fc = nn.Linear(style_dim, 2 * channels)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.fc(s)[:, :, None, None].chunk(2, dim=1)
        return (1 + gamma) * self.norm(x) + beta


class AdaINResBlock(nn.Module):
    """Decoder residual block: AdaIN → LeakyReLU → (2× nearest upsampling) → 3×3 conv, twice,
    plus a (upsampled, projected) shortcut, summed and divided by √2.

    x: (B, C_in, H, W), s: (B, style_dim) -> (B, C_out, H, W), or (B, C_out, 2H, 2W) when
    upsampling.
    """

    def __init__(self, dim_in: int, dim_out: int, style_dim: int, upsample: bool = False) -> None:
        super().__init__()
        self.upsample = upsample
        self.conv1 = nn.Conv2d(dim_in, dim_out, 3, 1, 1)
        self.conv2 = nn.Conv2d(dim_out, dim_out, 3, 1, 1)
        self.norm1 = AdaIN(style_dim, dim_in)
        self.norm2 = AdaIN(style_dim, dim_out)
        self.shortcut = nn.Conv2d(dim_in, dim_out, 1, 1, 0, bias=False) if dim_in != dim_out else nn.Identity()
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        h = self.act(self.norm1(x, s))
        if self.upsample:
            h = F.interpolate(h, scale_factor=2, mode="nearest")
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        h = self.conv2(self.act(self.norm2(self.conv1(h), s)))
        return (self.shortcut(x) + h) / math.sqrt(2)


def _pick_domain(per_domain: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
    """per_domain: (B, D, ...) and domain: (B,) long in [0, D) -> (B, ...), row b's domain[b]."""
    return per_domain[torch.arange(per_domain.shape[0], device=per_domain.device), domain]


def default_width(image_size: int) -> int:
    """The reference's first-layer width, 2^14 / image size (64 at 256 px)."""
    return 2 ** 14 // image_size


# -- networks -------------------------------------------------------------------------------
class StyleGenerator(nn.Module):
    """The StarGAN v2 generator without the high-pass branch.

    A 3×3 stem, log2(S) − 4 downsampling residual blocks (widths doubling up to
    `max_conv_dim`) to a 16×16 bottleneck, two bottleneck blocks, then the mirrored decoder of
    AdaIN residual blocks and a norm → LeakyReLU → 1×1 conv head to RGB.

    x: (B, 3, S, S) in [-1, 1] with S = `image_size` (or any multiple of 2^(log2(S) − 4)),
    s: (B, style_dim) -> (B, 3, S, S), unbounded (the reference has no output squashing).
    """

    def __init__(self, image_size: int, dim_in: int, style_dim: int, max_conv_dim: int) -> None:
        super().__init__()
        self.from_rgb = nn.Conv2d(3, dim_in, 3, 1, 1)
        self.encode = nn.ModuleList()
        self.decode = nn.ModuleList()
        width = dim_in
        widths = []
        for _ in range(int(math.log2(image_size)) - 4):
            out = min(width * 2, max_conv_dim)
            widths.append((width, out))
            self.encode.append(PreActResBlock(width, out, normalize=True, downsample=True))
            width = out
        for _ in range(2):
            self.encode.append(PreActResBlock(width, width, normalize=True))
        # The decoder mirrors the encoder: two bottleneck blocks, then one upsampling block
        # per downsampling, deepest first.
        for _ in range(2):
            self.decode.append(AdaINResBlock(width, width, style_dim))
        for inner, outer in reversed(widths):
            self.decode.append(AdaINResBlock(outer, inner, style_dim, upsample=True))
        self.to_rgb = nn.Sequential(nn.InstanceNorm2d(dim_in, affine=True), nn.LeakyReLU(0.2), nn.Conv2d(dim_in, 3, 1))

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        h = self.from_rgb(x)
        for block in self.encode:
            h = block(h)
        for block in self.decode:
            h = block(h, s)
        return self.to_rgb(h)


class MappingNetwork(nn.Module):
    """z -> per-domain style: four shared linear layers, then per domain three hidden layers
    and a projection to `style_dim` (ReLU between layers), as in the reference.

    z: (B, latent_dim), domain: (B,) long -> s: (B, style_dim).
    """

    def __init__(self, latent_dim: int, style_dim: int, hidden_dim: int, num_domains: int = NUM_DOMAINS) -> None:
        super().__init__()
        shared: list[nn.Module] = [nn.Linear(latent_dim, hidden_dim), nn.ReLU()]
        for _ in range(3):
            shared += [nn.Linear(hidden_dim, hidden_dim), nn.ReLU()]
        self.shared = nn.Sequential(*shared)
        self.unshared = nn.ModuleList(
            nn.Sequential(
                *[layer for _ in range(3) for layer in (nn.Linear(hidden_dim, hidden_dim), nn.ReLU())],
                nn.Linear(hidden_dim, style_dim),
            )
            for _ in range(num_domains)
        )

    def forward(self, z: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        h = self.shared(z)
        return _pick_domain(torch.stack([head(h) for head in self.unshared], dim=1), domain)


def _downsampling_trunk(image_size: int, dim_in: int, max_conv_dim: int) -> tuple[nn.Sequential, int]:
    """Backbone of the style encoder and discriminator: 3×3 stem, log2(S) − 2 downsampling
    residual blocks to 4×4, LeakyReLU, a 4×4 valid conv to 1×1, LeakyReLU.
    (B, 3, S, S) -> (B, width, 1, 1); returns the module and `width`."""
    layers: list[nn.Module] = [nn.Conv2d(3, dim_in, 3, 1, 1)]
    width = dim_in
    for _ in range(int(math.log2(image_size)) - 2):
        out = min(width * 2, max_conv_dim)
        layers.append(PreActResBlock(width, out, downsample=True))
        width = out
    layers += [nn.LeakyReLU(0.2), nn.Conv2d(width, width, 4, 1, 0), nn.LeakyReLU(0.2)]
    return nn.Sequential(*layers), width


class StyleEncoder(nn.Module):
    """Image -> per-domain style: the downsampling trunk, then one linear head per domain.

    x: (B, 3, S, S) in [-1, 1] with S = `image_size`, domain: (B,) long -> s: (B, style_dim).
    """

    def __init__(self, image_size: int, dim_in: int, style_dim: int, max_conv_dim: int,
                 num_domains: int = NUM_DOMAINS) -> None:
        super().__init__()
        self.shared, width = _downsampling_trunk(image_size, dim_in, max_conv_dim)
        self.unshared = nn.ModuleList(nn.Linear(width, style_dim) for _ in range(num_domains))

    def forward(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        h = self.shared(x).flatten(1)
        return _pick_domain(torch.stack([head(h) for head in self.unshared], dim=1), domain)


class MultiTaskDiscriminator(nn.Module):
    """Real/fake logits, one output per domain (Sec. 2.1): the downsampling trunk and a 1×1
    conv to `num_domains` channels; each image is judged by its domain's output.

    x: (B, 3, S, S) in [-1, 1] with S = `image_size`, domain: (B,) long -> logits (B,).
    """

    def __init__(self, image_size: int, dim_in: int, max_conv_dim: int, num_domains: int = NUM_DOMAINS) -> None:
        super().__init__()
        trunk, width = _downsampling_trunk(image_size, dim_in, max_conv_dim)
        self.main = nn.Sequential(*trunk, nn.Conv2d(width, num_domains, 1, 1, 0))

    def forward(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        return _pick_domain(self.main(x).flatten(1), domain)


def he_init(module: nn.Module) -> None:
    """The reference initialisation: conv and linear weights Kaiming-normal (fan in, ReLU
    gain), biases 0; instance-norm scales keep their 1 and shifts their 0. Draws from torch's
    global RNG, so a seed fixes it."""
    for sub in module.modules():
        if isinstance(sub, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(sub.weight, mode="fan_in", nonlinearity="relu")
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)


def nonsaturating_loss(logits: torch.Tensor, target_is_real: bool) -> torch.Tensor:
    """Eq. 1 as the reference trains it: BCE on logits against all-real or all-fake targets
    (the non-saturating form for G). logits: (B,) unbounded -> scalar float32."""
    logits = logits.float()
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, 1.0 if target_is_real else 0.0))


# -- the family -----------------------------------------------------------------------------
@register_family
class StarGANv2(ModelFamily):
    """Networks: ``G``, ``mapping`` (F), ``style_encoder`` (E), ``D``, and the moving averages
    ``G_ema``, ``mapping_ema``, ``style_encoder_ema`` (state modules, never trained).

    Phases per step, in the reference order: ``D_latent`` and ``D_ref`` (D against fakes made
    with a mapped latent / a reference's style; ``D_ref`` steps ``D_latent``'s optimiser), then
    ``G_latent`` (G, F and E) and ``G_ref`` (G only, sharing ``G_latent``'s optimiser). The
    reference keeps one Adam per network; one shared Adam per pair of phases is the same
    thing, because Adam keeps its moments per parameter and skips parameters without a
    gradient (F and E take one update per step, G two).
    """

    name = "stargan-v2"
    Options = StarGANv2Options
    paired = True
    uses = frozenset({"intensity", "reference", "generator"})
    description = "StarGAN v2: style-code generator + mapping net + style encoder + multi-task D, before/after as two domains"

    def __init__(self, options: StarGANv2Options, image_size: int, procedures: tuple[str, ...] = PROCEDURES) -> None:
        super().__init__(options, image_size, procedures)
        if image_size < 16 or image_size & (image_size - 1):
            raise SvaiError(
                f"stargan-v2 needs a power-of-two image size of at least 16 (its discriminator and style "
                f"encoder downsample to 4×4); got {image_size} (set data.image_size accordingly)"
            )
        o = options
        self.ngf = o.ngf if o.ngf is not None else default_width(image_size)
        self.ndf = o.ndf if o.ndf is not None else default_width(image_size)

    # -- building -----------------------------------------------------------------------
    def _network(self, name: str) -> nn.Module:
        o, size = self.options, self.image_size
        if name == "G":
            return StyleGenerator(size, self.ngf, o.style_dim, o.max_conv_dim)
        if name == "mapping":
            return MappingNetwork(o.latent_dim, o.style_dim, o.hidden_dim)
        if name == "style_encoder":
            return StyleEncoder(size, self.ndf, o.style_dim, o.max_conv_dim)
        if name == "D":
            return MultiTaskDiscriminator(size, self.ndf, o.max_conv_dim)
        raise KeyError(name)

    def build(self) -> Networks:
        # Built and initialised in a fixed order from the global RNG, so one seed gives one set
        # of weights.
        nets: Networks = {name: self._network(name) for name in TRAINED}
        for name in TRAINED:
            he_init(nets[name])
        for live, ema in EMA_OF.items():
            # The averages start as exact copies of the initialised networks (the reference
            # copies before initialising, so its averages start from PyTorch's defaults).
            nets[ema] = copy.deepcopy(nets[live]).requires_grad_(False)
        return nets

    def inference_networks(self) -> tuple[str, ...]:
        return tuple(EMA_OF.values())

    # -- training -----------------------------------------------------------------------
    def phases(self) -> list[Phase]:
        o = self.options
        betas = (o.beta1, o.beta2)
        return [
            Phase("D_latent", ("D",), o.lr, betas, weight_decay=o.weight_decay),
            Phase("D_ref", ("D",), o.lr, betas, shares="D_latent"),
            Phase("G_latent", ("G", "mapping", "style_encoder"), o.lr, betas, weight_decay=o.weight_decay,
                  lr_overrides=(("mapping", o.mapping_lr),)),
            Phase("G_ref", ("G",), o.lr, betas, shares="G_latent"),
        ]

    def lambda_ds(self, step: int) -> float:
        """Weight of the diversity-sensitive loss at `step`: λ_ds decayed linearly to 0 over
        `ds_decay_steps` steps, then 0 (the reference subtracts λ_ds / ds_iter per step)."""
        o = self.options
        return o.lambda_ds * max(0.0, 1.0 - step / o.ds_decay_steps)

    def _inputs(self, batch: Batch, ctx: StepContext) -> StepContext:
        """The step's sources, targets, references and latents, made once and shared by its
        four phases (the reference also reuses one draw for its D and G updates).

        Sources: the before photos (domain 0) and the after photos (domain 1), (2B, 3, H, W);
        each is translated to the other domain. References of a source are real photos of
        its target domain from other pairs of the batch: the target-domain images shifted by
        one (``ref``) and by two (``ref2``) positions, so with 3 or more pairs per batch they
        never show the source's own subject. Latents: two N(0, I) draws, (2B, latent_dim),
        from torch's global RNG (seeded and restored with the run).
        """
        if "x_real" not in ctx:
            before, after = batch["before"], batch["after"]
            n = before.shape[0]
            domain = torch.cat([torch.full((n,), BEFORE), torch.full((n,), AFTER)]).to(before.device)
            ctx["x_real"] = torch.cat([before, after])
            ctx["y_org"] = domain
            ctx["y_trg"] = 1 - domain
            ctx["ref"] = torch.cat([after.roll(1, 0), before.roll(1, 0)])
            ctx["ref2"] = torch.cat([after.roll(2, 0), before.roll(2, 0)])
            shape = (2 * n, self.options.latent_dim)
            ctx["z"] = torch.randn(shape, device=before.device)
            ctx["z2"] = torch.randn(shape, device=before.device)
        return ctx

    def _target_style(self, nets: Networks, inputs: dict[str, torch.Tensor], guide: str, second: bool = False) -> torch.Tensor:
        """Target styles (2B, style_dim): F(z) for ``latent`` guidance, E(reference) for ``ref``."""
        if guide == "latent":
            return nets["mapping"](inputs["z2" if second else "z"], inputs["y_trg"])
        return nets["style_encoder"](inputs["ref2" if second else "ref"], inputs["y_trg"])

    def loss(self, phase: str, nets: Networks, batch: Batch, ctx: StepContext, step: int) -> LossResult:
        """Losses of eq. 5, one phase per reference update. before, after: (B, 3, H, W) in [-1, 1].

        - ``D_latent`` / ``D_ref``: BCE(D_y(x) → real) + BCE(D_ỹ(G(x, s̃)) → fake)
          + λ_reg·R1, with s̃ = F_ỹ(z) / E_ỹ(x_ref) and R1 = ½·E‖∇ₓD_y(x)‖² on the real
          sources; logs ``D_<guide>_real``, ``_fake``, ``_reg`` and ``D_<guide>``.
        - ``G_latent`` / ``G_ref``: BCE(D_ỹ(G(x, s̃)) → real) + λ_sty·‖s̃ − E_ỹ(G(x, s̃))‖₁
          − λ_ds(step)·‖G(x, s̃) − G(x, s̃₂)‖₁ + λ_cyc·‖x − G(G(x, s̃), E_y(x))‖₁ (means);
          logs ``G_<guide>_adv``, ``_sty``, ``_ds``, ``_cyc``, ``G_<guide>`` and ``lambda_ds``.
        """
        kind, _, guide = phase.partition("_")
        if kind not in ("D", "G") or guide not in ("latent", "ref"):
            raise ValueError(f"stargan-v2 has phases D_latent, D_ref, G_latent and G_ref; got {phase!r}")
        o = self.options
        inputs = self._inputs(batch, ctx)
        x_real, y_org, y_trg = inputs["x_real"], inputs["y_org"], inputs["y_trg"]
        if kind == "D":
            real = x_real.detach().requires_grad_(True)
            scores = nets["D"](real, y_org)
            loss_real = nonsaturating_loss(scores, True)
            # R1 (Mescheder et al. 2018): penalise D's gradient on real data only.
            reg = r1_penalty(scores, real, ctx.scaler)
            with torch.no_grad():
                fake = nets["G"](x_real, self._target_style(nets, inputs, guide))
            loss_fake = nonsaturating_loss(nets["D"](fake, y_trg), False)
            total = loss_real + loss_fake + o.lambda_reg * reg
            prefix = f"D_{guide}"
            return total, {f"{prefix}_real": loss_real.item(), f"{prefix}_fake": loss_fake.item(),
                           f"{prefix}_reg": reg.item(), prefix: total.item()}

        # Generator phases: D judges but does not learn. The reference-guided update trains G
        # alone (the reference steps only G's optimiser there), so F and E compute no gradients.
        s_trg = self._target_style(nets, inputs, guide)
        fake = nets["G"](x_real, s_trg)
        adv = nonsaturating_loss(nets["D"](fake, y_trg), True)
        # Eq. 2: the style encoder must recover the style the image was made with.
        sty = (nets["style_encoder"](fake, y_trg).float() - s_trg.float()).abs().mean()
        # Eq. 3: a second style must give a different image; the second image is a constant
        # (the reference detaches it), so only the first carries gradient.
        with torch.no_grad():
            fake2 = nets["G"](x_real, self._target_style(nets, inputs, guide, second=True))
        ds = (fake.float() - fake2.float()).abs().mean()
        # Eq. 4: translating back with the source's own style must give the source.
        s_org = nets["style_encoder"](x_real, y_org)
        cyc = (nets["G"](fake, s_org).float() - x_real.float()).abs().mean()
        weight_ds = self.lambda_ds(step)
        total = adv + o.lambda_sty * sty - weight_ds * ds + o.lambda_cyc * cyc
        prefix = f"G_{guide}"
        return total, {f"{prefix}_adv": adv.item(), f"{prefix}_sty": sty.item(), f"{prefix}_ds": ds.item(),
                       f"{prefix}_cyc": cyc.item(), prefix: total.item(), "lambda_ds": weight_ds}

    def after_step(self, nets: Networks, step: int) -> None:
        """Move each average towards its network: ema ← β·ema + (1 − β)·live (the reference's
        ``moving_average``, every step, parameters only: the networks have no buffers)."""
        beta = self.options.ema_beta
        with torch.no_grad():
            for live, ema in EMA_OF.items():
                for average, parameter in zip(nets[ema].parameters(), nets[live].parameters()):
                    average.mul_(beta).add_(parameter.detach() * (1 - beta))

    # -- inference ----------------------------------------------------------------------
    @torch.no_grad()
    def translate(self, nets: Networks, before: torch.Tensor, request: Request | None = None) -> torch.Tensor:
        """before: (B, 3, S, S) in [-1, 1], S the configured image size -> after, same shape,
        clamped to [-1, 1].

        Uses the moving averages when `nets` holds them, the live networks otherwise. The
        target style is E_after(reference) when ``request.reference`` (B or 1, 3, S, S) in
        [-1, 1] is given, else F_after(z) with z ~ N(0, I) drawn from ``request.generator``
        (a fixed seed when None, so repeated calls agree). ``request.intensity`` α in [0, 1]
        (default 1) blends it with the before photo's own style: s = (1 − α)·E_before(x) + α·s_trg.
        """
        request = request or Request()
        size = self.image_size
        check_before(before, size=size)
        intensity = self.intensity(request)
        alpha = 1.0 if intensity is None else intensity
        G, mapping, encoder = (nets.get(EMA_OF[name], nets.get(name)) for name in ("G", "mapping", "style_encoder"))
        if G is None or mapping is None or encoder is None:
            raise ValueError(f"stargan-v2 translate needs {', '.join(EMA_OF.values())}; got {sorted(nets)}")
        n = before.shape[0]
        source = torch.full((n,), BEFORE, dtype=torch.long, device=before.device)
        target = torch.full((n,), AFTER, dtype=torch.long, device=before.device)
        if request.reference is not None:
            reference = request.reference.to(before.device, before.dtype)
            if reference.dim() != 4 or tuple(reference.shape[1:]) != (3, size, size) or reference.shape[0] not in (1, n):
                raise SvaiError(
                    f"--reference: expected images (1 or {n}, 3, {size}, {size}); got shape {tuple(reference.shape)}")
            s_trg = encoder(reference.expand(n, -1, -1, -1), target)
        else:
            generator = request.generator or torch.Generator().manual_seed(DEFAULT_LATENT_SEED)
            z = torch.randn((n, self.options.latent_dim), generator=generator, device=generator.device)
            s_trg = mapping(z.to(before.device), target)
        style = s_trg if alpha == 1.0 else torch.lerp(encoder(before, source), s_trg, alpha)
        return G(before, style).clamp(-1, 1)


"""Autoencoders from the before photo to the after photo: ``ae``, ``vae``, ``vae-perceptual``.

All three share one convolutional encoder–decoder with a vector bottleneck, in the DCGAN
layout (Radford et al. 2016): stride-2 4×4 convolutions halve the image down to a 4×4 map
at 32–256 px (LeakyReLU 0.2, norm from the second layer on), a linear layer to the code, a
linear layer back to the map and mirrored stride-2 transposed convolutions (ReLU) up to the
image. There are no skip connections: everything the decoder knows about the photo passes
through the code, which is the point of these baselines (and why they lose the patient's
identity in "direct" output; the other output modes of `svai.models.heads` hand the before
photo back to the head instead).

- ``ae``: a deterministic code; the decoder's after image is fitted with L1 (or L2) to the
  true after photo (an autoencoder in the sense of Hinton & Salakhutdinov 2006, trained
  from before to after rather than to its own input).
- ``vae``: the encoder sees the before photo and returns a diagonal Gaussian q(z | before)
  (Kingma & Welling 2014); the decoder maps a sample z to the after photo. The loss is the
  reconstruction term plus β·KL(q ‖ N(0, I)), with a linear KL warm-up (Bowman et al. 2016)
  and an optional per-dimension floor, "free bits" (Kingma et al. 2016). The log reports the
  number of active latent dimensions (Burda et al. 2016), which exposes posterior collapse.
  Generation decodes the posterior mean, or a posterior sample with ``--seed``.
- ``vae-perceptual``: ``vae`` plus a perceptual loss (Johnson et al. 2016; as in the
  feature-consistent VAE of Hou et al. 2017) between VGG-16 features of the image decoded
  from the mean code and of the true after photo. The VGG is pretrained and frozen: loaded
  from the weights lookup, never trained, never written into checkpoints.

Losses and the KL are computed in float32 whatever the autocast state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from svai.data.layout import PROCEDURES
from svai.errors import SvaiError
from svai.models.base import GeneratorFamily, LossResult, Networks, Phase, Request, StepContext
from svai.models.gan_training import linear_decay_factor
from svai.models.layers import check_before, conv_bias, init_weights, norm_layer
from svai.models.options import Norm, OutputOptions, check_at_least, check_in_unit_interval, check_positive
from svai.models.registry import register_family
from svai.models.vgg import VggFeatures, layer_names, perceptual_loss

Reconstruction = Literal["l1", "l2"]
# (z to decode, the code's mean, the weighted latent loss, logs): see `Autoencoder.latent_terms`.
LatentTerms = tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, float]]

# The image side must halve evenly this many times at least (data.image_size's own rule).
SIZE_MULTIPLE = 16
# The automatic depth halves the image while the map stays at least this wide.
MIN_BOTTLENECK = 4
# Widths double per level up to this multiple of ngf (as in the pix2pix/DCGAN networks).
MAX_WIDTH_FACTOR = 8
# Burda et al. 2016: a latent dimension is active when Var_x(E_q[z | x]) exceeds this.
ACTIVE_UNIT_THRESHOLD = 0.01
# Bounds of the encoder's log-variance: exp() of it stays finite and nonzero in float32.
LOGVAR_RANGE = (-30.0, 20.0)
VGG_ARCH = "vgg16"


# -- options ----------------------------------------------------------------------------------
@dataclass
class AutoencoderOptions(OutputOptions):
    """Options of ``ae`` (and the base of the VAE options); each is a key under ``model:``.

    - ngf: width of the encoder's first layer (and the decoder's last hidden layer), >= 1;
      widths double per level up to 8·ngf.
    - depth: stride-2 levels of the encoder (and of the decoder), >= 1; None follows the image
      size down to a 4×4 map (3 at 32 px, 4 at 64, 6 at 256). data.image_size must be
      divisible by 2^depth.
    - latent_dim: size of the code (the vector bottleneck), >= 1.
    - norm: "batch" | "instance" | "none", after every convolution but the encoder's first
      and the decoder's last.
    - reconstruction: "l1" | "l2": mean absolute or mean squared error to the after photo.
    - lr, beta1, beta2: Adam settings (lr 2e-4, β = (0.5, 0.999) as in DCGAN).
    - lr_decay_fraction: last fraction of the steps, in [0, 1], over which the learning rate
      decays linearly to 0 (0: constant).
    - init_gain: standard deviation of the normal weight initialisation (DCGAN's 0.02).
    - output and its settings: see `OutputOptions`; "direct" draws the after image from the
      code alone.
    """

    ngf: int = 32
    depth: int | None = None
    latent_dim: int = 256
    norm: Norm = "batch"
    reconstruction: Reconstruction = "l1"
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    lr_decay_fraction: float = 0.0
    init_gain: float = 0.02

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("ngf", "latent_dim"):
            check_at_least(key, getattr(self, key), 1)
        if self.depth is not None:
            check_at_least("depth", self.depth, 1)
        check_positive("lr", self.lr)
        # β = 1 would freeze Adam's moment estimates at their initial zeros.
        check_in_unit_interval("beta1", self.beta1, closed=False)
        check_in_unit_interval("beta2", self.beta2, closed=False)
        check_in_unit_interval("lr_decay_fraction", self.lr_decay_fraction, closed=True)
        check_positive("init_gain", self.init_gain)


@dataclass
class VaeOptions(AutoencoderOptions):
    """Options of ``vae``: those of `AutoencoderOptions`, plus

    - kl_weight: β, the weight of KL(q(z | before) ‖ N(0, I)) in nats (summed over the
      latent dimensions, averaged over the batch) against the reconstruction term (averaged
      over pixels), >= 0. 1e-3 is the ratio of BicycleGAN's cVAE-GAN weights (λ_KL = 0.01
      on the summed KL, λ_L1 = 10 on the mean L1; Zhu et al. 2017).
    - kl_warmup_steps: the KL weight ramps linearly from 0 at step 0 to kl_weight at this
      step (Bowman et al. 2016), >= 0; 0 applies it in full from the start.
    - free_bits: λ of Kingma et al. 2016, eq. 15, in nats, >= 0: each latent dimension's KL,
      averaged over the batch, counts as at least λ, so the loss stops pushing a dimension
      towards the prior once it is below λ; 0 turns it off.
    """

    kl_weight: float = 1e-3
    kl_warmup_steps: int = 0
    free_bits: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("kl_weight", "kl_warmup_steps", "free_bits"):
            check_at_least(key, getattr(self, key), 0)


DEFAULT_PERCEPTUAL_LAYERS: tuple[str, ...] = ("relu1_2", "relu2_2", "relu3_3")


@dataclass
class VaePerceptualOptions(VaeOptions):
    """Options of ``vae-perceptual``: those of `VaeOptions`, plus

    - perceptual_weight: weight of the perceptual term, > 0. It is logged unweighted as
      ``perceptual``; compare it with ``recon`` to rebalance.
    - perceptual_layers: VGG-16 layers compared (names as in `svai.models.vgg`:
      ``relu<block>_<i>``, ``conv…``, ``pool…``); by default Johnson et al.'s relu1_2,
      relu2_2, relu3_3. The VGG is cut after the deepest one.
    - perceptual_layer_weights: one weight per layer, each >= 0; empty gives every layer 1.
    """

    perceptual_weight: float = 0.05
    perceptual_layers: tuple[str, ...] = DEFAULT_PERCEPTUAL_LAYERS
    perceptual_layer_weights: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("perceptual_weight", self.perceptual_weight)
        names = layer_names(VGG_ARCH)
        unknown = [name for name in self.perceptual_layers if name not in names]
        if unknown or not self.perceptual_layers:
            raise SvaiError(f"model.perceptual_layers: unknown {VGG_ARCH} layer "
                            f"{unknown[0] if unknown else '(none given)'!r}; choose from {', '.join(names)}")
        count, given = len(self.perceptual_layers), len(self.perceptual_layer_weights)
        if given and given != count:
            raise SvaiError(f"model.perceptual_layer_weights: expected {count} weights, one per layer of "
                            f"model.perceptual_layers, or none; got {given}")
        for index, weight in enumerate(self.perceptual_layer_weights):
            check_at_least(f"perceptual_layer_weights[{index}]", weight, 0)

    @property
    def layer_weights(self) -> dict[str, float]:
        """Layer name -> weight of its term."""
        weights = self.perceptual_layer_weights or (1.0,) * len(self.perceptual_layers)
        return dict(zip(self.perceptual_layers, weights))


# -- loss functions ---------------------------------------------------------------------------
def reconstruction_loss(fake: torch.Tensor, real: torch.Tensor, kind: Reconstruction) -> torch.Tensor:
    """Mean absolute ("l1") or squared ("l2") error in float32. fake, real: same shape -> scalar."""
    if kind == "l1":
        return F.l1_loss(fake.float(), real.float())
    return F.mse_loss(fake.float(), real.float())


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, 1)) per dimension, in nats: ½(μ² + σ² − 1 − log σ²) (Kingma &
    Welling 2014, appendix B). mean, logvar: (B, D) -> (B, D) float32, >= 0."""
    mean, logvar = mean.float(), logvar.float()
    return 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar)


def kl_term(kl: torch.Tensor, free_bits: float) -> torch.Tensor:
    """The KL the loss minimises: Σ_d max(λ, mean_batch KL_d) (free bits, Kingma et al. 2016,
    eq. 15, one group per dimension); λ = 0 gives the plain batch-mean KL summed over dims.
    kl: (B, D) per-dimension KL in nats -> scalar float32."""
    per_dim = kl.float().mean(dim=0)
    return per_dim.clamp(min=free_bits).sum() if free_bits > 0 else per_dim.sum()


def kl_warmup_factor(step: int, warmup_steps: int) -> float:
    """Multiplier of the KL weight at 0-based `step`: step / warmup_steps, capped at 1; 1 when
    there is no warm-up. In [0, 1]."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, step / warmup_steps)


def active_units(mean: torch.Tensor, threshold: float = ACTIVE_UNIT_THRESHOLD) -> int:
    """Active latent dimensions (Burda et al. 2016, Sec. 5.2): those whose posterior mean
    varies over the inputs, Var_x(E_q[z_d | x]) > threshold, the variance taken over the
    batch (population variance, divisor B). mean: (B, D) -> count in [0, D]; 0 when B = 1."""
    variance = mean.detach().float().var(dim=0, correction=0)
    return int((variance > threshold).sum().item())


# -- networks ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConvLayout:
    """The shape shared by encoder and decoder: `depth` stride-2 levels between the image
    (side bottleneck·2^depth) and a `bottleneck`² map, widths ngf, 2·ngf, … capped at 8·ngf,
    `norm` after every convolution but the encoder's first and the decoder's last."""

    ngf: int
    depth: int
    bottleneck: int
    norm: str

    @property
    def widths(self) -> list[int]:
        """Channels after each encoder level, from the image inwards."""
        return [self.ngf * min(2 ** level, MAX_WIDTH_FACTOR) for level in range(self.depth)]

    @property
    def map_size(self) -> int:
        """Numbers in the innermost map: the linear layers' side."""
        return self.widths[-1] * self.bottleneck ** 2


class ConvEncoder(nn.Module):
    """Stride-2 convolutions down to the innermost map, then a linear layer to the code.

    x: (B, 3, H, W) in [-1, 1], H = W = bottleneck·2^depth -> (B, code_size), unbounded.
    """

    def __init__(self, layout: ConvLayout, code_size: int) -> None:
        super().__init__()
        make_norm, bias = norm_layer(layout.norm), conv_bias(layout.norm)
        layers: list[nn.Module] = []
        channels = 3
        for level, width in enumerate(layout.widths):
            # DCGAN: no norm on the first layer, which sees the image itself.
            first = level == 0
            layers.append(nn.Conv2d(channels, width, 4, stride=2, padding=1, bias=first or bias))
            if not first:
                layers.append(make_norm(width))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            channels = width
        self.features = nn.Sequential(*layers)
        self.to_code = nn.Linear(layout.map_size, code_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_code(self.features(x).flatten(1))


class ConvDecoder(nn.Module):
    """A linear layer from the code to the innermost map, then stride-2 transposed
    convolutions up to the image, the last one giving `out_channels` (the output head's).

    z: (B, latent_dim) -> (B, out_channels, H, W) with H = W = bottleneck·2^depth; in [-1, 1]
    with `final_tanh`, unbounded otherwise (an output head bounds it).
    """

    def __init__(self, layout: ConvLayout, latent_dim: int, out_channels: int, final_tanh: bool) -> None:
        super().__init__()
        make_norm, bias = norm_layer(layout.norm), conv_bias(layout.norm)
        widths = layout.widths[::-1]
        self.shape = (widths[0], layout.bottleneck, layout.bottleneck)
        self.from_code = nn.Linear(latent_dim, layout.map_size)
        layers: list[nn.Module] = [nn.ReLU(inplace=True)]
        for width, narrower in zip(widths, widths[1:]):
            layers += [nn.ConvTranspose2d(width, narrower, 4, stride=2, padding=1, bias=bias),
                       make_norm(narrower), nn.ReLU(inplace=True)]
        layers.append(nn.ConvTranspose2d(widths[-1], out_channels, 4, stride=2, padding=1))
        if final_tanh:
            layers.append(nn.Tanh())
        self.layers = nn.Sequential(*layers)
        self.final_tanh = final_tanh

    @property
    def output_layer(self) -> nn.ConvTranspose2d:
        """The last transposed convolution (an output head initialises it)."""
        layer = self.layers[-2] if self.final_tanh else self.layers[-1]
        assert isinstance(layer, nn.ConvTranspose2d)
        return layer

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.layers(self.from_code(z).view(-1, *self.shape))


# -- families ---------------------------------------------------------------------------------
@register_family
class Autoencoder(GeneratorFamily):
    """``ae``. Networks: ``encoder`` (before -> code) and ``decoder`` (code -> after, through
    the output head). One phase, ``G``, trains both."""

    name = "ae"
    Options = AutoencoderOptions
    paired = True
    uses = frozenset({"intensity"})
    description = "autoencoder: conv encoder -> vector code -> conv decoder, before to after, L1 (or L2)"

    def __init__(self, options: AutoencoderOptions, image_size: int, procedures: tuple[str, ...] = PROCEDURES) -> None:
        super().__init__(options, image_size, procedures)
        self.depth = self._depth(options.depth, image_size)
        self.bottleneck = image_size // 2 ** self.depth
        self.layout = ConvLayout(options.ngf, self.depth, self.bottleneck, options.norm)

    def _depth(self, depth: int | None, size: int) -> int:
        """The encoder's levels: `depth`, checked against the image size, or the automatic one."""
        if size % SIZE_MULTIPLE:
            raise SvaiError(f"{self.name} needs data.image_size divisible by {SIZE_MULTIPLE}; got {size}")
        if depth is None:
            depth = 0
            while (size >> depth) % 2 == 0 and (size >> (depth + 1)) >= MIN_BOTTLENECK:
                depth += 1
            return depth
        if size % 2 ** depth or size // 2 ** depth < 2:
            raise SvaiError(f"{self.name} with model.depth={depth} needs data.image_size divisible by "
                            f"{2 ** depth} and at least {2 ** (depth + 1)}; got {size} (lower model.depth)")
        return depth

    # -- building -----------------------------------------------------------------------
    def code_size(self) -> int:
        """Outputs of the encoder's linear layer: the code itself."""
        return self.options.latent_dim

    def build(self) -> Networks:
        o = self.options
        encoder = ConvEncoder(self.layout, self.code_size())
        decoder = ConvDecoder(self.layout, o.latent_dim, self.head.channels, self.head.final_tanh)
        init_weights(encoder, o.init_gain)
        init_weights(decoder, o.init_gain)
        self.head.initialise(decoder.output_layer)
        return {"encoder": encoder, "decoder": decoder}

    def inference_networks(self) -> tuple[str, ...]:
        return ("encoder", "decoder")

    # -- training -----------------------------------------------------------------------
    def phases(self) -> list[Phase]:
        o = self.options
        return [Phase("G", ("encoder", "decoder"), o.lr, (o.beta1, o.beta2))]

    def lr_factor(self, step: int, total_steps: int) -> float:
        return linear_decay_factor(step, total_steps, self.options.lr_decay_fraction)

    def loss(self, phase: str, nets: Networks, batch: dict[str, torch.Tensor], ctx: StepContext,
             step: int) -> LossResult:
        """Loss of phase ``G``: reconstruction(head(decoder(z), before), after) + the latent
        terms (`latent_terms`) + the image terms (`image_terms`) + the head's regularisers.
        before, after: (B, 3, H, W) in [-1, 1]. Logs ``recon``, the other terms (unweighted)
        and ``G``, the total."""
        if phase != "G":
            raise ValueError(f"{self.name} has one phase, G; got {phase!r}")
        before, after = batch["before"], batch["after"]
        z, mean, latent_loss, logs = self.latent_terms(nets["encoder"](before), step)
        fake, aux = self.head(nets["decoder"](z), before)
        recon = reconstruction_loss(fake, after, self.options.reconstruction)
        image_loss, image_logs = self.image_terms(nets, before, after, mean)
        head_loss, head_logs = self.head.regularizer(aux)
        total = recon + latent_loss + image_loss + head_loss
        return total, {"recon": recon.item(), **logs, **image_logs, **head_logs, "G": total.item()}

    def latent_terms(self, code: torch.Tensor, step: int) -> LatentTerms:
        """code: (B, code_size) from the encoder -> (z decoded for the reconstruction, the
        code's mean, the weighted latent loss, logs). The autoencoder's code is z itself."""
        return code, code, torch.zeros((), device=code.device), {}

    def image_terms(self, nets: Networks, before: torch.Tensor, after: torch.Tensor,
                    mean: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Extra weighted loss on decoded images and its logs (none for ``ae`` and ``vae``)."""
        return torch.zeros((), device=before.device), {}

    # -- inference ----------------------------------------------------------------------
    def generator_output(self, nets: Networks, before: torch.Tensor, request: Request | None) -> torch.Tensor:
        """The decoder's raw output for before (B, 3, S, S) in [-1, 1], S the configured image size."""
        check_before(before, size=self.image_size)
        return nets["decoder"](self.inference_latent(nets["encoder"](before), request))

    def inference_latent(self, code: torch.Tensor, request: Request | None) -> torch.Tensor:
        """code: (B, code_size) -> the z to decode, (B, latent_dim)."""
        return code


@register_family
class Vae(Autoencoder):
    """``vae``. The encoder's code holds the posterior's mean and log-variance, (B, 2·D)."""

    name = "vae"
    Options = VaeOptions
    uses = frozenset({"intensity", "generator"})
    description = "conditional VAE: q(z | before) -> decoder -> after; KL with warm-up and free bits"

    def code_size(self) -> int:
        return 2 * self.options.latent_dim

    def latent_terms(self, code: torch.Tensor, step: int) -> LatentTerms:
        """Reparameterised sample z = μ + σ·ε (Kingma & Welling 2014, eq. 10) and the weighted
        KL term (free bits, warm-up). Logs ``kl`` (nats per image, summed over dimensions,
        without free bits), ``kl_weight`` (after warm-up) and ``active_dims``."""
        o = self.options
        mean, logvar = split_code(code)
        z = mean + (0.5 * logvar).exp() * torch.randn_like(mean)
        kl = gaussian_kl(mean, logvar)
        weight = o.kl_weight * kl_warmup_factor(step, o.kl_warmup_steps)
        logs = {"kl": kl.sum(dim=1).mean().item(), "kl_weight": weight, "active_dims": float(active_units(mean))}
        return z, mean, weight * kl_term(kl, o.free_bits), logs

    def inference_latent(self, code: torch.Tensor, request: Request | None) -> torch.Tensor:
        """The posterior mean; with ``request.generator`` (``--seed``) a posterior sample
        μ + σ·ε, ε drawn from that generator (same seed, same sample)."""
        mean, logvar = split_code(code)
        generator = request.generator if request is not None else None
        if generator is None:
            return mean
        noise = torch.randn(mean.shape, generator=generator, device=generator.device)
        return mean + (0.5 * logvar).exp() * noise.to(mean.device)


def split_code(code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 2·D) encoder code -> mean (B, D) and log-variance (B, D) clamped to LOGVAR_RANGE,
    both float32."""
    mean, logvar = code.float().chunk(2, dim=1)
    return mean, logvar.clamp(*LOGVAR_RANGE)


@register_family
class VaePerceptual(Vae):
    """``vae-perceptual``: ``vae`` plus ``vgg``, a frozen VGG-16 cut after the deepest
    perceptual layer; only the loss uses it, so generation never needs its file."""

    name = "vae-perceptual"
    Options = VaePerceptualOptions
    description = "conditional VAE + VGG-16 perceptual loss on the image decoded from the mean code"
    frozen_networks = ("vgg",)

    def build(self) -> Networks:
        nets = super().build()
        # Random weights here: build also runs on the meta device; load_pretrained fills them.
        nets["vgg"] = VggFeatures(VGG_ARCH, self.options.perceptual_layers)
        return nets

    def load_pretrained(self, nets: Networks, dtype: torch.dtype = torch.float32) -> None:
        if "vgg" in nets:
            vgg = nets["vgg"]
            assert isinstance(vgg, VggFeatures)
            vgg.load_published(dtype=dtype)

    def image_terms(self, nets: Networks, before: torch.Tensor, after: torch.Tensor,
                    mean: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """perceptual_weight · Σ_l w_l·mean |φ_l(head(decoder(μ))) − φ_l(after)|²; logs
        ``perceptual`` unweighted."""
        decoded = self.head(nets["decoder"](mean), before)[0]
        value = self.perceptual(nets["vgg"], decoded, after)
        return self.options.perceptual_weight * value, {"perceptual": value.item()}

    def perceptual(self, vgg: nn.Module, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """Σ_l w_l·mean squared difference of VGG features (`svai.models.vgg.perceptual_loss`).
        fake, real: (B, 3, H, W) in [-1, 1] -> scalar float32, >= 0; gradients reach `fake`."""
        dtype = next(vgg.parameters()).dtype
        with torch.no_grad():
            target = vgg(real.to(dtype))
        return perceptual_loss(vgg(fake.to(dtype)), target, self.options.layer_weights)

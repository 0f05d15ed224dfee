"""style-transfer: arbitrary style transfer with adaptive instance normalisation (Huang &
Belongie 2017, "Arbitrary Style Transfer in Real-time with Adaptive Instance Normalization").

A frozen VGG-19 f, cut at relu4_1, encodes the content image c (the before photo) and the style
image s (the after domain). AdaIN (eq. 8) gives the content features the style's per-channel
mean and standard deviation, t = AdaIN(f(c), f(s)), and a trained decoder g, the encoder's
mirror (nearest upsampling, reflection padding, no normalisation; Sec. 6.1), draws the output
g(t). Training minimises (Sec. 6.2)

    L = ‖f(g(t)) − t‖² + λ·Σ_l ‖μ(φ_l(g(t))) − μ(φ_l(s))‖² + ‖σ(φ_l(g(t))) − σ(φ_l(s))‖²

over φ_l = relu1_1, relu2_1, relu3_1, relu4_1, each a mean squared error. At generation the
content–style trade-off α (Sec. 7) is `--intensity`: t = α·AdaIN(f(c), f(s)) + (1 − α)·f(c).

The style comes from the after domain in one of two ways (`model.style_source`):

- "mean": the running mean, over every after photo training has seen, of the per-image
  channel means and standard deviations at each style layer (the ``style_stats`` buffers,
  saved in checkpoints). Generation needs no reference photo.
- "reference": one after photo per image. Training takes each before photo's own after photo
  (the pairs are aligned); generation takes ``--reference``. The running mean is kept here
  too, only to stand in for a photo where none can be given (the training samples).

The VGG is torchvision's (zero padding, ImageNet normalisation inside `VggFeatures`), not the
paper's normalised Caffe VGG with reflection padding. It is declared frozen: loaded from the
weights lookup (``vgg19-dcbb9e9d.pth``) in the run's compute dtype, never trained, never in
checkpoints. The statistics, AdaIN and the losses are computed in float32 whatever that dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from svai.data.layout import PROCEDURES
from svai.errors import SvaiError
from svai.models.base import Batch, GeneratorFamily, LossResult, Networks, Phase, Request
from svai.models.layers import check_before
from svai.models.options import OutputOptions, check_at_least, check_in_unit_interval, check_positive
from svai.models.registry import register_family
from svai.models.vgg import VggFeatures

STYLE_LAYERS: tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")
CONTENT_LAYER = "relu4_1"
# Channels of VGG-19 at each style layer.
LAYER_WIDTHS: dict[str, int] = {"relu1_1": 64, "relu2_1": 128, "relu3_1": 256, "relu4_1": 512}
# relu4_1 lies after three 2×2 poolings.
DOWNSCALE = 8
# Added to the variance before its square root (the reference code's ε).
EPS = 1e-5

Stats = tuple[torch.Tensor, torch.Tensor]


# -- the functional core ------------------------------------------------------------------------
def channel_stats(features: torch.Tensor, eps: float = EPS) -> Stats:
    """Per-image, per-channel mean and standard deviation over the positions (Sec. 5).

    features: (B, C, H, W) -> (mean (B, C), std (B, C)) in float32, std = sqrt(var + eps)
    with the population variance (divided by H·W).
    """
    flat = features.float().flatten(2)
    mean = flat.mean(dim=2)
    std = (flat.var(dim=2, unbiased=False) + eps).sqrt()
    return mean, std


def adain(content: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """AdaIN(x, y) = σ(y)·(x − μ(x))/σ(x) + μ(y) (eq. 8), with the style's statistics given.

    content: (B, C, H, W); mean, std: (B, C), the style's -> (B, C, H, W) float32 whose
    per-channel mean is `mean` and whose standard deviation is `std`·sqrt(var/(var + eps)).
    """
    content_mean, content_std = channel_stats(content, eps)
    normalised = (content.float() - content_mean[..., None, None]) / content_std[..., None, None]
    return normalised * std.float()[..., None, None] + mean.float()[..., None, None]


def stylised_features(content: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """The decoder's input t = α·AdaIN(f(c), s) + (1 − α)·f(c) (the content–style trade-off, Sec. 7).

    content: (B, C, H, W); mean, std: (B, C); alpha in [0, 1] -> (B, C, H, W) float32; α = 0
    returns the content features exactly, α = 1 AdaIN's output.
    """
    return alpha * adain(content, mean, std) + (1 - alpha) * content.float()


def content_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_c = mean squared error between f(g(t)) and t (Sec. 6.2). Both (B, C, H, W) -> scalar float32."""
    return F.mse_loss(features.float(), target.float())


def style_loss(features: dict[str, torch.Tensor], targets: dict[str, Stats]) -> torch.Tensor:
    """L_s = Σ_l MSE(μ(φ_l(g(t))), μ_l) + MSE(σ(φ_l(g(t))), σ_l) over the layers of `targets` (Sec. 6.2).

    features: layer -> (B, C, H, W) of the output; targets: layer -> (mean (B, C), std (B, C))
    of the style -> scalar float32.
    """
    total = torch.zeros((), device=next(iter(features.values())).device)
    for layer, (mean, std) in targets.items():
        out_mean, out_std = channel_stats(features[layer])
        total = total + F.mse_loss(out_mean, mean.float()) + F.mse_loss(out_std, std.float())
    return total


# -- networks -----------------------------------------------------------------------------------
def _conv(in_channels: int, out_channels: int) -> list[nn.Module]:
    """A 3×3 convolution on a reflection-padded map (the decoder avoids border artefacts)."""
    return [nn.ReflectionPad2d(1), nn.Conv2d(in_channels, out_channels, 3)]


class AdaINDecoder(nn.Module):
    """The decoder g (Sec. 6.1): VGG-19 up to relu4_1 mirrored, pooling replaced by nearest
    upsampling, every convolution reflection-padded, ReLU between them, no normalisation.

    With ``ngf = 64`` the widths are the paper's, 256·3 → 128·2 → 64·2 after the 512 → 256
    entry convolution; other values scale them (4·ngf, 2·ngf, ngf). The last convolution has
    `out_channels` outputs and no activation (the paper's decoder is unbounded).

    t: (B, 512, S/8, S/8) -> (B, out_channels, S, S), unbounded.
    """

    def __init__(self, out_channels: int = 3, ngf: int = 64, in_channels: int = LAYER_WIDTHS[CONTENT_LAYER]) -> None:
        super().__init__()
        wide, mid, narrow = 4 * ngf, 2 * ngf, ngf
        layers: list[nn.Module] = [*_conv(in_channels, wide), nn.ReLU(), _upsample()]
        for _ in range(3):
            layers += [*_conv(wide, wide), nn.ReLU()]
        layers += [*_conv(wide, mid), nn.ReLU(), _upsample(), *_conv(mid, mid), nn.ReLU()]
        layers += [*_conv(mid, narrow), nn.ReLU(), _upsample(), *_conv(narrow, narrow), nn.ReLU()]
        layers += _conv(narrow, out_channels)
        self.model = nn.Sequential(*layers)

    @property
    def output_layer(self) -> nn.Conv2d:
        """The last convolution (an output head initialises it)."""
        return self.model[-1]

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.model(t)


def _upsample() -> nn.Module:
    return nn.Upsample(scale_factor=2, mode="nearest")


class StyleStatistics(nn.Module):
    """Running mean, over every style image seen, of the per-image channel means and standard
    deviations at each style layer: the "mean style" of the training after photos.

    Buffers (saved and restored with the run, so a resumed run continues the same mean):
    ``count`` (images seen) and, per layer, ``<layer>_mean`` and ``<layer>_std`` (C,) float32.
    """

    count: torch.Tensor

    def __init__(self, widths: dict[str, int] = LAYER_WIDTHS) -> None:
        super().__init__()
        self.layers = tuple(widths)
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        for layer, width in widths.items():
            self.register_buffer(f"{layer}_mean", torch.zeros(width))
            self.register_buffer(f"{layer}_std", torch.zeros(width))

    @torch.no_grad()
    def update(self, stats: dict[str, Stats]) -> None:
        """Fold in a batch: stats maps each layer to (mean (B, C), std (B, C)) of B style images."""
        batch = next(iter(stats.values()))[0].shape[0]
        weight = batch / (int(self.count) + batch)
        for layer in self.layers:
            for kind, value in zip(("mean", "std"), stats[layer]):
                running = self.get_buffer(f"{layer}_{kind}")
                running.add_((value.float().mean(dim=0) - running) * weight)
        self.count.add_(batch)

    def target(self, layer: str, batch: int) -> Stats:
        """The mean statistics of `layer`, repeated for a batch: (mean (B, C), std (B, C)) float32,
        copies (a loss keeps them for its backward pass while the buffers move on)."""
        mean, std = self.get_buffer(f"{layer}_mean"), self.get_buffer(f"{layer}_std")
        return mean.expand(batch, -1).clone(), std.expand(batch, -1).clone()


# -- the family ---------------------------------------------------------------------------------
@dataclass
class StyleTransferOptions(OutputOptions):
    """Options of `style-transfer`; defaults are the paper's and its reference code's.

    The output ones are described on `OutputOptions`: "direct" is the paper's decoder, whose
    unbounded output is clamped to [-1, 1] at generation; the other modes make the decoder
    predict the head's raw channels from t (a change, a mask, a field on the before photo).

    - style_source: "mean" (the running mean style statistics of the training after photos;
      generation takes no reference) | "reference" (one after photo: at training each before
      photo's own, at generation ``--reference``).
    - style_weight: λ, the weight of the style loss (10), >= 0.
    - ngf: width of the decoder's last level (64, the paper's); the others are 2· and 4·, >= 1.
    - lr, beta1, beta2: Adam settings (1e-4; β the Adam defaults 0.9, 0.999).
    - lr_decay: the learning rate at step k is lr / (1 + lr_decay·k) (5e-5, the reference
      code's inverse-time decay), >= 0.
    """

    style_source: Literal["mean", "reference"] = "mean"
    style_weight: float = 10.0
    ngf: int = 64
    lr: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.999
    lr_decay: float = 5e-5

    def __post_init__(self) -> None:
        super().__post_init__()
        check_at_least("style_weight", self.style_weight, 0)
        check_at_least("ngf", self.ngf, 1)
        check_positive("lr", self.lr)
        check_in_unit_interval("beta1", self.beta1, closed=False)
        check_in_unit_interval("beta2", self.beta2, closed=False)
        check_at_least("lr_decay", self.lr_decay, 0)


def _features(vgg: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """VGG features of images (B, 3, H, W) in [-1, 1], fed in the VGG's own dtype (bf16 when
    the run computes in bf16), so a float32 input never meets bf16 weights outside autocast."""
    return vgg(images.to(next(vgg.parameters()).dtype))


@register_family
class StyleTransfer(GeneratorFamily):
    """Networks: ``decoder`` (trained), ``vgg`` (VGG-19 to relu4_1, pretrained and frozen)
    and ``style_stats`` (`StyleStatistics`, buffers only).

    One phase per step, ``decoder``. The running mean statistics are updated with the batch's
    after photos in either style source, before the loss reads them.
    """

    name = "style-transfer"
    Options = StyleTransferOptions
    paired = True
    uses = frozenset({"intensity"})
    description = "style-transfer: AdaIN (frozen VGG-19 encoder + trained decoder), after-domain style"
    frozen_networks = ("vgg",)

    def __init__(self, options: StyleTransferOptions, image_size: int, procedures: tuple[str, ...] = PROCEDURES) -> None:
        super().__init__(options, image_size, procedures)
        if options.style_source == "reference":
            self.uses = self.uses | {"reference"}
        if image_size < DOWNSCALE or image_size % DOWNSCALE:
            raise SvaiError(f"style-transfer needs an image size divisible by {DOWNSCALE} (relu4_1 lies after "
                            f"three poolings); got {image_size}")

    # -- building -----------------------------------------------------------------------
    def build(self) -> Networks:
        decoder = AdaINDecoder(self.head.channels, self.options.ngf)
        self.head.initialise(decoder.output_layer)
        # Random weights until `load_pretrained` fills them from the published file.
        return {"decoder": decoder, "vgg": VggFeatures("vgg19", STYLE_LAYERS), "style_stats": StyleStatistics()}

    def inference_networks(self) -> tuple[str, ...]:
        return ("decoder", "vgg", "style_stats")

    def load_pretrained(self, nets: Networks, dtype: torch.dtype = torch.float32) -> None:
        """Fill ``vgg`` (when present) from ``vgg19-dcbb9e9d.pth`` in `dtype`, frozen."""
        if "vgg" in nets:
            nets["vgg"].load_published(dtype=dtype)

    # -- training -----------------------------------------------------------------------
    def phases(self) -> list[Phase]:
        o = self.options
        return [Phase("decoder", ("decoder",), o.lr, (o.beta1, o.beta2))]

    def lr_factor(self, step: int, total_steps: int) -> float:
        return 1.0 / (1.0 + self.options.lr_decay * step)

    def _targets(self, nets: Networks, before: torch.Tensor,
                 after: torch.Tensor) -> tuple[torch.Tensor, dict[str, Stats]]:
        """Without gradients: t = AdaIN(f(before), style) (B, 512, H/8, W/8) float32, and the
        style's statistics at every style layer, after folding `after`'s into the running mean."""
        batch = before.shape[0]
        features = _features(nets["vgg"], torch.cat([before, after]))
        style = {layer: channel_stats(value[batch:]) for layer, value in features.items()}
        statistics: StyleStatistics = nets["style_stats"]  # type: ignore[assignment]
        statistics.update(style)
        if self.options.style_source == "mean":
            style = {layer: statistics.target(layer, batch) for layer in STYLE_LAYERS}
        t = adain(features[CONTENT_LAYER][:batch], *style[CONTENT_LAYER])
        return t, style

    def loss(self, phase: str, nets: Networks, batch: Batch, ctx: dict[str, Any], step: int) -> LossResult:
        """L_c + λ·L_s (Sec. 6.2) plus the output head's regularisers; before (content) and
        after (style, or folded into the mean style): (B, 3, H, W) in [-1, 1].

        Logs ``content``, ``style`` (unweighted), the head's terms, and ``decoder`` (the total).
        """
        if phase != "decoder":
            raise ValueError(f"style-transfer has one phase, decoder; got {phase!r}")
        before = batch["before"]
        with torch.no_grad():
            t, style = self._targets(nets, before, batch["after"])
        output, aux = self.head(nets["decoder"](t), before)
        features = _features(nets["vgg"], output)
        loss_content = content_loss(features[CONTENT_LAYER], t)
        loss_style = style_loss(features, style)
        head_loss, head_logs = self.head.regularizer(aux)
        total = loss_content + self.options.style_weight * loss_style + head_loss
        return total, {"content": loss_content.item(), "style": loss_style.item(), **head_logs,
                       "decoder": total.item()}

    # -- inference ----------------------------------------------------------------------
    def check_request(self, fields: Iterable[str]) -> None:
        """Refuse a request this run cannot answer, in one line naming the option: a
        ``--reference`` when the style is the training mean, none when it is one photo."""
        fields = list(fields)
        source = self.options.style_source
        if source == "mean" and "reference" in fields:
            raise SvaiError("--reference: this style-transfer run takes the mean style of its training after photos "
                            "(model.style_source=mean); leave --reference out, or train with "
                            "model.style_source=reference")
        if source == "reference" and "reference" not in fields:
            raise SvaiError("--reference is required: this style-transfer run takes the style of an after photo "
                            "(model.style_source=reference); give a photo or a folder of them")
        super().check_request(fields)

    @torch.no_grad()
    def translate(self, nets: Networks, before: torch.Tensor, request: Request | None = None) -> torch.Tensor:
        """before: (B, 3, S, S) in [-1, 1], S the run's image size -> after, same shape, in [-1, 1].

        ``request.intensity`` is the content–style trade-off α in [0, 1] (default 1), applied
        to the features in every output mode. With ``style_source = "reference"`` the style is
        ``request.reference`` (1 or B, 3, S, S) in [-1, 1]; without one (the training samples;
        `check_request` makes generation ask for it) and with "mean", the running mean.
        """
        # The decoder has no final tanh: direct output is bounded here.
        return super().translate(nets, before, request).clamp(-1, 1)

    def head_intensity(self, request: Request | None) -> float | None:
        """None: the intensity α acts on the features (`generator_output`), not in the head."""
        return None

    def generator_output(self, nets: Networks, before: torch.Tensor, request: Request | None) -> torch.Tensor:
        """The decoder's raw output for before (B, 3, S, S); the intensity α is applied to the
        features here."""
        size, count = self.image_size, before.shape[0]
        check_before(before, size=size)
        intensity = self.intensity(request)
        alpha = 1.0 if intensity is None else intensity
        content = _features(nets["vgg"], before)[CONTENT_LAYER]
        reference = request.reference if request is not None and self.options.style_source == "reference" else None
        if reference is not None:
            if reference.dim() != 4 or tuple(reference.shape[1:]) != (3, size, size) \
                    or reference.shape[0] not in (1, count):
                raise SvaiError(f"--reference: expected images (1 or {count}, 3, {size}, {size}); "
                                f"got shape {tuple(reference.shape)}")
            mean, std = channel_stats(_features(nets["vgg"], reference.to(before.device))[CONTENT_LAYER])
            mean, std = mean.expand(count, -1), std.expand(count, -1)
        else:
            mean, std = nets["style_stats"].target(CONTENT_LAYER, count)  # type: ignore[operator]
        t = stylised_features(content, mean, std, alpha)
        return nets["decoder"](t)

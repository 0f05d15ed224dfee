"""pix2pix: conditional GAN on aligned pairs (Isola et al. 2017, "Image-to-Image Translation
with Conditional Adversarial Networks").

A U-Net generator maps the before photo to the after photo; a PatchGAN judges the pair
(before, after) — real or generated — concatenated on channels. The generator minimises the
conditional GAN loss plus λ·L1 to the true after image (eq. 4). `model.output` chooses how
the U-Net's last layer becomes the after image (`svai.models.heads`); "direct" is the paper's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from svai.data.layout import PROCEDURES
from svai.errors import SvaiError
from svai.models.base import Networks, Request
from svai.models.gan_training import initialised_pair
from svai.models.layers import (
    PatchDiscriminator, UnetGenerator, check_attention_heads, check_before, patch_output_size, tile_labels,
)
from svai.models.options import GanOptions, Norm, check_at_least
from svai.models.paired_gan import PairedGan
from svai.models.registry import register_family

MIN_UNET_DEPTH = 5


@dataclass
class Pix2PixOptions(GanOptions):
    """Options of `pix2pix`; defaults are the reference ``--model pix2pix`` settings.

    The shared ones are described on `GanOptions`. Here dropout applies in the decoder of
    the innermost 8·ngf levels, and gan_mode is "vanilla" | "lsgan". Own options:

    - unet_depth: number of U-Net downsamplings; None follows the image size (the number of
      times it halves evenly: 8 at 256 px = unet_256, 7 at 128, 6 at 64). At least 5.
    - lambda_l1: weight of the L1 term (eq. 4), >= 0.
    - attention_position: the U-Net level p whose features, at resolution H/2^p after the skip
      concatenation, pass through the generator's attention (1 ≤ p < depth; 3 is 32×32 at
      256 px, SAGAN's best size). The discriminator's attention sits before its last conv.
    - procedure_maps: give G the per-procedure strengths as extra constant input maps (a
      conditional pix2pix, svai's addition: the paired baseline then knows what was operated
      and how strongly); generation then takes --procedures.
    """

    norm: Norm = "batch"
    dropout: float = 0.5
    gan_mode: Literal["vanilla", "lsgan"] = "vanilla"
    unet_depth: int | None = None
    lambda_l1: float = 100.0
    attention_position: int = 3
    procedure_maps: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.unet_depth is not None:
            check_at_least("unet_depth", self.unet_depth, MIN_UNET_DEPTH)
        check_at_least("lambda_l1", self.lambda_l1, 0)


def _halvings(size: int) -> int:
    """How many times `size` halves evenly (the trailing zero bits)."""
    return (size & -size).bit_length() - 1 if size > 0 else 0


@register_family
class Pix2Pix(PairedGan):
    """Networks: ``G`` (U-Net, before -> after) and ``D`` (PatchGAN on 6-channel pairs).

    Phases and losses: `PairedGan` (eq. 4), D's loss halved as in the reference. With an
    output mode other than "direct", ``G`` returns the head's raw channels and `self.head`
    makes the image.
    """

    name = "pix2pix"
    Options = Pix2PixOptions
    paired = True
    uses = frozenset({"intensity"})
    description = "pix2pix: U-Net + PatchGAN on aligned before/after pairs, L1 + conditional GAN loss"
    d_loss_scale = 0.5

    def __init__(self, options: Pix2PixOptions, image_size: int, procedures: tuple[str, ...] = PROCEDURES) -> None:
        super().__init__(options, image_size, procedures)
        o = options
        if o.procedure_maps:
            self.uses = self.uses | {"procedures"}
        available = _halvings(image_size)
        if o.unet_depth is None:
            if available < MIN_UNET_DEPTH:
                raise SvaiError(
                    f"pix2pix needs an image size divisible by {2 ** MIN_UNET_DEPTH}; got {image_size} "
                    "(set data.image_size to 32, 64, 128, 256 …)"
                )
            self.depth = available
        else:
            # The lower bound was checked with the options; the upper one needs the image size.
            if o.unet_depth > available:
                raise SvaiError(
                    f"model.unet_depth must be between {MIN_UNET_DEPTH} and {available} at image size "
                    f"{image_size} (the size must be divisible by 2^depth); got {o.unet_depth}"
                )
            self.depth = o.unet_depth
        if o.attention != "none":
            if not 1 <= o.attention_position < self.depth:
                raise SvaiError(
                    f"model.attention_position must be a U-Net level between 1 and {self.depth - 1}; "
                    f"got {o.attention_position}"
                )
            channels = 2 * o.ngf * min(2 ** (o.attention_position - 1), 8)
            check_attention_heads(o.attention_heads, channels)
            if o.attention == "generator+discriminator":
                check_attention_heads(o.attention_heads, o.ndf * min(2 ** o.n_layers_d, 8))
        if patch_output_size(image_size, o.n_layers_d) < 1:
            raise SvaiError(
                f"model.n_layers_d={o.n_layers_d} is too deep for image size {image_size}; lower it"
            )

    # -- building -----------------------------------------------------------------------
    def build(self) -> Networks:
        o = self.options
        generator = UnetGenerator(
            in_channels=3 + (len(self.procedures) if o.procedure_maps else 0),
            out_channels=self.head.channels,
            depth=self.depth,
            ngf=o.ngf,
            norm=o.norm,
            dropout=o.dropout,
            attention_position=o.attention_position if o.attention != "none" else None,
            attention_heads=o.attention_heads,
            final_tanh=self.head.final_tanh,
        )
        # The conditional discriminator sees (before, after) stacked: 6 channels (Sec. 3.1).
        discriminator = PatchDiscriminator(
            in_channels=6,
            ndf=o.ndf,
            n_layers=o.n_layers_d,
            norm=o.norm,
            attention=o.attention == "generator+discriminator",
            attention_heads=o.attention_heads,
        )
        return initialised_pair(generator, discriminator, o.init_gain, self.head)

    # -- inference ----------------------------------------------------------------------
    def generator_output(self, nets: Networks, before: torch.Tensor, request: Request | None) -> torch.Tensor:
        """before: (B, 3, H, W) in [-1, 1], H and W divisible by 2^depth; with procedure maps
        the request's procedure strengths are G's extra input."""
        check_before(before, multiple=2 ** self.depth)
        labels = self.requested_procedures(request, before) if self.options.procedure_maps else None
        return nets["G"](self._input(before, labels))

    def _input(self, before: torch.Tensor, procedures: torch.Tensor | None) -> torch.Tensor:
        """G's input: the before image, plus one constant map per procedure strength when
        `procedure_maps` is on. before: (B, 3, H, W); procedures: (B, P) -> (B, 3 [+ P], H, W)."""
        return tile_labels(before, procedures) if self.options.procedure_maps else before

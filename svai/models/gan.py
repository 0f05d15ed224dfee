"""gan: the basic conditional GAN, DCGAN-style (Radford et al. 2016, "Unsupervised
Representation Learning with Deep Convolutional Generative Adversarial Networks").

The generator is an encoder–decoder: a strided-convolution encoder squeezes the before photo
into a code (a 1×1 map, the place of the DCGAN's z), and the DCGAN generator draws the after
photo from it with transposed convolutions. The discriminator is the DCGAN discriminator.
The DCGAN guidelines (Sec. 3) hold throughout: strided convolutions instead of pooling, batch
norm everywhere except the generator's output and the discriminator's input, ReLU in the
generator, tanh at its output, LeakyReLU(0.2) in the discriminator, weights drawn from
N(0, 0.02), Adam with lr 2e-4 and β1 0.5.

The discriminator judges the pair (before, after) stacked on channels, as pix2pix's does
(Isola et al. 2017, Sec. 3.1): a discriminator shown the after photo alone would only ask the
output to look like some after photo, not like this patient's. The generator's loss is the
adversarial term only by default (`model.lambda_l1` adds λ·‖after − G(before)‖₁);
`model.output` chooses how the decoder's last layer becomes the after image
(`svai.models.heads`), "direct" being the DCGAN's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from svai.data.layout import PROCEDURES
from svai.errors import SvaiError
from svai.models.base import Networks, Request
from svai.models.gan_training import initialised_pair
from svai.models.layers import check_before, conv_bias, norm_layer
from svai.models.options import GanOptions, Norm, check_at_least
from svai.models.paired_gan import PairedGan
from svai.models.registry import register_family

# The encoder halves the image until its side would drop below this (the DCGAN's 4×4 map).
MIN_SIDE = 4
# Widths double per level up to this multiple of ngf / ndf (DCGAN: 8·64 = 512 at 64 px).
MAX_MULT = 8


@dataclass
class DcganOptions(GanOptions):
    """Options of `gan`; defaults are the DCGAN's (Radford et al. 2016, Sec. 3 and 4).

    The shared ones are described on `GanOptions`. Here:

    - ngf, ndf: widths of the encoder's first and the decoder's last hidden layer, and of the
      discriminator's first layer (64, as DCGAN's 64 px networks).
    - norm: "batch" (the DCGAN's) | "instance" | "none"; in G and D alike.
    - n_layers_d: the most stride-2 convolutions of the discriminator (8): it halves the image
      as the encoder does, while the map stays at least 4×4 (4 layers at 64 px, the DCGAN's;
      6 at 256 px), and a last convolution as large as the remaining map gives one logit.
    - dropout: dropout after each hidden layer of the decoder, in [0, 1) (0, the DCGAN's).
    - gan_mode: "vanilla" (the DCGAN's) | "lsgan".
    - lr_decay_fraction: 0 (DCGAN keeps the learning rate constant).
    - attention: "none" only (DCGAN has no attention variant here).

    Own options:

    - code_channels: channels of the 1×1 code between encoder and decoder (100, the size of
      DCGAN's z), >= 1.
    - lambda_l1: weight of ‖after − G(before)‖₁ in the generator's loss (0: adversarial only),
      >= 0.
    """

    norm: Norm = "batch"
    n_layers_d: int = 8
    gan_mode: Literal["vanilla", "lsgan"] = "vanilla"
    lr_decay_fraction: float = 0.0
    attention: Literal["none"] = "none"
    code_channels: int = 100
    lambda_l1: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_at_least("code_channels", self.code_channels, 1)
        check_at_least("lambda_l1", self.lambda_l1, 0)


def halvings(size: int) -> int:
    """How many stride-2 layers the generator's encoder (and at most the discriminator) has at
    image side `size`: it halves while the side is even and stays at least `MIN_SIDE` (64 px
    -> 4, the DCGAN's 4×4 map)."""
    count = 0
    while size % 2 == 0 and size // 2 >= MIN_SIDE:
        size //= 2
        count += 1
    return count


def _width(base: int, level: int) -> int:
    return base * min(2 ** level, MAX_MULT)


class DcganGenerator(nn.Module):
    """Encoder–decoder generator: DCGAN-style strided convolutions down to a 1×1 code, then the
    DCGAN generator (Radford et al. 2016, Fig. 1) back up with transposed convolutions.

    Encoder: `halvings(S)` 4×4 stride-2 convolutions (widths ngf·2^k, capped at 8·ngf; batch norm
    except on the first; ReLU), then a convolution as large as the remaining map to a
    `code_channels` × 1 × 1 code (no norm, no activation: a batch of one would leave batch norm
    a single value per channel). Decoder: a transposed convolution from the code back to that
    map, `halvings(S) − 1` 4×4 stride-2 transposed convolutions, each with norm, ReLU (and
    dropout), and a last 4×4 stride-2 transposed convolution to `out_channels`, tanh when
    `final_tanh`. Convolutions followed by batch norm have no bias; the first and the last
    have none either, as in the reference implementation (pytorch/examples ``dcgan``).

    x: (B, in_channels, S, S) in [-1, 1] with S even and at least 8
    -> (B, out_channels, S, S) in [-1, 1] (unbounded without `final_tanh`).
    """

    def __init__(self, image_size: int, in_channels: int = 3, out_channels: int = 3, ngf: int = 64,
                 code_channels: int = 100, norm: str = "batch", dropout: float = 0.0,
                 final_tanh: bool = True) -> None:
        super().__init__()
        depth = halvings(image_size)
        side = image_size // 2 ** depth
        make_norm, bias = norm_layer(norm), conv_bias(norm)
        down: list[nn.Module] = [nn.Conv2d(in_channels, ngf, 4, 2, 1, bias=False), nn.ReLU(True)]
        for level in range(1, depth):
            down += [nn.Conv2d(_width(ngf, level - 1), _width(ngf, level), 4, 2, 1, bias=bias),
                     make_norm(_width(ngf, level)), nn.ReLU(True)]
        down.append(nn.Conv2d(_width(ngf, depth - 1), code_channels, side, 1, 0, bias=False))
        self.encoder = nn.Sequential(*down)
        top = _width(ngf, depth - 1)
        up: list[nn.Module] = [nn.ConvTranspose2d(code_channels, top, side, 1, 0, bias=bias), make_norm(top),
                               nn.ReLU(True), *_dropout(dropout)]
        for level in range(depth - 1, 0, -1):
            up += [nn.ConvTranspose2d(_width(ngf, level), _width(ngf, level - 1), 4, 2, 1, bias=bias),
                   make_norm(_width(ngf, level - 1)), nn.ReLU(True), *_dropout(dropout)]
        up.append(nn.ConvTranspose2d(ngf, out_channels, 4, 2, 1, bias=False))
        if final_tanh:
            up.append(nn.Tanh())
        self.decoder = nn.Sequential(*up)

    @property
    def output_layer(self) -> nn.ConvTranspose2d:
        """The last transposed convolution (an output head initialises it)."""
        return next(m for m in reversed(self.decoder) if isinstance(m, nn.ConvTranspose2d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def _dropout(p: float) -> list[nn.Module]:
    return [nn.Dropout(p)] if p > 0 else []


class DcganDiscriminator(nn.Module):
    """The DCGAN discriminator (Radford et al. 2016): min(`n_layers`, halvings(S)) 4×4 stride-2
    convolutions (widths ndf·2^k capped at 8·ndf; norm on all but the first; LeakyReLU 0.2),
    then a convolution as large as the remaining map to one logit. Bias-free where the
    reference is (pytorch/examples ``dcgan``: every layer at 64 px with batch norm).

    x: (B, in_channels, S, S), S = `image_size` -> logits (B, 1, 1, 1), unbounded.
    """

    def __init__(self, image_size: int, in_channels: int = 6, ndf: int = 64, n_layers: int = 8,
                 norm: str = "batch") -> None:
        super().__init__()
        make_norm, bias = norm_layer(norm), conv_bias(norm)
        depth = min(n_layers, halvings(image_size))
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        for level in range(1, depth):
            layers += [nn.Conv2d(_width(ndf, level - 1), _width(ndf, level), 4, 2, 1, bias=bias),
                       make_norm(_width(ndf, level)), nn.LeakyReLU(0.2, True)]
        side = image_size // 2 ** depth
        layers.append(nn.Conv2d(_width(ndf, depth - 1), 1, side, 1, 0, bias=False))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)



@register_family
class Dcgan(PairedGan):
    """Networks: ``G`` (`DcganGenerator`, before -> after) and ``D`` (`DcganDiscriminator` on
    6-channel (before, after) pairs).

    Phases and losses: `PairedGan` (D's loss not halved; the generator's is the adversarial
    term only unless `lambda_l1` > 0). Real and generated pairs go through D in separate
    batches, so batch norm never mixes them (the DCGAN's practice).
    """

    name = "gan"
    Options = DcganOptions
    paired = True
    uses = frozenset({"intensity"})
    description = "gan: DCGAN conditional GAN, encoder–decoder G and DCGAN D on before/after pairs, adversarial loss"

    def __init__(self, options: DcganOptions, image_size: int, procedures: tuple[str, ...] = PROCEDURES) -> None:
        super().__init__(options, image_size, procedures)
        if halvings(image_size) < 1:
            raise SvaiError(f"gan needs an even image size of at least {2 * MIN_SIDE}; got {image_size} "
                            "(set data.image_size to 32, 64, 128 …)")

    # -- building -----------------------------------------------------------------------
    def build(self) -> Networks:
        o = self.options
        generator = DcganGenerator(self.image_size, 3, self.head.channels, o.ngf, o.code_channels, o.norm,
                                   o.dropout, self.head.final_tanh)
        discriminator = DcganDiscriminator(self.image_size, 6, o.ndf, o.n_layers_d, o.norm)
        # DCGAN Sec. 4: weights from N(0, 0.02); batch-norm scales from N(1, 0.02) as the reference code.
        return initialised_pair(generator, discriminator, o.init_gain, self.head)

    # -- inference ----------------------------------------------------------------------
    def generator_output(self, nets: Networks, before: torch.Tensor, request: Request | None) -> torch.Tensor:
        """before: (B, 3, S, S) in [-1, 1], S the run's image size."""
        check_before(before, size=self.image_size)
        return nets["G"](before)

"""Building blocks shared by several model families.

Architectures follow the CycleGAN/pix2pix reference design (Zhu et al. 2017; Isola et al.
2017): a ResNet generator, a U-Net generator, an N-layer PatchGAN discriminator and a history
pool of generated images. Self-attention follows SAGAN (Zhang et al. 2019).

Networks hold optional parts (self-attention) as separately named submodules, so the state
dict of a network without attention is a subset of the one with it: loading the plain
weights with ``strict=False`` gives the same function while attention's γ is still 0.
"""

from __future__ import annotations

from typing import Callable, get_args

import torch
from torch import nn

from svai.errors import SvaiError
from svai.models.options import GanOptions, Norm

# The option types are the one list of choices; these tuples only serve error messages.
NORMS: tuple[str, ...] = get_args(Norm)

NormFactory = Callable[[int], nn.Module]


# -- normalisation and initialisation ------------------------------------------------------
def norm_layer(kind: str) -> NormFactory:
    """Return a factory `channels -> normalisation module` for ``"batch" | "instance" | "none"``.

    As in the reference: batch norm learns an affine transform and tracks running
    statistics; instance norm does neither (each image is normalised on its own).
    """
    if kind == "batch":
        return lambda channels: nn.BatchNorm2d(channels, affine=True, track_running_stats=True)
    if kind == "instance":
        return lambda channels: nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if kind == "none":
        return lambda channels: nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; choose one of {', '.join(NORMS)}")


def conv_bias(kind: str) -> bool:
    """Whether convolutions followed by `kind` of norm need their own bias.

    Batch norm's affine shift makes a bias redundant; instance norm here is not affine,
    so the convolution keeps its bias (this is what makes the reference counts come out).
    """
    return kind != "batch"


def init_weights(module: nn.Module, gain: float = 0.02) -> None:
    """Initialise as the reference ``init_type="normal"``: conv/linear weights N(0, gain),
    norm scales N(1, gain), all biases 0. Draws from torch's global RNG, so a seed fixes it.

    Parameters that are not conv, linear or norm weights (attention's γ) keep their values.
    """
    for sub in module.modules():
        if isinstance(sub, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(sub.weight, 0.0, gain)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, (nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm)) and sub.weight is not None:
            nn.init.normal_(sub.weight, 1.0, gain)
            nn.init.zeros_(sub.bias)


# -- self-attention -------------------------------------------------------------------------
class SelfAttention(nn.Module):
    """SAGAN self-attention block (Zhang et al. 2019, Sec. 3), optionally multi-head.

    Queries and keys (the paper's g and f) are 1×1 convolutions to C/8 channels, values
    (h) a 1×1 convolution to C channels. With `heads` > 1 those channels are split evenly among the
    heads, so the parameter count does not depend on `heads`. Attention weights are a
    softmax over all H·W positions (eq. 1) and the output is ``x + γ·o`` (eq. 3) with γ
    initialised to 0, so a fresh block is the identity and the network starts out equal to
    the one without attention.

    x: (B, C, H, W) -> (B, C, H, W). Costs O((H·W)²) memory per head and image.
    """

    def __init__(self, channels: int, heads: int = 1) -> None:
        super().__init__()
        if channels % 8 != 0 or (channels // 8) % heads != 0:
            raise ValueError(f"self-attention needs C/8 divisible by heads; got C={channels}, heads={heads}")
        self.heads = heads
        self.query = nn.Conv2d(channels, channels // 8, kernel_size=1)
        self.key = nn.Conv2d(channels, channels // 8, kernel_size=1)
        self.value = nn.Conv2d(channels, channels, kernel_size=1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        positions = height * width
        # Energies and softmax in float32: under fp16 autocast the H·W-long sums overflow.
        with torch.autocast(device_type=x.device.type, enabled=False):
            q = self.query(x.float()).reshape(batch * self.heads, -1, positions)
            k = self.key(x.float()).reshape(batch * self.heads, -1, positions)
            v = self.value(x.float()).reshape(batch * self.heads, -1, positions)
            # SAGAN eq. 1: s_ij = f(x_i)ᵀ g(x_j), β_j,i = softmax over i; unscaled as in the paper.
            energy = torch.bmm(q.transpose(1, 2), k)                 # (B·h, N, N), row = output position
            attention = torch.softmax(energy, dim=-1)
            out = torch.bmm(v, attention.transpose(1, 2))            # (B·h, C/h, N)
            out = out.reshape(batch, channels, height, width)
            result = x.float() + self.gamma * out
        return result.to(x.dtype)


# -- generators -------------------------------------------------------------------------------
class ResnetBlock(nn.Module):
    """Residual block of two 3×3 convolutions (He et al. 2016) as in the CycleGAN generator.

    x: (B, C, H, W) -> (B, C, H, W), ``x + F(x)``.
    """

    def __init__(self, channels: int, norm: str = "instance", dropout: float = 0.0, padding: str = "reflect") -> None:
        super().__init__()
        make_norm, bias = norm_layer(norm), conv_bias(norm)
        layers: list[nn.Module] = [
            *_padded_conv3x3(channels, bias, padding), make_norm(channels), nn.ReLU(True),
        ]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers += [*_padded_conv3x3(channels, bias, padding), make_norm(channels)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


def _padded_conv3x3(channels: int, bias: bool, padding: str) -> list[nn.Module]:
    if padding == "reflect":
        return [nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=bias)]
    if padding == "replicate":
        return [nn.ReplicationPad2d(1), nn.Conv2d(channels, channels, 3, bias=bias)]
    if padding == "zero":
        return [nn.Conv2d(channels, channels, 3, padding=1, bias=bias)]
    raise ValueError(f"unknown padding {padding!r}")


def sampling_path(ngf: int, widths: tuple[int, ...], conv: Callable[[int, int], nn.Module],
                  make_norm: NormFactory) -> nn.Sequential:
    """A generator's down- or upsampling path: conv, norm, ReLU from each width to the next,
    the widths in multiples of `ngf` (1, 2, 4 halves the side twice; 4, 2, 1 doubles it back).
    `conv(in_channels, out_channels)` makes each resampling convolution."""
    layers: list[nn.Module] = []
    for a, b in zip(widths, widths[1:]):
        layers += [conv(ngf * a, ngf * b), make_norm(ngf * b), nn.ReLU(True)]
    return nn.Sequential(*layers)


def tile_labels(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Append the labels to the image as constant channels (Sec. 3.1, "depth-wise concatenation").

    x: (B, C, H, W); labels: (B, P) -> (B, C + P, H, W) in x's dtype.
    """
    batch, _, height, width = x.shape
    planes = labels.to(x.dtype).reshape(batch, -1, 1, 1).expand(-1, -1, height, width)
    return torch.cat([x, planes], dim=1)


def run_trunk(h: torch.Tensor, blocks: nn.ModuleList, attention: nn.Module | None, position: int) -> torch.Tensor:
    """Residual blocks in order, with the self-attention block (if any) before block
    `position` (`position == len(blocks)`: after the last). h: (B, C, H, W) -> same shape."""
    for index, block in enumerate(blocks):
        if attention is not None and index == position:
            h = attention(h)
        h = block(h)
    if attention is not None and position == len(blocks):
        h = attention(h)
    return h


class ResnetGenerator(nn.Module):
    """CycleGAN generator (Johnson et al. 2016 layout): 7×7 stem, two stride-2 downsamplings,
    `n_blocks` residual blocks at H/4, two transposed-conv upsamplings, 7×7 head and tanh.

    With ``attention_position = k`` a self-attention block follows the k-th residual block
    (0 = before the first, n_blocks = after the last); None means no attention. Without
    `final_tanh` the head's convolution is the last layer and its output is unbounded (an
    output head of `svai.models.heads` bounds it).

    x: (B, in_channels, H, W) in [-1, 1] with H, W divisible by 4
    -> (B, out_channels, H, W) in [-1, 1] (unbounded without `final_tanh`).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        ngf: int = 64,
        n_blocks: int = 9,
        norm: str = "instance",
        dropout: float = 0.0,
        attention_position: int | None = None,
        attention_heads: int = 1,
        padding: str = "reflect",
        final_tanh: bool = True,
    ) -> None:
        super().__init__()
        make_norm, bias = norm_layer(norm), conv_bias(norm)
        self.stem = nn.Sequential(
            nn.ReflectionPad2d(3), nn.Conv2d(in_channels, ngf, 7, bias=bias), make_norm(ngf), nn.ReLU(True),
        )
        self.down = sampling_path(
            ngf, (1, 2, 4), lambda i, o: nn.Conv2d(i, o, 3, stride=2, padding=1, bias=bias), make_norm)
        trunk = ngf * 4
        self.blocks = nn.ModuleList(ResnetBlock(trunk, norm, dropout, padding) for _ in range(n_blocks))
        self.attention_position = attention_position
        self.attention = SelfAttention(trunk, attention_heads) if attention_position is not None else None
        self.up = sampling_path(
            ngf, (4, 2, 1),
            lambda i, o: nn.ConvTranspose2d(i, o, 3, stride=2, padding=1, output_padding=1, bias=bias), make_norm)
        self.head = nn.Sequential(
            nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, 7), *([nn.Tanh()] if final_tanh else []),
        )

    @property
    def output_layer(self) -> nn.Conv2d:
        """The last convolution (an output head initialises it)."""
        return self.head[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.down(self.stem(x))
        h = run_trunk(h, self.blocks, self.attention, self.attention_position)
        return self.head(self.up(h))


class UnetSkipBlock(nn.Module):
    """One level of the pix2pix U-Net (Isola et al. 2017, Sec. 3.1.1 and appendix 6.1.1).

    Downsamples x by a 4×4 stride-2 convolution, runs the inner levels (`submodule`),
    upsamples back and concatenates x as the skip connection. The innermost level has no
    norm on its 1×1 bottleneck and the outermost ends in tanh (unless `final_tanh` is off), as
    in the reference; the
    inner decoder levels may use dropout. An optional self-attention block is applied to
    the concatenated output.

    x: (B, in_channels, H, W) -> (B, 2·outer_channels, H, W), or (B, outer_channels, H, W)
    for the outermost level.
    """

    def __init__(
        self,
        outer_channels: int,
        inner_channels: int,
        in_channels: int | None = None,
        submodule: nn.Module | None = None,
        outermost: bool = False,
        innermost: bool = False,
        norm: str = "batch",
        dropout: float = 0.0,
        attention_heads: int | None = None,
        final_tanh: bool = True,
    ) -> None:
        super().__init__()
        self.outermost = outermost
        make_norm, bias = norm_layer(norm), conv_bias(norm)
        in_channels = outer_channels if in_channels is None else in_channels
        down_conv = nn.Conv2d(in_channels, inner_channels, 4, stride=2, padding=1, bias=bias)
        if outermost:
            down: list[nn.Module] = [down_conv]
            up: list[nn.Module] = [
                nn.ReLU(True),
                nn.ConvTranspose2d(inner_channels * 2, outer_channels, 4, stride=2, padding=1),
                *([nn.Tanh()] if final_tanh else []),
            ]
        elif innermost:
            down = [nn.LeakyReLU(0.2, True), down_conv]
            up = [
                nn.ReLU(True),
                nn.ConvTranspose2d(inner_channels, outer_channels, 4, stride=2, padding=1, bias=bias),
                make_norm(outer_channels),
            ]
        else:
            down = [nn.LeakyReLU(0.2, True), down_conv, make_norm(inner_channels)]
            up = [
                nn.ReLU(True),
                nn.ConvTranspose2d(inner_channels * 2, outer_channels, 4, stride=2, padding=1, bias=bias),
                make_norm(outer_channels),
            ]
            if dropout > 0:
                up.append(nn.Dropout(dropout))
        self.down = nn.Sequential(*down)
        self.submodule = submodule if submodule is not None else nn.Identity()
        self.up = nn.Sequential(*up)
        self.attention = (
            SelfAttention(2 * outer_channels, attention_heads)
            if attention_heads is not None and not outermost else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The in-place LeakyReLU opening `down` also rectifies x before it is concatenated,
        # so the skip carries LeakyReLU(x): the reference network behaves the same way.
        y = self.up(self.submodule(self.down(x)))
        if self.outermost:
            return y
        out = torch.cat([x, y], dim=1)
        return self.attention(out) if self.attention is not None else out


class UnetGenerator(nn.Module):
    """pix2pix U-Net with `depth` downsamplings (``unet_256`` is depth 8 at 256 px).

    Widths double from `ngf` up to 8·ngf. As in the reference, the 8·ngf levels between the
    first one at that width and the innermost carry dropout in their decoder half (three of
    them in unet_256), and the innermost 1×1 bottleneck has no norm. With
    ``attention_position = p`` the features at resolution H/2^p (after the skip
    concatenation) pass through self-attention. Without `final_tanh` the outermost transposed
    convolution is the last layer and its output is unbounded (an output head of
    `svai.models.heads` bounds it).

    x: (B, in_channels, H, W) in [-1, 1] with H, W divisible by 2^depth
    -> (B, out_channels, H, W) in [-1, 1] (unbounded without `final_tanh`).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        depth: int = 8,
        ngf: int = 64,
        norm: str = "batch",
        dropout: float = 0.5,
        attention_position: int | None = None,
        attention_heads: int = 1,
        final_tanh: bool = True,
    ) -> None:
        super().__init__()
        if depth < 5:
            raise ValueError(f"U-Net depth must be at least 5; got {depth}")
        self.depth = depth
        widths = [min(2 ** p, 8) * ngf for p in range(depth)]
        # Level p sees features at H/2^p with widths[p - 1] channels and widens them to
        # widths[p]; level 0 is the outermost, level depth-1 the innermost.
        block: nn.Module | None = None
        for level in range(depth - 1, 0, -1):
            block = UnetSkipBlock(
                widths[level - 1],
                widths[level],
                submodule=block,
                innermost=level == depth - 1,
                norm=norm,
                # The reference drops out in the decoder of the 8·ngf levels between the
                # innermost one and the first that widens (num_downs - 5 of them).
                dropout=dropout if 4 <= level < depth - 1 else 0.0,
                attention_heads=attention_heads if level == attention_position else None,
            )
        self.model = UnetSkipBlock(
            out_channels, widths[0], in_channels=in_channels, submodule=block, outermost=True, norm=norm,
            final_tanh=final_tanh,
        )

    @property
    def output_layer(self) -> nn.ConvTranspose2d:
        """The outermost transposed convolution, the last layer (an output head initialises it)."""
        return self.model.up[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)



# -- discriminator ------------------------------------------------------------------------------
class PatchDiscriminator(nn.Module):
    """N-layer PatchGAN (Isola et al. 2017, Sec. 3.2.2); n_layers=3 is the 70×70 PatchGAN.

    `n_layers` 4×4 stride-2 convolutions (widths ndf·2^k capped at 8·ndf), one 4×4 stride-1
    convolution, then a 4×4 stride-1 convolution to one logit per patch. The first layer has
    no norm. With ``attention=True`` a self-attention block sits before the last convolution.

    x: (B, in_channels, H, W) -> logits (B, 1, H/2^n_layers - 2, W/2^n_layers - 2), unbounded.
    """

    def __init__(
        self,
        in_channels: int = 3,
        ndf: int = 64,
        n_layers: int = 3,
        norm: str = "instance",
        attention: bool = False,
        attention_heads: int = 1,
    ) -> None:
        super().__init__()
        make_norm, bias = norm_layer(norm), conv_bias(norm)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        width = ndf
        for k in range(1, n_layers + 1):
            # The last of these keeps the resolution (stride 1), widening the receptive field.
            stride = 2 if k < n_layers else 1
            next_width = ndf * min(2 ** k, 8)
            layers += [
                nn.Conv2d(width, next_width, 4, stride=stride, padding=1, bias=bias),
                make_norm(next_width),
                nn.LeakyReLU(0.2, True),
            ]
            width = next_width
        self.body = nn.Sequential(*layers)
        self.attention = SelfAttention(width, attention_heads) if attention else None
        self.head = nn.Conv2d(width, 1, 4, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        if self.attention is not None:
            h = self.attention(h)
        return self.head(h)


def patch_output_size(size: int, n_layers: int) -> int:
    """Side of a PatchGAN's logit map for an input side `size` (0 means it is too small)."""
    for _ in range(n_layers - 1):
        size = (size + 2 - 4) // 2 + 1
    # One more stride-2 conv, then two 4×4 stride-1 convolutions with padding 1 (−1 each).
    size = (size + 2 - 4) // 2 + 1
    return max(size - 2, 0)


# -- checks shared by families ----------------------------------------------------------------
def check_attention_heads(heads: int, channels: int) -> None:
    """Raise SvaiError unless `heads` evenly splits the C/8 query channels of a C-channel layer."""
    if channels % 8 != 0 or (channels // 8) % heads != 0:
        raise SvaiError(
            f"model.attention_heads must divide {channels // 8}, the query channels of a "
            f"{channels}-channel layer (also check model.ngf / model.ndf); got {heads}"
        )


def check_residual_trunk(family: str, image_size: int, options: GanOptions, position: int, n_blocks: int,
                         blocks_key: str) -> None:
    """The checks of a generator with two downsamplings around a residual trunk (CycleGAN's,
    StarGAN's): the image size halves twice, and an attention block (`options.attention`) sits
    at a trunk position (0..n_blocks, the option `blocks_key`) with heads that split its
    4·ngf channels. Raise SvaiError naming the key."""
    if image_size < 4 or image_size % 4 != 0:
        raise SvaiError(
            f"{family} needs an image size divisible by 4 (two downsamplings); got {image_size} "
            "(set data.image_size accordingly)"
        )
    if options.attention == "none":
        return
    if not 0 <= position <= n_blocks:
        raise SvaiError(f"model.attention_position must be between 0 and {blocks_key}={n_blocks}; got {position}")
    check_attention_heads(options.attention_heads, 4 * options.ngf)


def check_before(before: torch.Tensor, *, size: int | None = None, multiple: int = 1) -> None:
    """Raise SvaiError unless `before` is a batch of RGB images (B, 3, H, W): square at `size`
    when given, else with H and W divisible by `multiple`."""
    if size is not None:
        if before.dim() != 4 or tuple(before.shape[1:]) != (3, size, size):
            raise SvaiError(f"expected before images (B, 3, {size}, {size}); got shape {tuple(before.shape)}")
    elif before.dim() != 4 or before.shape[1] != 3 or before.shape[2] % multiple or before.shape[3] % multiple:
        raise SvaiError(f"expected before images (B, 3, H, W) with H and W divisible by {multiple}; "
                        f"got shape {tuple(before.shape)}")

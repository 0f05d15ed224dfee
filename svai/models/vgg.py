"""Frozen VGG feature extractors for perceptual losses and AdaIN (Simonyan & Zisserman 2015).

The convolutional part of torchvision's VGG-16 / VGG-19, cut after the deepest layer a loss
needs, with torchvision's layer indices, so the published ImageNet files
(`vgg16-397923af.pth`, `vgg19-dcbb9e9d.pth`) load as they are: their ``features.<i>.*``
entries fill the kept layers and the classifier is ignored. The files come from the
offline-aware weights lookup (`svai.weights`); families declare these networks frozen, so
they are never trained nor written into checkpoints.

Layers are named as in the papers: ``conv<block>_<i>``, ``relu<block>_<i>``, ``pool<block>``.
Inputs are images in [-1, 1]; the extractor applies the ImageNet normalisation the
torchvision weights were trained with.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from svai import weights
from svai.errors import SvaiError

VggArch = Literal["vgg16", "vgg19"]

# Output channels per conv layer, "M" = 2×2 max pooling (configurations D and E of the paper).
_CONFIGS: dict[str, list[int | str]] = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}

_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


def layer_names(arch: VggArch) -> list[str]:
    """Names of the layers of `arch`'s feature part, in torchvision's index order."""
    names, block, conv = [], 1, 0
    for entry in _CONFIGS[arch]:
        if entry == "M":
            names.append(f"pool{block}")
            block, conv = block + 1, 0
        else:
            conv += 1
            names += [f"conv{block}_{conv}", f"relu{block}_{conv}"]
    return names


class VggFeatures(nn.Module):
    """The first layers of a VGG, up to the deepest of `layers`; returns their activations.

    forward(x): x (B, 3, H, W) in [-1, 1] -> {layer name: activation}, in `layers` order.
    Its parameters never require gradients; gradients still flow to the input.
    """

    def __init__(self, arch: VggArch, layers: tuple[str, ...]) -> None:
        super().__init__()
        names = layer_names(arch)
        unknown = [name for name in layers if name not in names]
        if unknown or not layers:
            raise SvaiError(f"unknown {arch} layer {unknown[0] if unknown else '(none given)'!r}: "
                            f"choose from {', '.join(names)}")
        self.arch = arch
        self.layers = tuple(layers)
        depth = max(names.index(name) for name in layers) + 1
        self.names = names[:depth]
        modules: list[nn.Module] = []
        channels = 3
        for name in self.names:
            if name.startswith("conv"):
                width = _CONFIGS[arch][_config_index(names, name)]
                assert isinstance(width, int)
                modules.append(nn.Conv2d(channels, width, kernel_size=3, padding=1))
                channels = width
            elif name.startswith("relu"):
                modules.append(nn.ReLU())
            else:
                modules.append(nn.MaxPool2d(kernel_size=2, stride=2))
        self.features = nn.Sequential(*modules)
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        # Constants made here, not buffers: a network built on the meta device and
        # materialised with `to_empty` (as generation does) would hold garbage in buffers.
        mean = torch.tensor(_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        x = ((x + 1) / 2 - mean) / std
        wanted = set(self.layers)
        found: dict[str, torch.Tensor] = {}
        for name, module in zip(self.names, self.features):
            x = module(x)
            if name in wanted:
                found[name] = x
        return {name: found[name] for name in self.layers}

    def load_published(self, weights_dir: str | None = None, dtype: torch.dtype = torch.float32) -> None:
        """Fill the layers from the published torchvision file found by `svai.weights`
        (a missing file is a one-line error with the fix), cast to `dtype`, frozen, in eval mode."""
        path = weights.require(self.arch, weights_dir)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as error:  # a damaged or foreign file: name it
            raise SvaiError(f"{path} is not a readable {self.arch} file ({error}): fetch it again "
                            f"with `svai weights fetch {self.arch}`") from None
        own = self.features.state_dict()
        wanted = {f"features.{key}": key for key in own}
        missing = [name for name in wanted if name not in state]
        if missing:
            raise SvaiError(f"{path} has no {missing[0]!r}: it is not torchvision's {self.arch}; "
                            f"fetch it again with `svai weights fetch {self.arch}`")
        try:
            self.features.load_state_dict({key: state[name] for name, key in wanted.items()}, strict=True)
        except RuntimeError as error:
            first = str(error).strip().splitlines()[0]
            raise SvaiError(f"{path} does not fit {self.arch} ({first})") from None
        self.to(dtype=dtype)
        self.requires_grad_(False)
        self.eval()


def _config_index(names: list[str], conv: str) -> int:
    """Index in `_CONFIGS` of the conv layer named `conv`."""
    index = -1
    for name in names[: names.index(conv) + 1]:
        if name.startswith("conv") or name.startswith("pool"):
            index += 1
    return index


def perceptual_loss(features_a: dict[str, torch.Tensor], features_b: dict[str, torch.Tensor],
                         layer_weights: dict[str, float]) -> torch.Tensor:
    """Σ_l w_l · mean |φ_l(a) − φ_l(b)|² over the given layers (Johnson et al. 2016's feature
    reconstruction loss), computed in float32."""
    total = torch.zeros((), device=next(iter(features_a.values())).device)
    for name, weight in layer_weights.items():
        total = total + weight * (features_a[name].float() - features_b[name].float()).pow(2).mean()
    return total

"""LPIPS (Zhang et al. 2018) through the `lpips` package, loaded without any download path.

`lpips.LPIPS` would fetch its ImageNet backbone through torchvision (network access, and only
from `$TORCH_HOME`). Here the network is built with a random backbone, the backbone file is
found by `svai.weights` (`--weights-dir`, `$SVAI_WEIGHTS_DIR`, `$TORCH_HOME/hub/checkpoints`)
and read with `torch.load(weights_only=True)`, and the calibrated linear layers come from the
files inside the lpips wheel (version 0.1). The forward pass follows `lpips.LPIPS.forward` and
also returns the spatial map, so one backbone pass serves the image value and region values.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from svai.errors import SvaiError

logger = logging.getLogger(__name__)

LPIPS_NETS: tuple[str, ...] = ("alex", "vgg", "squeeze")
# `svai.weights` keys of the torchvision ImageNet backbones each LPIPS variant uses.
LPIPS_WEIGHT_KEYS: dict[str, str] = {"alex": "alexnet", "vgg": "vgg16", "squeeze": "squeezenet"}
LPIPS_VERSION: str = "0.1"


def _lpips_package():
    import lpips  # imported late: it pulls in torchvision models

    return lpips


def linear_layers_path(net: str) -> Path:
    """The calibrated linear-layer file shipped inside the lpips wheel for `net`."""
    return Path(_lpips_package().__file__).parent / "weights" / f"v{LPIPS_VERSION}" / f"{net}.pth"


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        try:
            # Memory-mapped: LPIPS reads only the convolutional part of the backbone (AlexNet's
            # classifier is 95% of its 244 MB), so most of the file is never paged in.
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "mmap" not in str(error):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as error:  # unpickling failures come in many types
        raise SvaiError(f"{path}: not a readable PyTorch weights file ({type(error).__name__}); delete it and fetch it again") from None
    if not isinstance(state, dict):
        raise SvaiError(f"{path}: holds {type(state).__name__}, not a state dict; delete it and fetch it again")
    return state


def _backbone_state(trunk: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Map torchvision keys (`features.<i>.weight`) onto lpips' slices (`slice<k>.<i>.weight`).

    lpips splits torchvision's `features` Sequential into slices whose children keep their
    original indices, so the index names the torchvision parameter.
    """
    mapped: dict[str, torch.Tensor] = {}
    for key, target in trunk.state_dict().items():
        _slice, index, name = key.split(".", 2)
        source = f"features.{index}.{name}"
        if source not in state:
            raise SvaiError(f"{path}: no {source!r}; it is not the torchvision file LPIPS expects, delete it and fetch it again")
        if tuple(state[source].shape) != tuple(target.shape):
            raise SvaiError(
                f"{path}: {source} has shape {tuple(state[source].shape)}, expected {tuple(target.shape)}; "
                "it belongs to another network, delete it and fetch it again"
            )
        mapped[key] = state[source]
    return mapped


def _empty_lpips(net: str, meta: bool) -> torch.nn.Module:
    """lpips.LPIPS with a random backbone and random linear layers, about to be overwritten.

    With `meta=True` the networks are created on the meta device: the random initialisation
    of torchvision's classifiers (which LPIPS never uses) costs seconds for VGG, and is
    skipped. lpips creates its input scaling constants outside the device context, so
    they stay real.
    """
    lpips = _lpips_package()
    with warnings.catch_warnings():
        # lpips passes torchvision's deprecated `pretrained=` argument; with pnet_rand=True it
        # asks for random weights, so nothing is downloaded.
        warnings.simplefilter("ignore")
        if meta:
            with torch.device("meta"):
                model = lpips.LPIPS(pretrained=False, net=net, version=LPIPS_VERSION, pnet_rand=True, verbose=False)
        else:
            model = lpips.LPIPS(pretrained=False, net=net, version=LPIPS_VERSION, pnet_rand=True, verbose=False)
    return model


def _load_into(model: torch.nn.Module, net: str, backbone_path: Path) -> torch.nn.Module:
    """Fill the backbone from `backbone_path` and the linear layers from the wheel."""
    backbone = _backbone_state(model.net, _load_state(backbone_path), backbone_path)
    model.net.to_empty(device="cpu")
    model.net.load_state_dict(backbone)
    linear = _load_state(linear_layers_path(net))
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if k.startswith("lin") and not k.startswith("lins.")}
    if {k: tuple(v.shape) for k, v in linear.items()} != expected:
        raise SvaiError(f"{linear_layers_path(net)}: does not match the LPIPS {net} layers; reinstall the lpips package")
    model.lins.to_empty(device="cpu")
    # strict=False: the file holds only the linear layers, not the backbone or scaling buffers.
    model.load_state_dict(linear, strict=False)
    return model


def build_lpips(net: str, backbone_path: Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """An `lpips.LPIPS` (version 0.1, eval mode, no gradients) with its backbone read from a file.

    net: "alex", "vgg" or "squeeze"; backbone_path: the torchvision ImageNet state dict
    (alexnet-owt-7be5be79.pth, vgg16-397923af.pth or squeezenet1_1-b8a52dc0.pth).
    """
    if net not in LPIPS_NETS:
        raise SvaiError(f"--lpips-net {net!r} is not known: use one of {', '.join(LPIPS_NETS)}")
    model = _load_into(_empty_lpips(net, meta=True), net, Path(backbone_path))
    if any(t.device.type == "meta" for t in [*model.parameters(), *model.buffers()]):
        # Something this lpips version builds was not covered by the two files: build the
        # slow way, with real random initialisation, and load again.
        model = _load_into(_empty_lpips(net, meta=False), net, Path(backbone_path))
    model.eval().requires_grad_(False)
    return model.to(device)


def load_lpips(net: str = "alex", weights_dir: Path | None = None, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Path]:
    """Find the backbone for `net` in the weight search folders and build LPIPS from it.

    Raises `SvaiError` with the one-line fix when the backbone file is not found.
    """
    if net not in LPIPS_NETS:
        raise SvaiError(f"--lpips-net {net!r} is not known: use one of {', '.join(LPIPS_NETS)}")
    from svai import weights

    key = LPIPS_WEIGHT_KEYS[net]
    path = weights.require(key, weights_dir)
    if not weights.verify(key, path):
        logger.warning("%s does not match the published %s weights: LPIPS values are not comparable with "
                       "published ones (delete it and run `svai weights fetch %s`)", path, key, key)
    return build_lpips(net, path, device), path


@torch.inference_mode()
def lpips_features(model: torch.nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """Unit-normalised backbone activations. images: (B, 3, H, W) float in [-1, 1]."""
    lpips = _lpips_package()
    outputs = model.net(model.scaling_layer(images.float()))
    return [lpips.normalize_tensor(output) for output in outputs]


@torch.inference_mode()
def lpips_from_features(
    model: torch.nn.Module, first: list[torch.Tensor], second: list[torch.Tensor], size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """LPIPS between two images' features.

    Returns (values (B,) float64, as `lpips.LPIPS(...)(a, b)`; spatial map (B, H, W) float32,
    as `lpips.LPIPS(spatial=True)`: every layer's distance map upsampled bilinearly to (H, W)
    = `size`, then summed). The value is the sum of each layer's map mean at its own
    resolution, so it is close to, but not exactly, the mean of the spatial map.
    """
    value: torch.Tensor | float = 0.0
    spatial: torch.Tensor | float = 0.0
    for layer, a, b in zip(model.lins, first, second):
        distance = layer((a - b) ** 2)
        value = value + distance.mean(dim=(2, 3), keepdim=True)
        spatial = spatial + F.interpolate(distance, size=size, mode="bilinear", align_corners=False)
    assert isinstance(value, torch.Tensor) and isinstance(spatial, torch.Tensor)
    return value.flatten().to(torch.float64), spatial[:, 0]


def lpips_distance(model: torch.nn.Module, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LPIPS per image and its spatial map. pred, target: (B, 3, H, W) in [-1, 1].

    Returns ((B,) float64, (B, H, W) float32); lower means more alike.
    """
    if pred.shape != target.shape or pred.ndim != 4:
        raise ValueError(f"expected two (B, 3, H, W) tensors of one shape; got {tuple(pred.shape)} and {tuple(target.shape)}")
    features = lpips_features(model, torch.cat([pred, target]))
    count = pred.shape[0]
    return lpips_from_features(
        model, [f[:count] for f in features], [f[count:] for f in features], tuple(pred.shape[-2:])
    )

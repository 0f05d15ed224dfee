"""The FID Inception network: building it offline and reading its features and logits.

The network is pytorch-fid's port of the TensorFlow Inception graph `inception-2015-12-05`
that Heusel et al. (2017) used for FID: torchvision's Inception v3 with 1008 output classes
and patched Mixed blocks. We reuse pytorch-fid's block classes, but load the weights
ourselves from a located file with `torch.load(..., weights_only=True)`, so nothing here
can start a download (which would hang offline) or unpickle arbitrary objects.

`inception_outputs` runs one forward pass that yields both the FID features of any of
pytorch-fid's four blocks and the 1008 classifier logits used by the Inception Score.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Iterable

import torch
import torch.nn.functional as F
import torchvision
from pytorch_fid import inception as pytorch_fid_inception
from torch import nn

from svai import weights
from svai.errors import SvaiError

logger = logging.getLogger(__name__)

#: Feature dimension → index of pytorch-fid's output block (`InceptionV3.BLOCK_INDEX_BY_DIM`):
#: 64 first max pool, 192 second max pool, 768 input of the auxiliary classifier,
#: 2048 final average pool (the standard FID features).
BLOCK_INDEX_BY_DIM: dict[int, int] = {64: 0, 192: 1, 768: 2, 2048: 3}

#: Output classes of the TensorFlow 2015-12-05 graph: the 1000 ImageNet classes plus 8
#: unused ones, kept because the Inception Score was defined on this softmax.
NUM_CLASSES: int = 1008

#: Input side the network was trained at; pytorch-fid resizes every image to it.
INPUT_SIZE: int = 299


def build_fid_inception() -> nn.Module:
    """pytorch-fid's FID Inception architecture, randomly initialised, with no download.

    Same module tree (and so the same state-dict keys) as `pytorch_fid.inception.
    fid_inception_v3()`, which we cannot call because it fetches the weights from a URL.
    """
    fid = pytorch_fid_inception
    # init_weights=False: the weights are about to be overwritten, and it is what pytorch-fid
    # passes too (torchvision's truncated-normal init is slow and pointless here).
    net = torchvision.models.inception_v3(
        weights=None, aux_logits=False, num_classes=NUM_CLASSES, init_weights=False
    )
    net.Mixed_5b = fid.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = fid.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = fid.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = fid.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = fid.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = fid.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = fid.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = fid.FIDInceptionE_1(1280)
    net.Mixed_7c = fid.FIDInceptionE_2(2048)
    return net


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a plain tensor state dict, refusing pickles that carry arbitrary objects.

    A refused or unreadable file is a `SvaiError` naming it: it is a wrong or tampered
    download, which the user fixes by fetching or copying it again.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        # torch's own message talks about weights_only defaults, which misleads here.
        raise SvaiError(
            f"{path} is not a readable weights file ({type(error).__name__}): delete it and run "
            f"`svai weights fetch`, or copy an intact copy in its place"
        ) from None
    if not isinstance(state, dict):
        raise SvaiError(f"{path} holds a {type(state).__name__}, not a state dict: replace the file")
    return state


def load_inception(weights_dir: str | Path | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """The FID Inception network with pytorch-fid's weights, in eval mode, gradients off.

    The file `pt_inception-2015-12-05-6726825d.pth` is looked for in `weights.search_dirs
    (weights_dir)`; a missing one raises `SvaiError` with the fix. A file whose hash does not
    match the published one is loaded but logged: its FID is not comparable with papers.
    """
    path = weights.require("inception", weights_dir)
    if not weights.verify("inception", path):
        logger.warning("%s does not match the published pytorch-fid weights: FID values are not comparable", path)
    net = build_fid_inception()
    state = load_state_dict_file(path)
    try:
        net.load_state_dict(state)
    except RuntimeError:
        raise SvaiError(
            f"{path} is not pytorch-fid's Inception state dict (keys or shapes differ): "
            f"delete it and run `svai weights fetch inception`"
        ) from None
    net.eval().requires_grad_(False)
    return net.to(device)


def inception_features(
    model: nn.Module, images: torch.Tensor, dims: Iterable[int] = (2048,)
) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """Features of several of pytorch-fid's blocks and the logits, in one forward pass.

    Args:
        model: from `load_inception` (or `build_fid_inception` with weights loaded), eval mode.
        images: (B, 3, H, W) float in [0, 1], any size.
        dims: any of 64, 192, 768, 2048.

    Returns:
        features: {dim: (B, dim) float64 on the CPU}; see `inception_outputs`.
        logits: (B, 1008) float32 on the model's device; see `inception_outputs`.
    """
    wanted = sorted(set(dims))
    for dim in wanted:
        if dim not in BLOCK_INDEX_BY_DIM:
            raise ValueError(f"dims must be among {sorted(BLOCK_INDEX_BY_DIM)}. Got {dim}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W). Got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be float in [0, 1]. Got dtype {images.dtype}")

    device = next(model.parameters()).device
    # pytorch-fid's preprocessing, step for step: bilinear resize to 299 without corner
    # alignment, then [0, 1] -> [-1, 1] as the TensorFlow graph expects.
    x = images.to(device=device, dtype=torch.float32)
    x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
    x = 2 * x - 1

    blocks: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        # The same four stages as pytorch-fid's InceptionV3.blocks, walked on torchvision's
        # module names so that one pass reaches every requested block and the classifier.
        x = model.maxpool1(model.Conv2d_2b_3x3(model.Conv2d_2a_3x3(model.Conv2d_1a_3x3(x))))
        blocks[0] = x
        x = model.maxpool2(model.Conv2d_4a_3x3(model.Conv2d_3b_1x1(x)))
        blocks[1] = x
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
            x = getattr(model, name)(x)
        blocks[2] = x
        x = model.avgpool(model.Mixed_7c(model.Mixed_7b(model.Mixed_7a(x))))
        blocks[3] = x
        features = {
            # Blocks before the last are spatial maps; pytorch-fid's get_activations
            # averages them to one vector per image (a no-op on the 1x1 pool-3 output).
            dim: F.adaptive_avg_pool2d(blocks[BLOCK_INDEX_BY_DIM[dim]], output_size=(1, 1)).flatten(1).cpu().double()
            for dim in wanted
        }
        # No bias: the original Inception Score took the softmax of pool-3 times the
        # classifier weights only (Salimans et al. 2016, openai/improved-gan).
        logits = torch.flatten(x, 1) @ model.fc.weight.t()
    return features, logits


def inception_outputs(
    model: nn.Module, images: torch.Tensor, dims: int = 2048
) -> tuple[torch.Tensor, torch.Tensor]:
    """FID features and classifier logits of a batch, in one forward pass.

    Args:
        model: from `load_inception` (or `build_fid_inception` with weights loaded), eval mode.
        images: (B, 3, H, W) float in [0, 1], any size.
        dims: 64, 192, 768 or 2048: which of pytorch-fid's blocks gives the features.

    Returns:
        features: (B, dims) float64 on the CPU, equal to `pytorch_fid.inception.InceptionV3
            ([BLOCK_INDEX_BY_DIM[dims]])` followed by the spatial mean that pytorch-fid's
            `get_activations` applies to blocks smaller than 2048.
        logits: (B, 1008) float32 on the model's device: the pool-3 features times the
            classifier weights *without* its bias, as in the original Inception Score code
            (Salimans et al. 2016), StyleGAN2-ADA's `no_output_bias` and torch-fidelity's
            `logits_unbiased` (which torchmetrics uses).
    """
    if dims not in BLOCK_INDEX_BY_DIM:
        raise ValueError(f"dims must be one of {sorted(BLOCK_INDEX_BY_DIM)}. Got {dims}")
    features, logits = inception_features(model, images, (dims,))
    return features[dims], logits

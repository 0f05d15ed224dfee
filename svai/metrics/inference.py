"""Inference-only rewrites of the metric networks: same function, less work.

- Batch norm in eval mode is an affine map per channel, so it folds into the convolution
  before it (w' = w * g / sqrt(v + eps), b' = (b - m) * g / sqrt(v + eps) + beta): one pass
  over the activations instead of two.
- The channels-last layout is what oneDNN's convolutions run on natively; without it every
  convolution converts its input and output.

Together they make the FID Inception about twice as fast on CPU; features change only by
float32 rounding (relative 1e-6), far below the tolerance of any FID comparison.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_batch_norms(model: nn.Module) -> int:
    """Fold every `bn` (BatchNorm2d) into its sibling `conv` (Conv2d), in place.

    This is the layout of torchvision's `BasicConv2d` (conv -> bn -> relu), which the
    Inception network is built from. Only modules in eval mode are folded (training-mode
    batch norm uses batch statistics). Returns the number of folded pairs.
    """
    folded = 0
    for module in model.modules():
        conv, norm = getattr(module, "conv", None), getattr(module, "bn", None)
        if (
            isinstance(conv, nn.Conv2d)
            and isinstance(norm, nn.BatchNorm2d)
            and not conv.training
            and not norm.training
            and norm.track_running_stats
        ):
            module.conv = fuse_conv_bn_eval(conv, norm)
            module.bn = nn.Identity()
            folded += 1
    return folded


def prepare_for_inference(model: nn.Module) -> nn.Module:
    """Eval mode, no gradients, batch norms folded, channels-last weights. Returns `model`."""
    model.eval().requires_grad_(False)
    fold_batch_norms(model)
    return model.to(memory_format=torch.channels_last)


def channels_last(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) in the channels-last layout the prepared networks run fastest on."""
    return images.contiguous(memory_format=torch.channels_last)

"""Measuring one batch: decoding files, and the paired metrics and Inception outputs of
tensors, called by the evaluation driver (`svai.metrics.evaluate`) batch by batch."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from svai.data.images import read_rgb
from svai.errors import SvaiError
from svai.metrics.folders import Candidate
from svai.metrics.identity import union_mask
from svai.metrics.inference import channels_last
from svai.metrics.psnr import psnr_from_mse, squared_error_map
from svai.metrics.specs import REGIONS
from svai.metrics.ssim import crop_to_ssim_map, ssim_map

# AlexNet's strided convolutions and pools need at least 31 px; a round bound is easier to state.
LPIPS_MIN_SIZE: int = 32
MASK_THRESHOLD: int = 128  # mask pixels >= this (of 255) belong to the changed region
# Pixels per paired-metric pass (16 images of 256x256): bounds LPIPS activations, which for
# VGG are about 0.5 KB per pixel, whatever the image size.
PAIRED_PIXELS_PER_PASS: int = 16 * 256 * 256

# Decoded images of one batch: (role, id) -> (H, W, 3) uint8, or the error that stopped it.
Decoded = dict[tuple[str, str], np.ndarray | SvaiError]


def _decode(path: Path | tuple[Path, ...]) -> np.ndarray | SvaiError:
    try:
        return union_mask(path) if isinstance(path, tuple) else read_rgb(path)
    except SvaiError as error:
        return error


def decode_batch(jobs: list[tuple[str, str, Path]]) -> Decoded:
    """Decode (role, id, path) jobs; failures come back as the error, not raised."""
    return {(role, key): _decode(path) for role, key, path in jobs}


def to_tensor(images: list[np.ndarray], device: torch.device) -> torch.Tensor:
    """(H, W, 3) uint8 arrays of one shape -> (B, 3, H, W) uint8 on `device`."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous().to(device)


def _masked_means(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Means of (B, H, W) `values` over each image's `mask` (bool (B, H, W)) and its complement.

    Returns two (B,) float64 tensors; NaN where a region has no pixels.
    """
    values = values.to(torch.float64)
    inside = mask.to(torch.float64)
    outside = 1.0 - inside
    count_in = inside.sum(dim=(1, 2))
    count_out = outside.sum(dim=(1, 2))
    mean_in = (values * inside).sum(dim=(1, 2)) / count_in
    mean_out = (values * outside).sum(dim=(1, 2)) / count_out
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=values.device)
    return torch.where(count_in > 0, mean_in, nan), torch.where(count_out > 0, mean_out, nan)


class TargetChunk:
    """Targets of one shape measured together, shared by the model and the baseline.

    images: (B, 3, H, W) uint8 on the measuring device; `position[id]` is an id's index in it.
    Their LPIPS backbone features are computed on first use, once for every candidate.
    """

    def __init__(self, ids: list[str], images: torch.Tensor, lpips_model: torch.nn.Module | None) -> None:
        self.images = images
        self.position = {key: index for index, key in enumerate(ids)}
        self.lpips_model = lpips_model
        self._lpips_features: list[torch.Tensor] | None = None

    def lpips_features(self) -> list[torch.Tensor]:
        if self._lpips_features is None:
            from svai.metrics.perceptual import lpips_features

            self._lpips_features = lpips_features(self.lpips_model, channels_last(self.images.float() / 127.5 - 1.0))
        return self._lpips_features


@dataclass(frozen=True)
class PairGroup:
    """Predictions of one candidate paired with targets of one `TargetChunk`.

    pred: (B, 3, H, W) uint8; target_index: (B,) each prediction's target in the chunk;
    masks: (B, H, W) bool (True = changed region) or None for whole-image values only.
    """

    ids: list[str]
    pred: torch.Tensor
    target_index: torch.Tensor
    masks: torch.Tensor | None


def _record_regions(candidate: Candidate, metric: str, ids: list[str], means: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Record (changed, kept) region values; NaN (a region without pixels) is left out."""
    for region, values in zip(REGIONS, means):
        for key, value in zip(ids, values.tolist()):
            if not math.isnan(value):
                candidate.record(f"{metric}_{region}", key, value)


def measure_pairs(candidate: Candidate, group: PairGroup, chunk: TargetChunk, metrics: list[str]) -> None:
    """Record the paired `metrics` of `group` (ssim, psnr, and lpips when the chunk has its network)."""
    paired_target = chunk.images.index_select(0, group.target_index)
    pred, ids, masks = group.pred, group.ids, group.masks
    channels = pred.shape[1]
    if "psnr" in metrics:
        error = squared_error_map(pred, paired_target) / channels  # (B, H, W) per-pixel MSE
        for key, value in zip(ids, psnr_from_mse(error.mean(dim=(1, 2))).tolist()):
            candidate.record("psnr", key, value)
        if masks is not None:
            region_mse = _masked_means(error, masks)
            _record_regions(candidate, "psnr", ids, (psnr_from_mse(region_mse[0]), psnr_from_mse(region_mse[1])))
    if "ssim" in metrics:
        similarity = ssim_map(pred.float() / 255.0, paired_target.float() / 255.0)
        for key, value in zip(ids, similarity.mean(dim=(1, 2)).tolist()):
            candidate.record("ssim", key, value)
        if masks is not None:
            _record_regions(candidate, "ssim", ids, _masked_means(similarity, crop_to_ssim_map(masks)))
    if chunk.lpips_model is not None:
        from svai.metrics.perceptual import lpips_features, lpips_from_features

        model = chunk.lpips_model
        pred_features = lpips_features(model, channels_last(pred.float() / 127.5 - 1.0))
        target_features = [f.index_select(0, group.target_index) for f in chunk.lpips_features()]
        values, spatial = lpips_from_features(model, pred_features, target_features, tuple(pred.shape[-2:]))
        for key, value in zip(ids, values.tolist()):
            candidate.record("lpips", key, value)
        if masks is not None:
            _record_regions(candidate, "lpips", ids, _masked_means(spatial, masks))
    candidate.evaluated.update(ids)


def inception_pass(
    model: torch.nn.Module, images: dict[str, np.ndarray], dims: int, device: torch.device
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Features (dims,) float64 and logits (1008,) of every image, one forward per shape."""
    from svai.metrics.inception import inception_outputs

    features: dict[str, np.ndarray] = {}
    logits: dict[str, np.ndarray] = {}
    by_shape: dict[tuple[int, ...], list[str]] = {}
    for key, image in images.items():
        by_shape.setdefault(image.shape, []).append(key)
    for keys in by_shape.values():
        batch = channels_last(to_tensor([images[k] for k in keys], device).float() / 255.0)
        feats, logit = inception_outputs(model, batch, dims)
        feats_np = feats.cpu().numpy().astype(np.float64)
        logit_np = logit.float().cpu().numpy()
        for i, key in enumerate(keys):
            features[key] = feats_np[i]
            logits[key] = logit_np[i]
    return features, logits


def valid_pairs(
    candidate: Candidate, batch: list[str], preds: dict[str, np.ndarray], targets: dict[str, np.ndarray], min_side: int
) -> set[str]:
    """Ids of the batch whose pred and target are both decoded, of one size and big enough;
    the others are recorded as skipped with the reason."""
    valid: set[str] = set()
    for key in batch:
        if key not in preds or key not in targets:
            continue
        shape, target_shape = preds[key].shape, targets[key].shape
        path = str(candidate.files[key])
        if shape != target_shape:
            candidate.skipped[path] = (
                f"is {shape[1]}x{shape[0]} but its target is {target_shape[1]}x{target_shape[0]}: paired metrics need equal sizes"
            )
        elif min(shape[:2]) < min_side:
            candidate.skipped[path] = f"is {shape[1]}x{shape[0]}, under the {min_side}x{min_side} the paired metrics need"
        else:
            valid.add(key)
    return valid

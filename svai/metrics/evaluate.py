"""The evaluation driver: one decode pass over the folders feeds every metric.

`evaluate_folders(pred, target, ...)` returns the evaluation JSON (see `docs/metrics.md`):

- paired metrics (SSIM, PSNR, LPIPS) on files paired by relative path without extension,
  per image, then mean ± population std over images; with masks also inside the changed
  region and outside it (`ssim_changed`, `ssim_kept`, ...);
- set metrics (FID, KID, IS) from one Inception pass over every readable image of each
  folder; the target folder's features are cached (`svai.metrics.cache`);
- with `baseline=` the same for a do-nothing folder (usually the before images), sharing
  the decode and the features of the targets.

Images stream in batches of `batch_size` ids (the next batch decodes in a thread while the
current one is measured), so memory does not grow with the number of images. A metric that
cannot run (weights missing, too few images) lands in `unavailable` with the reason and the
fix; unreadable files land in `skipped`; neither stops the others.

The steps of one evaluation: check the options (`_Options`), index the folders (`_Folders`),
load the networks and look up cached target features (`_Evaluation`), measure batch by batch
(`_Evaluation.measure`), then summarise each candidate into its JSON (`_Evaluation.results`).
"""

from __future__ import annotations

import json
import logging
import math
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from svai import __version__
from svai.data.images import read_rgb
from svai.devices import check_device
from svai.errors import SvaiError
from svai.io import write_atomic
from svai.metrics import cache as feature_cache
from svai.metrics.identity import IDENTITY_METRICS, IdentityMeter, region_mask_files, union_mask
from svai.metrics.inference import channels_last, prepare_for_inference
from svai.metrics.pairing import Pairing, index_folder, pair_ids
from svai.metrics.perceptual import LPIPS_NETS
from svai.metrics.psnr import psnr_from_mse, squared_error_map
from svai.metrics.specs import REGIONS, get_spec, metric_names
from svai.metrics.ssim import SSIM_SETTINGS, SSIM_WINDOW, crop_to_ssim_map, ssim_map

logger = logging.getLogger(__name__)

# Derived from the spec registry (`svai.metrics.specs`), in the order evaluate writes them.
PAIRED_METRICS: tuple[str, ...] = metric_names("paired")
SET_METRICS: tuple[str, ...] = metric_names("set")
METRICS: tuple[str, ...] = metric_names()
FID_DIMS: tuple[int, ...] = (64, 192, 768, 2048)
KID_SUBSETS: int = 100
KID_SUBSET_SIZE: int = 1000
IS_SPLITS: int = 10
# AlexNet's strided convolutions and pools need at least 31 px; a round bound is easier to state.
LPIPS_MIN_SIZE: int = 32
MASK_THRESHOLD: int = 128  # mask pixels >= this (of 255) belong to the changed region
# Pixels per paired-metric pass (16 images of 256x256): bounds LPIPS activations, which for
# VGG are about 0.5 KB per pixel, whatever the image size.
PAIRED_PIXELS_PER_PASS: int = 16 * 256 * 256

PSNR_SETTINGS = "per image on 8-bit RGB (peak 255), then averaged; identical pairs counted apart"
REGION_SETTINGS = (
    "changed = mask >= 128, kept = the rest; SSIM map (valid 11x11 windows) and squared error "
    "averaged over each region's pixels, LPIPS spatial map likewise"
)

Progress = Callable[[int, int], None]
# Decoded images of one batch: (role, id) -> (H, W, 3) uint8, or the error that stopped it.
Decoded = dict[tuple[str, str], np.ndarray | SvaiError]


def _versions() -> dict[str, str]:
    found = {"svai": __version__}
    for package in ("torch", "torchvision", "lpips", "pytorch-fid", "numpy", "scipy"):
        try:
            found[package.replace("-", "_")] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package.replace("-", "_")] = "not installed"
    return found


def _one_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _skip_reason(error: SvaiError, path: Path) -> str:
    message = _one_line(error)
    prefix = f"{path}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def normalize_metrics(metrics: list[str] | None) -> list[str]:
    """Lower-case, split on commas, drop duplicates, check names. None -> every metric."""
    if metrics is None:
        return list(METRICS)
    chosen: list[str] = []
    for item in metrics:
        for name in str(item).split(","):
            name = name.strip().lower()
            if not name:
                continue
            if name not in METRICS:
                raise SvaiError(f"--metrics {name!r} is not known: choose from {', '.join(METRICS)}")
            if name not in chosen:
                chosen.append(name)
    if not chosen:
        raise SvaiError(f"--metrics is empty: choose from {', '.join(METRICS)}")
    return chosen


# --------------------------------------------------------------------------------------------
# What one evaluation works on: options, folders, candidates, networks


@dataclass(frozen=True)
class _Options:
    """The checked options of one evaluation (see `evaluate_folders`)."""

    requested: list[str]
    lpips_net: str
    fid_dims: int
    weights_dir: Path | None
    batch_size: int
    device: torch.device
    use_cache: bool


def _check_options(lpips_net: str, fid_dims: int, batch_size: int) -> None:
    if lpips_net not in LPIPS_NETS:
        raise SvaiError(f"--lpips-net {lpips_net!r} is not known: use alex, vgg or squeeze")
    if fid_dims not in FID_DIMS:
        raise SvaiError(f"--fid-dims {fid_dims} is not available: use one of {', '.join(map(str, FID_DIMS))}")
    if not 1 <= batch_size <= 4096:
        raise SvaiError(f"--batch-size must be between 1 and 4096; got {batch_size}")


@dataclass
class _Candidate:
    """One folder measured against the targets: the model's output or the do-nothing baseline."""

    role: str
    name: str
    root: Path
    files: dict[str, Path]
    pairing: Pairing
    values: dict[str, dict[str, float]] = field(default_factory=dict)  # metric -> id -> value
    features: dict[str, np.ndarray] = field(default_factory=dict)  # id -> (dims,)
    logits: dict[str, np.ndarray] = field(default_factory=dict)  # id -> (1008,)
    skipped: dict[str, str] = field(default_factory=dict)  # file -> reason
    evaluated: set[str] = field(default_factory=set)  # ids with paired values
    without_mask: set[str] = field(default_factory=set)

    def record(self, metric: str, key: str, value: float) -> None:
        self.values.setdefault(metric, {})[key] = value


@dataclass(frozen=True)
class _Folders:
    """The resolved folders of one evaluation and their files, indexed by id."""

    target: Path
    target_files: dict[str, Path]
    masks: Path | None  # None: no region metrics
    mask_files: dict[str, Path]
    before: Path | None  # recorded for grids, never read here
    candidates: list[_Candidate]  # the model first, then the baseline when there is one
    passed_over: dict[str, str] = field(default_factory=dict)  # target and mask files not read as images


def _mask_source(folders: "_Folders") -> str | None:
    """What the changed region of `_changed`/`_kept` is: "change masks" (a masks folder) or
    "procedure regions" (a dataset's regions, from the before landmarks or given)."""
    if folders.masks is None:
        return None
    return "procedure regions" if any(isinstance(v, tuple) for v in folders.mask_files.values()) else "change masks"


def _index_folders(
    pred: Path, target: Path, masks: Path | None, baseline: Path | None, before: Path | None, name: str | None
) -> _Folders:
    """Resolve and index the folders; `masks` None looks for `target/../masks`."""
    pred, target = Path(pred).resolve(), Path(target).resolve()
    # Files a folder holds that are not read as images are reported, never passed over silently.
    passed_pred: dict[str, str] = {}
    passed: dict[str, str] = {}
    pred_files = index_folder(pred, passed_pred)
    target_files = index_folder(target, passed)
    mask_files: dict[str, Path] = {}
    if masks is None:
        guess = target.parent / "masks"
        if guess.is_dir() and guess not in (pred, target):
            try:
                mask_files, masks = index_folder(guess), guess
            except SvaiError as error:
                # A guess, not a request: an empty or odd folder just means no region metrics.
                logger.warning("not using %s for region metrics: %s", guess, error)
        if masks is None:
            # No change masks: a dataset's procedure regions (drawn from the before landmarks).
            masks, mask_files = region_mask_files(target)  # type: ignore[assignment]
    else:
        masks = Path(masks).resolve()
        if not masks.is_dir():
            raise SvaiError(f"--masks {masks} is not a folder: give the folder of masks (255 = changed region)")
        mask_files = index_folder(masks, passed)
    if baseline is not None:
        baseline = Path(baseline).resolve()
        before = before if before is not None else baseline
    before = Path(before).resolve() if before is not None else None

    candidates = [_Candidate("model", name or pred.name, pred, pred_files, pair_ids(pred_files, target_files, pred, target),
                             skipped=passed_pred)]
    if baseline is not None:
        passed_baseline: dict[str, str] = {}
        baseline_files = index_folder(baseline, passed_baseline)
        candidates.append(
            _Candidate("baseline", "baseline", baseline, baseline_files, pair_ids(baseline_files, target_files, baseline, target),
                       skipped=passed_baseline)
        )
    return _Folders(target, target_files, masks, mask_files, before, candidates, passed)


def _check_pairs(folders: _Folders, requested: list[str]) -> None:
    """Paired metrics need pairs: a folder with no namesake in the targets is a user error."""
    if not any(metric in PAIRED_METRICS for metric in requested):
        return
    for candidate in folders.candidates:
        if not candidate.pairing.ids:
            raise SvaiError(
                f"no image in {candidate.root} has a namesake in {folders.target} (pairs match by relative path without "
                "extension): rename the files, or ask only for set metrics with --metrics fid,kid,is"
            )


@dataclass
class _Models:
    lpips: torch.nn.Module | None = None
    inception: torch.nn.Module | None = None
    unavailable: dict[str, str] = field(default_factory=dict)
    weights: dict[str, str] = field(default_factory=dict)  # file name -> sha256
    inception_sha: str = ""  # keys the target-feature cache; "" without the network


def _load_models(requested: list[str], lpips_net: str, weights_dir: Path | None, device: torch.device) -> _Models:
    """Build the networks the requested metrics need; a failure makes those metrics unavailable."""
    models = _Models()
    if "lpips" in requested:
        try:
            from svai import weights
            from svai.metrics.perceptual import load_lpips

            models.lpips, path = load_lpips(lpips_net, weights_dir, device)
            prepare_for_inference(models.lpips)
            models.weights[path.name] = weights.sha256_file(path)
        except SvaiError as error:
            models.unavailable["lpips"] = _one_line(error)
        except ImportError as error:
            models.unavailable["lpips"] = f"cannot import what LPIPS needs ({error}); reinstall svai with its dependencies"
    wanted_sets = [m for m in SET_METRICS if m in requested]
    if wanted_sets:
        try:
            from svai import weights
            from svai.metrics.inception import load_inception

            path = weights.require("inception", weights_dir)
            models.inception = prepare_for_inference(load_inception(weights_dir, device))
            models.inception_sha = weights.sha256_file(path)
            models.weights[path.name] = models.inception_sha
        except SvaiError as error:
            for metric in wanted_sets:
                models.unavailable[metric] = _one_line(error)
        except ImportError as error:
            for metric in wanted_sets:
                models.unavailable[metric] = f"cannot import the Inception network ({error}); reinstall svai with its dependencies"
    return models


# --------------------------------------------------------------------------------------------
# Measuring: functions of tensors, called by `_Evaluation` batch by batch


def _decode(path: Path | tuple[Path, ...]) -> np.ndarray | SvaiError:
    try:
        return union_mask(path) if isinstance(path, tuple) else read_rgb(path)
    except SvaiError as error:
        return error


def _decode_batch(jobs: list[tuple[str, str, Path]]) -> Decoded:
    """Decode (role, id, path) jobs; failures come back as the error, not raised."""
    return {(role, key): _decode(path) for role, key, path in jobs}


def _to_tensor(images: list[np.ndarray], device: torch.device) -> torch.Tensor:
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


class _TargetChunk:
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
class _PairGroup:
    """Predictions of one candidate paired with targets of one `_TargetChunk`.

    pred: (B, 3, H, W) uint8; target_index: (B,) each prediction's target in the chunk;
    masks: (B, H, W) bool (True = changed region) or None for whole-image values only.
    """

    ids: list[str]
    pred: torch.Tensor
    target_index: torch.Tensor
    masks: torch.Tensor | None


def _record_regions(candidate: _Candidate, metric: str, ids: list[str], means: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Record (changed, kept) region values; NaN (a region without pixels) is left out."""
    for region, values in zip(REGIONS, means):
        for key, value in zip(ids, values.tolist()):
            if not math.isnan(value):
                candidate.record(f"{metric}_{region}", key, value)


def _measure_pairs(candidate: _Candidate, group: _PairGroup, chunk: _TargetChunk, metrics: list[str]) -> None:
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


def _inception_pass(
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
        batch = channels_last(_to_tensor([images[k] for k in keys], device).float() / 255.0)
        feats, logit = inception_outputs(model, batch, dims)
        feats_np = feats.cpu().numpy().astype(np.float64)
        logit_np = logit.float().cpu().numpy()
        for i, key in enumerate(keys):
            features[key] = feats_np[i]
            logits[key] = logit_np[i]
    return features, logits


def _valid_pairs(
    candidate: _Candidate, batch: list[str], preds: dict[str, np.ndarray], targets: dict[str, np.ndarray], min_side: int
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


# --------------------------------------------------------------------------------------------
# Summaries: per-image values -> the JSON entries


def _summary(values: dict[str, float], higher_is_better: bool) -> dict[str, Any]:
    ordered = dict(sorted(values.items()))
    array = np.asarray(list(ordered.values()), dtype=np.float64)
    return {
        "mean": float(array.mean()),
        "std": float(array.std()),
        "n": int(array.size),
        "higher_is_better": higher_is_better,
        "per_image": {k: float(v) for k, v in ordered.items()},
    }


def _psnr_summary(values: dict[str, float]) -> dict[str, Any] | None:
    """PSNR summary; identical pairs (infinite PSNR) are counted in `identical`, left out of
    mean/std/n, and have `null` as their per-image value."""
    higher_is_better = get_spec("psnr").higher_is_better
    finite = {k: v for k, v in values.items() if math.isfinite(v)}
    identical = len(values) - len(finite)
    if finite:
        entry = _summary(finite, higher_is_better)
    else:
        entry = {"mean": None, "std": None, "n": 0, "higher_is_better": higher_is_better, "per_image": {}}
    entry["identical"] = identical
    entry["per_image"] = {k: (float(v) if math.isfinite(v) else None) for k, v in sorted(values.items())}
    if identical:
        entry["warning"] = (
            f"{identical} pair(s) are identical (infinite PSNR): left out of the mean, which covers {len(finite)} pair(s)"
        )
    return entry


def _paired_summary(metric: str, values: dict[str, float]) -> dict[str, Any]:
    return _psnr_summary(values) if metric == "psnr" else _summary(values, get_spec(metric).higher_is_better)


def _fid_warning(n: int, n_target: int, dims: int) -> str | None:
    smallest = min(n, n_target)
    if smallest >= dims:
        return None
    advice = "compare KID, which is unbiased for small sets" if dims == 64 else "compare KID (unbiased for small sets) or use --fid-dims 64, 192 or 768"
    return (
        f"FID from {smallest} images at {dims} dims is unreliable: it is biased for small sets and needs at "
        f"least {dims} images per folder for a full-rank covariance; {advice}"
    )


def _set_metrics(
    candidate: _Candidate,
    target_features: np.ndarray,
    requested: list[str],
    unavailable: dict[str, str],
    dims: int,
) -> dict[str, dict[str, Any]]:
    from svai.metrics.fid import feature_statistics, frechet_distance
    from svai.metrics.inception_score import inception_score
    from svai.metrics.kid import kernel_inception_distance

    out: dict[str, dict[str, Any]] = {}
    keys = sorted(candidate.features)
    n, n_target = len(keys), int(target_features.shape[0])
    features = np.stack([candidate.features[k] for k in keys]) if keys else np.zeros((0, dims))
    too_few = f"needs at least 2 readable images in each folder; got {n} in {candidate.root} and {n_target} in the targets"
    if "fid" in requested and "fid" not in unavailable:
        if min(n, n_target) < 2:
            unavailable["fid"] = f"FID {too_few}"
        else:
            mu1, sigma1 = feature_statistics(features)
            mu2, sigma2 = feature_statistics(target_features)
            out["fid"] = {
                "mean": frechet_distance(mu1, sigma1, mu2, sigma2), "n": n, "n_target": n_target,
                "higher_is_better": get_spec("fid").higher_is_better,
            }
            warning = _fid_warning(n, n_target, dims)
            if warning:
                out["fid"]["warning"] = warning
    if "kid" in requested and "kid" not in unavailable:
        if min(n, n_target) < 2:
            unavailable["kid"] = f"KID {too_few}"
        else:
            subset_size = min(KID_SUBSET_SIZE, n, n_target)
            mean, std = kernel_inception_distance(features, target_features, subsets=KID_SUBSETS, subset_size=subset_size, seed=0)
            out["kid"] = {
                "mean": mean, "std": std, "n": n, "n_target": n_target,
                "higher_is_better": get_spec("kid").higher_is_better,
                "subsets": KID_SUBSETS, "subset_size": subset_size,
            }
    if "is" in requested and "is" not in unavailable:
        if n < 2:
            unavailable["is"] = f"IS needs at least 2 readable images in {candidate.root}; got {n}"
        else:
            splits = min(IS_SPLITS, n)
            logits = np.stack([candidate.logits[k] for k in keys])
            mean, std = inception_score(logits, splits=splits, seed=0)
            out["is"] = {"mean": mean, "std": std, "n": n, "higher_is_better": get_spec("is").higher_is_better, "splits": splits}
            if splits < IS_SPLITS:
                out["is"]["warning"] = f"IS from {n} images uses {splits} splits instead of {IS_SPLITS}"
    return out


def _paired_results(
    candidate: _Candidate, requested: list[str], unavailable: dict[str, str], masks: Path | None
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for metric in PAIRED_METRICS:
        if metric not in requested or metric in unavailable:
            continue
        values = candidate.values.get(metric, {})
        if not values:
            unavailable[metric] = f"{get_spec(metric).label}: no pair could be measured (see skipped and unmatched)"
            continue
        out[metric] = _paired_summary(metric, values)
        if masks is None or not get_spec(metric).regional:
            continue
        for region in REGIONS:
            name = f"{metric}_{region}"
            region_values = candidate.values.get(name, {})
            if not region_values:
                unavailable[name] = f"no measured pair has {region} pixels in its mask in {masks}"
                continue
            entry = _paired_summary(metric, region_values)
            notes = []
            if candidate.without_mask:
                notes.append(f"{len(candidate.without_mask)} pair(s) have no usable mask in {masks} and are left out")
            empty = len(candidate.evaluated) - len(candidate.without_mask) - len(region_values)
            if empty > 0:
                notes.append(f"{empty} pair(s) have no {region} pixels and are left out")
            if "warning" in entry:
                notes.insert(0, entry["warning"])
            if notes:
                entry["warning"] = "; ".join(notes)
            out[name] = entry
    return out


def _metric_order(found: dict[str, Any]) -> list[str]:
    order = []
    for metric in PAIRED_METRICS:
        order += [m for m in (metric, *(f"{metric}_{region}" for region in REGIONS)) if m in found]
    order += [m for m in SET_METRICS if m in found]
    return order


# --------------------------------------------------------------------------------------------
# The driver


class _Evaluation:
    """One evaluation's state: its folders, networks, which metrics run, and the target features.

    Built once per `evaluate_folders` call; `measure` streams the batches through it and
    `results` turns what the candidates gathered into the evaluation JSON.
    """

    def __init__(self, options: _Options, folders: _Folders) -> None:
        self.options = options
        self.folders = folders
        self.candidates = folders.candidates
        self.models = _load_models(options.requested, options.lpips_net, options.weights_dir, options.device)
        self.unavailable = dict(self.models.unavailable)
        self.paired_active = [m for m in options.requested if m in PAIRED_METRICS and m not in self.unavailable]
        self.sets_active = self.models.inception is not None and any(
            m in options.requested and m not in self.unavailable for m in SET_METRICS
        )
        self.identity = self._identity_meter()
        self.lpips_model = self.models.lpips if "lpips" in self.paired_active else None
        # The smallest side every paired metric can measure.
        self.min_side = max(
            SSIM_WINDOW if "ssim" in self.paired_active else 1, LPIPS_MIN_SIZE if self.lpips_model is not None else 1
        )
        self.target_features: dict[str, np.ndarray] = {}
        self.target_skipped: dict[str, str] = {}
        self.mask_skipped: dict[str, str] = {}
        self.cache_key = ""
        self.targets_for_sets = False  # True: the Inception pass covers the targets too
        if self.sets_active:
            self._load_cached_targets()
        self._files = {
            "target": folders.target_files, "mask": folders.mask_files, **{c.role: c.files for c in self.candidates},
        }

    def _identity_meter(self) -> IdentityMeter | None:
        """The face layer's identity scorer when an identity metric is asked for and can run;
        otherwise those metrics are unavailable with the reason."""
        wanted = [m for m in IDENTITY_METRICS if m in self.paired_active]
        if not wanted:
            return None
        reason = None
        if self.folders.before is None:
            reason = "needs the before photos: give --baseline (or --before)"
        else:
            try:
                return IdentityMeter(self.folders.before, self.folders.target, self.options.weights_dir)
            except SvaiError as error:
                reason = _one_line(error)
        for metric in wanted:
            self.unavailable[metric] = reason
            self.paired_active.remove(metric)
        return None

    def _load_cached_targets(self) -> None:
        """Target features come from the cache when these exact files were seen with these weights."""
        options = self.options
        self.cache_key = feature_cache.target_key(
            list(self.folders.target_files.values()), self.models.inception_sha,
            {"fid_dims": options.fid_dims, "network": "pt_inception-2015-12-05"},
        )
        cached = feature_cache.load(self.cache_key) if options.use_cache else None
        if cached is None:
            self.targets_for_sets = True
            return
        logger.info("target features from the cache (%d images)", len(cached.ids))
        self.target_features = dict(zip(cached.ids, cached.features))
        self.target_skipped = {item["file"]: item["reason"] for item in cached.skipped}

    # ---------------------------------------------------------------------------- measuring

    def _plan_decodes(self) -> dict[str, list[tuple[str, str, Path]]]:
        """Which files to decode, per id, as (role, id, path): each at most once, and only
        when some metric uses it (a pair, the Inception pass, a region)."""
        target_files, mask_files = self.folders.target_files, self.folders.mask_files
        plan: dict[str, list[tuple[str, str, Path]]] = {}
        for key in sorted(set(target_files).union(*(c.files for c in self.candidates))):
            jobs: list[tuple[str, str, Path]] = []
            paired = False
            for candidate in self.candidates:
                path = candidate.files.get(key)
                if path is None:
                    continue
                has_pair = bool(self.paired_active) and key in target_files
                paired |= has_pair
                if has_pair or self.sets_active:
                    jobs.append((candidate.role, key, path))
            if key in target_files and (paired or self.targets_for_sets):
                jobs.append(("target", key, target_files[key]))
            if paired and key in mask_files:
                jobs.append(("mask", key, mask_files[key]))
            if jobs:
                plan[key] = jobs
        return plan

    def measure(self, progress: Progress | None) -> None:
        """Decode and measure every planned id, `batch_size` ids at a time.

        The next batch decodes in a worker thread while this one is measured.
        """
        jobs_by_id = self._plan_decodes()
        work = list(jobs_by_id)
        size = self.options.batch_size
        batches = [work[i:i + size] for i in range(0, len(work), size)]

        def decode(batch: list[str]) -> Future:
            return pool.submit(_decode_batch, [job for key in batch for job in jobs_by_id[key]])

        done = 0
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="svai-decode") as pool:
            pending: Future | None = None
            for index, batch in enumerate(batches):
                decoded = (pending or decode(batch)).result()
                pending = decode(batches[index + 1]) if index + 1 < len(batches) else None
                self._measure_batch(batch, decoded)
                done += len(batch)
                if progress is not None:
                    progress(done, len(work))

    def _measure_batch(self, batch: list[str], decoded: Decoded) -> None:
        """Measure one batch of ids: paired metrics per candidate, then the Inception pass."""
        images = self._sort_decoded(decoded)
        if self.paired_active:
            self._measure_paired(batch, images, self._usable_masks(images))
        if self.sets_active and self.models.inception is not None:
            self._measure_sets(images)

    def _sort_decoded(self, decoded: Decoded) -> dict[str, dict[str, np.ndarray]]:
        """Decoded images by role then id; each failure is recorded as skipped where it belongs."""
        images: dict[str, dict[str, np.ndarray]] = {role: {} for role in self._files}
        for (role, key), value in decoded.items():
            if not isinstance(value, SvaiError):
                images[role][key] = value
                continue
            path = self._files[role][key]
            reason = _skip_reason(value, path)
            if role == "target":
                self.target_skipped[str(path)] = reason
            elif role == "mask":
                self.mask_skipped[str(path)] = reason
            else:
                next(c for c in self.candidates if c.role == role).skipped[str(path)] = reason
        return images

    def _usable_masks(self, images: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """(H, W) bool changed-region masks by id; one whose size differs from its target is skipped."""
        targets = images["target"]
        masks: dict[str, np.ndarray] = {}
        for key, mask in images["mask"].items():
            if key in targets and mask.shape[:2] != targets[key].shape[:2]:
                self.mask_skipped[str(self.folders.mask_files[key])] = (
                    f"mask is {mask.shape[1]}x{mask.shape[0]} but its target is {targets[key].shape[1]}x{targets[key].shape[0]}"
                )
                continue
            masks[key] = mask[..., 0] >= MASK_THRESHOLD
        return masks

    def _measure_paired(
        self, batch: list[str], images: dict[str, dict[str, np.ndarray]], masks: dict[str, np.ndarray]
    ) -> None:
        targets = images["target"]
        valid = {c.role: _valid_pairs(c, batch, images[c.role], targets, self.min_side) for c in self.candidates}
        # Targets grouped by shape, then cut into chunks of bounded pixel count: each chunk
        # is one tensor and one LPIPS backbone pass, shared by the model and the baseline.
        shapes: dict[tuple[int, ...], list[str]] = {}
        for key in batch:
            if key in targets and any(key in keys for keys in valid.values()):
                shapes.setdefault(targets[key].shape, []).append(key)
        for shape, keys in shapes.items():
            step = max(1, PAIRED_PIXELS_PER_PASS // (shape[0] * shape[1]))
            for start in range(0, len(keys), step):
                ids = keys[start:start + step]
                chunk = _TargetChunk(ids, _to_tensor([targets[k] for k in ids], self.options.device), self.lpips_model)
                for candidate in self.candidates:
                    ours = [k for k in ids if k in valid[candidate.role]]
                    for group in self._pair_groups(candidate, ours, images[candidate.role], masks, chunk):
                        _measure_pairs(candidate, group, chunk, self.paired_active)
                    if self.identity is not None:
                        for key in ours:
                            for metric, value in self.identity.measure(key, images[candidate.role][key], targets[key]).items():
                                candidate.record(metric, key, value)

    def _pair_groups(
        self,
        candidate: _Candidate,
        ids: list[str],
        preds: dict[str, np.ndarray],
        masks: dict[str, np.ndarray],
        chunk: _TargetChunk,
    ) -> list[_PairGroup]:
        """`ids` as tensors: with a masks folder, pairs with a usable mask apart from the others."""
        device = self.options.device
        if self.folders.mask_files:
            # Pairs without a usable mask still get whole-image values.
            candidate.without_mask.update(k for k in ids if k not in masks)
            parts = [([k for k in ids if k in masks], True), ([k for k in ids if k not in masks], False)]
        else:
            parts = [(ids, False)]
        return [
            _PairGroup(
                ids=part,
                pred=_to_tensor([preds[k] for k in part], device),
                target_index=torch.tensor([chunk.position[k] for k in part], device=device),
                masks=torch.from_numpy(np.stack([masks[k] for k in part])).to(device) if use_masks else None,
            )
            for part, use_masks in parts if part
        ]

    def _measure_sets(self, images: dict[str, dict[str, np.ndarray]]) -> None:
        """Inception features and logits of every decoded candidate image, and of the targets
        unless they came from the cache."""
        dims, device = self.options.fid_dims, self.options.device
        for candidate in self.candidates:
            own = dict(images[candidate.role])
            if own:
                feats, logits = _inception_pass(self.models.inception, own, dims, device)
                candidate.features.update(feats)
                candidate.logits.update(logits)
        targets = images["target"]
        if self.targets_for_sets and targets:
            feats, _ = _inception_pass(self.models.inception, targets, dims, device)
            self.target_features.update(feats)

    # ---------------------------------------------------------------------------- results

    def _target_matrix(self) -> np.ndarray:
        """(N, dims) float64 target features in id order."""
        keys = sorted(self.target_features)
        return np.stack([self.target_features[k] for k in keys]) if keys else np.zeros((0, self.options.fid_dims))

    def save_cache(self) -> None:
        """Store freshly computed target features for the next evaluation against these targets."""
        if not (self.targets_for_sets and self.options.use_cache):
            return
        entry = feature_cache.CachedFeatures(
            features=self._target_matrix(),
            ids=sorted(self.target_features),
            skipped=[{"file": f, "reason": r} for f, r in sorted(self.target_skipped.items())],
        )
        feature_cache.save(self.cache_key, entry)

    def results(self) -> dict[str, Any]:
        """The evaluation JSON of the model, with the baseline's nested under "baseline"."""
        target_matrix = self._target_matrix()
        settings: dict[str, Any] = {
            "ssim": SSIM_SETTINGS, "fid_dims": self.options.fid_dims, "lpips_net": self.options.lpips_net,
            "psnr": PSNR_SETTINGS,
        }
        if self.folders.masks is not None:
            settings["regions"] = REGION_SETTINGS
        results = [self._candidate_result(candidate, target_matrix, settings) for candidate in self.candidates]
        result = results[0]
        if len(results) > 1:
            result["baseline"] = results[1]
        return result

    def _candidate_result(
        self, candidate: _Candidate, target_matrix: np.ndarray, settings: dict[str, Any]
    ) -> dict[str, Any]:
        """One candidate's evaluation JSON; `target_matrix`: (N, dims) target features."""
        folders, requested = self.folders, self.options.requested
        own_unavailable = dict(self.unavailable)
        metrics_out = _paired_results(candidate, requested, own_unavailable, folders.masks)
        if self.sets_active:
            metrics_out.update(_set_metrics(candidate, target_matrix, requested, own_unavailable, self.options.fid_dims))
        skipped = dict(candidate.skipped)
        for file, reason in [*self.target_skipped.items(), *self.mask_skipped.items(), *folders.passed_over.items()]:
            skipped.setdefault(file, reason)
        return {
            "svai_version": __version__,
            "name": candidate.name,
            "role": candidate.role,
            "pred": str(candidate.root),
            "target": str(folders.target),
            "masks": str(folders.masks) if folders.masks is not None else None,
            "mask_source": _mask_source(folders),
            "before": str(folders.before) if folders.before is not None else None,
            "metrics": {k: metrics_out[k] for k in _metric_order(metrics_out)},
            "baseline": None,
            "unavailable": own_unavailable,
            "unmatched": candidate.pairing.unmatched(),
            "skipped": [{"file": f, "reason": r} for f, r in sorted(skipped.items())],
            "settings": settings,
            "weights": dict(self.models.weights),
            "versions": _versions(),
        }


def evaluate_folders(
    pred: Path,
    target: Path,
    *,
    metrics: list[str] | None = None,
    masks: Path | None = None,
    baseline: Path | None = None,
    before: Path | None = None,
    name: str | None = None,
    lpips_net: str = "alex",
    fid_dims: int = 2048,
    weights_dir: Path | None = None,
    batch_size: int = 16,
    device: str = "cpu",
    use_cache: bool = True,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Evaluate the images in `pred` against `target`; returns the evaluation JSON as a dict.

    pred, target: folders of images, paired by relative path without extension.
    metrics: subset of ssim, psnr, lpips, fid, kid, is (None: all). A metric that cannot run
        lands in result["unavailable"] with the reason; the caller decides whether that fails.
    masks: folder of masks (255 = changed) paired with the targets; None: `target/../masks`
        when that folder exists (the prepared dataset layout).
    baseline: a do-nothing folder (usually the before images), evaluated alike into
        result["baseline"]; also recorded as `before` unless `before` is given.
    progress: called as progress(ids_done, ids_total) after each batch.
    Raises `SvaiError` for bad folders or options.
    """
    requested = normalize_metrics(metrics)
    _check_options(lpips_net, fid_dims, batch_size)
    options = _Options(requested, lpips_net, fid_dims, weights_dir, batch_size, check_device(device), use_cache)
    folders = _index_folders(pred, target, masks, baseline, before, name)
    _check_pairs(folders, requested)
    evaluation = _Evaluation(options, folders)
    try:
        evaluation.measure(progress)
    finally:
        if evaluation.identity is not None:
            evaluation.identity.close()
    evaluation.save_cache()
    return evaluation.results()


def write_json(result: dict[str, Any], path: Path) -> Path:
    """Write the evaluation JSON atomically."""
    path = Path(path)
    # allow_nan=False: a stray infinity would make the file unreadable to strict parsers.
    data = (json.dumps(result, indent=2, allow_nan=False) + "\n").encode("utf-8")
    try:
        write_atomic(path, data)
    except OSError as error:
        raise SvaiError(f"cannot write {path} ({error.strerror}): choose another --json path") from None
    return path

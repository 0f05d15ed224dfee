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

The steps of one evaluation: check the options (`svai.metrics.options.EvaluateOptions`),
index the folders (`svai.metrics.folders`), load the networks and look up cached target
features (`_Evaluation`), measure batch by batch (`_Evaluation.measure`, with the functions of
`svai.metrics.measure`), then summarise each candidate into its JSON (`_Evaluation.results`,
with `svai.metrics.summary`).
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from svai import __version__
from svai.devices import check_device
from svai.errors import SvaiError
from svai.io import write_atomic
from svai.metrics import cache as feature_cache
from svai.metrics.folders import Candidate, Folders, check_pairs, index_folders, mask_source
from svai.metrics.identity import IDENTITY_METRICS, IdentityMeter
from svai.metrics.inference import prepare_for_inference
from svai.metrics.measure import (
    LPIPS_MIN_SIZE, MASK_THRESHOLD, PAIRED_PIXELS_PER_PASS, Decoded, PairGroup, TargetChunk, decode_batch,
    inception_pass, measure_pairs, to_tensor, valid_pairs,
)
from svai.metrics.options import PAIRED_METRICS, SET_METRICS, EvaluateOptions
from svai.metrics.ssim import SSIM_SETTINGS, SSIM_WINDOW
from svai.metrics.summary import PSNR_SETTINGS, REGION_SETTINGS, metric_order, paired_results, set_metrics, versions

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


def _one_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _skip_reason(error: SvaiError, path: Path) -> str:
    message = _one_line(error)
    prefix = f"{path}: "
    return message[len(prefix):] if message.startswith(prefix) else message


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
# The driver


class _Evaluation:
    """One evaluation's state: its folders, networks, which metrics run, and the target features.

    Built once per `evaluate_folders` call; `measure` streams the batches through it and
    `results` turns what the candidates gathered into the evaluation JSON.
    """

    def __init__(self, options: EvaluateOptions, folders: Folders, device: torch.device) -> None:
        self.options = options
        self.requested = options.requested
        self.device = device
        self.folders = folders
        self.candidates = folders.candidates
        self.models = _load_models(self.requested, options.lpips_net, options.weights_dir, device)
        self.unavailable = dict(self.models.unavailable)
        self.paired_active = [m for m in self.requested if m in PAIRED_METRICS and m not in self.unavailable]
        self.sets_active = self.models.inception is not None and any(
            m in self.requested and m not in self.unavailable for m in SET_METRICS
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
            return pool.submit(decode_batch, [job for key in batch for job in jobs_by_id[key]])

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
        valid = {c.role: valid_pairs(c, batch, images[c.role], targets, self.min_side) for c in self.candidates}
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
                chunk = TargetChunk(ids, to_tensor([targets[k] for k in ids], self.device), self.lpips_model)
                for candidate in self.candidates:
                    ours = [k for k in ids if k in valid[candidate.role]]
                    for group in self._pair_groups(candidate, ours, images[candidate.role], masks, chunk):
                        measure_pairs(candidate, group, chunk, self.paired_active)
                    if self.identity is not None:
                        for key in ours:
                            for metric, value in self.identity.measure(key, images[candidate.role][key], targets[key]).items():
                                candidate.record(metric, key, value)

    def _pair_groups(
        self,
        candidate: Candidate,
        ids: list[str],
        preds: dict[str, np.ndarray],
        masks: dict[str, np.ndarray],
        chunk: TargetChunk,
    ) -> list[PairGroup]:
        """`ids` as tensors: with a masks folder, pairs with a usable mask apart from the others."""
        device = self.device
        if self.folders.mask_files:
            # Pairs without a usable mask still get whole-image values.
            candidate.without_mask.update(k for k in ids if k not in masks)
            parts = [([k for k in ids if k in masks], True), ([k for k in ids if k not in masks], False)]
        else:
            parts = [(ids, False)]
        return [
            PairGroup(
                ids=part,
                pred=to_tensor([preds[k] for k in part], device),
                target_index=torch.tensor([chunk.position[k] for k in part], device=device),
                masks=torch.from_numpy(np.stack([masks[k] for k in part])).to(device) if use_masks else None,
            )
            for part, use_masks in parts if part
        ]

    def _measure_sets(self, images: dict[str, dict[str, np.ndarray]]) -> None:
        """Inception features and logits of every decoded candidate image, and of the targets
        unless they came from the cache."""
        dims, device = self.options.fid_dims, self.device
        for candidate in self.candidates:
            own = dict(images[candidate.role])
            if own:
                feats, logits = inception_pass(self.models.inception, own, dims, device)
                candidate.features.update(feats)
                candidate.logits.update(logits)
        targets = images["target"]
        if self.targets_for_sets and targets:
            feats, _ = inception_pass(self.models.inception, targets, dims, device)
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
        self, candidate: Candidate, target_matrix: np.ndarray, settings: dict[str, Any]
    ) -> dict[str, Any]:
        """One candidate's evaluation JSON; `target_matrix`: (N, dims) target features."""
        folders, requested = self.folders, self.requested
        own_unavailable = dict(self.unavailable)
        metrics_out = paired_results(candidate, requested, own_unavailable, folders.masks)
        if self.sets_active:
            metrics_out.update(set_metrics(candidate, target_matrix, requested, own_unavailable, self.options.fid_dims))
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
            "mask_source": mask_source(folders),
            "before": str(folders.before) if folders.before is not None else None,
            "metrics": {k: metrics_out[k] for k in metric_order(metrics_out)},
            "baseline": None,
            "unavailable": own_unavailable,
            "unmatched": candidate.pairing.unmatched(),
            "skipped": [{"file": f, "reason": r} for f, r in sorted(skipped.items())],
            "settings": settings,
            "weights": dict(self.models.weights),
            "versions": versions(),
        }


def evaluate_folders(
    pred: Path, target: Path, options: EvaluateOptions | None = None, progress: Progress | None = None
) -> dict[str, Any]:
    """Evaluate the images in `pred` against `target`; returns the evaluation JSON as a dict.

    pred, target: folders of images, paired by relative path without extension.
    options: the metrics, the other folders (masks, baseline, before) and the settings; a
        metric that cannot run lands in result["unavailable"] with the reason; the caller
        decides whether that fails.
    progress: called as progress(ids_done, ids_total) after each batch.
    Raises `SvaiError` for bad folders or options.
    """
    options = options or EvaluateOptions()
    device = check_device(options.device)
    folders = index_folders(pred, target, options.masks, options.baseline, options.before, options.name)
    check_pairs(folders, options.requested)
    evaluation = _Evaluation(options, folders, device)
    evaluation.measure(progress)
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

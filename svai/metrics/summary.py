"""Summaries: the per-image values and features a candidate gathered -> its JSON entries
(mean ± population std per paired metric and region, FID, KID and IS over the sets)."""

from __future__ import annotations

import math
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from svai import __version__
from svai.metrics.folders import Candidate
from svai.metrics.options import PAIRED_METRICS, SET_METRICS
from svai.metrics.specs import REGIONS, get_spec

KID_SUBSETS: int = 100
KID_SUBSET_SIZE: int = 1000
IS_SPLITS: int = 10

PSNR_SETTINGS = "per image on 8-bit RGB (peak 255), then averaged; identical pairs counted apart"
REGION_SETTINGS = (
    "changed = mask >= 128, kept = the rest; SSIM map (valid 11x11 windows) and squared error "
    "averaged over each region's pixels, LPIPS spatial map likewise"
)


def versions() -> dict[str, str]:
    found = {"svai": __version__}
    for package in ("torch", "torchvision", "lpips", "pytorch-fid", "numpy", "scipy"):
        try:
            found[package.replace("-", "_")] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package.replace("-", "_")] = "not installed"
    return found



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


def set_metrics(
    candidate: Candidate,
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


def paired_results(
    candidate: Candidate, requested: list[str], unavailable: dict[str, str], masks: Path | None
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


def metric_order(found: dict[str, Any]) -> list[str]:
    order = []
    for metric in PAIRED_METRICS:
        order += [m for m in (metric, *(f"{metric}_{region}" for region in REGIONS)) if m in found]
    order += [m for m in SET_METRICS if m in found]
    return order

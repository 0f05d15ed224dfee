"""What one evaluation measures and how: `EvaluateOptions`, built by `svai evaluate`, the
Python API and the evaluation at the end of training alike, with its defaults and checks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from svai.errors import SvaiError
from svai.metrics.specs import metric_names

# Derived from the spec registry (`svai.metrics.specs`), in the order evaluate writes them.
PAIRED_METRICS: tuple[str, ...] = metric_names("paired")
SET_METRICS: tuple[str, ...] = metric_names("set")
METRICS: tuple[str, ...] = metric_names()
FID_DIMS: tuple[int, ...] = (64, 192, 768, 2048)


def normalize_metrics(metrics: Sequence[str] | None) -> list[str]:
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


def _path(value: str | Path | None) -> Path | None:
    return Path(value) if value is not None else None


@dataclass(frozen=True)
class EvaluateOptions:
    """The options of `svai evaluate` besides the two folders (see docs/metrics.md).

    metrics: names of ssim, psnr, lpips, fid, kid, is (comma-separated items allowed); None:
        all (also when empty). Kept as a normalised tuple (lower case, no duplicates), so it
        says which metrics were asked for by name.
    masks: folder of masks (255 = changed) paired with the targets; None: `target/../masks`
        when that folder exists (the prepared dataset layout).
    baseline: a do-nothing folder (usually the before images), evaluated alike into
        result["baseline"]; also recorded as `before` unless `before` is given.
    before: the input images, recorded for grids and read by the identity metric.
    name: the evaluation's name (default: the pred folder's name).
    weights_dir: folder searched first for pretrained weights.
    batch_size: images decoded and measured together; use_cache: reuse cached target features.
    """

    metrics: Sequence[str] | None = None
    masks: Path | None = None
    baseline: Path | None = None
    before: Path | None = None
    name: str | None = None
    lpips_net: str = "alex"
    fid_dims: int = 2048
    weights_dir: Path | None = None
    batch_size: int = 16
    device: str = "cpu"
    use_cache: bool = True

    def __post_init__(self) -> None:
        from svai.metrics.perceptual import LPIPS_NETS

        metrics = None if self.metrics is None or len(self.metrics) == 0 else tuple(normalize_metrics(self.metrics))
        object.__setattr__(self, "metrics", metrics)
        for key in ("masks", "baseline", "before", "weights_dir"):
            object.__setattr__(self, key, _path(getattr(self, key)))
        object.__setattr__(self, "device", str(self.device))
        if self.lpips_net not in LPIPS_NETS:
            raise SvaiError(f"--lpips-net {self.lpips_net!r} is not known: use alex, vgg or squeeze")
        if self.fid_dims not in FID_DIMS:
            raise SvaiError(f"--fid-dims {self.fid_dims} is not available: use one of {', '.join(map(str, FID_DIMS))}")
        if not 1 <= self.batch_size <= 4096:
            raise SvaiError(f"--batch-size must be between 1 and 4096; got {self.batch_size}")

    @property
    def requested(self) -> list[str]:
        """The metrics to compute: those named, in their order, or every metric."""
        return normalize_metrics(self.metrics)

"""What svai knows about each metric, written once: evaluate, compare and the CLI read it here.

A metric's name is its key in the evaluation JSON. Region metrics are named
``{metric}_{region}`` (``ssim_changed``, ``psnr_kept``) and share their metric's spec.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["paired", "set"]

# Masked evaluation splits each pair into the changed region (mask >= 128) and the rest.
REGIONS: tuple[str, ...] = ("changed", "kept")


@dataclass(frozen=True)
class MetricSpec:
    """The facts of one metric.

    name: key in the evaluation JSON and in ``--metrics``.
    label: how people write it (``"SSIM"``).
    higher_is_better: the direction of improvement, shown as ↑ or ↓.
    decimals: digits after the point in the `svai evaluate` table (the JSON keeps full precision).
    kind: "paired" (one value per prediction/target pair, averaged) or "set" (one value
        from the distributions of two folders).
    unit: shown after the label when not empty (``"dB"``).
    headline: among the few metrics a one-line summary shows.
    """

    name: str
    label: str
    higher_is_better: bool
    decimals: int
    kind: Kind
    unit: str = ""
    headline: bool = False
    # Measured inside and outside the changed region too (`{name}_changed`, `{name}_kept`).
    regional: bool = True

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"

    @property
    def paired(self) -> bool:
        return self.kind == "paired"


# The order is the one evaluate computes and writes them in: paired metrics, then set metrics.
SPECS: tuple[MetricSpec, ...] = (
    # Wang et al. 2004; range [-1, 1], 1 for identical images.
    MetricSpec("ssim", "SSIM", higher_is_better=True, decimals=4, kind="paired", headline=True),
    # 10·log10(255² / MSE) on 8-bit data; infinite for identical images.
    MetricSpec("psnr", "PSNR", higher_is_better=True, decimals=2, kind="paired", unit="dB", headline=True),
    # Zhang et al. 2018: a learned distance, 0 for identical images.
    MetricSpec("lpips", "LPIPS", higher_is_better=False, decimals=4, kind="paired", headline=True),
    # SFace cosine (face layer) between the prediction and the before photo: still the patient?
    # 1 for the photo itself; the recogniser's same-person threshold is 0.363.
    MetricSpec("identity", "Identity", higher_is_better=True, decimals=4, kind="paired", regional=False),
    # The same cosine between the prediction and the true after photo.
    MetricSpec("identity_target", "Identity to after", higher_is_better=True, decimals=4, kind="paired",
               regional=False),
    # Heusel et al. 2017: Fréchet distance between Inception feature Gaussians.
    MetricSpec("fid", "FID", higher_is_better=False, decimals=2, kind="set", headline=True),
    # Bińkowski et al. 2018: unbiased squared MMD with a cubic polynomial kernel.
    MetricSpec("kid", "KID", higher_is_better=False, decimals=5, kind="set"),
    # Salimans et al. 2016: exp of the mean KL between p(y|x) and p(y); 1 at worst.
    MetricSpec("is", "IS", higher_is_better=True, decimals=3, kind="set"),
)

_BY_NAME: dict[str, MetricSpec] = {spec.name: spec for spec in SPECS}


def metric_names(kind: Kind | None = None) -> tuple[str, ...]:
    """Every metric's name in registry order, or only those of one kind."""
    return tuple(spec.name for spec in SPECS if kind is None or spec.kind == kind)


def headline_metrics() -> tuple[str, ...]:
    """The metrics a one-line summary shows, in registry order."""
    return tuple(spec.name for spec in SPECS if spec.headline)


def split_region(metric: str) -> tuple[str, str | None]:
    """``"ssim_changed"`` -> ``("ssim", "changed")``; a name without a region suffix -> ``(name, None)``."""
    for region in REGIONS:
        suffix = f"_{region}"
        if metric.endswith(suffix) and len(metric) > len(suffix):
            return metric[: -len(suffix)], region
    return metric, None


def spec_of(metric: str) -> MetricSpec | None:
    """The spec of a metric or of a region metric (``lpips_kept`` -> lpips); None when unknown."""
    return _BY_NAME.get(split_region(metric)[0])


def get_spec(metric: str) -> MetricSpec:
    """Like `spec_of`, for names that must be known; raises KeyError naming the known ones."""
    spec = spec_of(metric)
    if spec is None:
        raise KeyError(f"unknown metric {metric!r}: known are {', '.join(metric_names())}")
    return spec


def metric_label(metric: str) -> str:
    """How a table names a metric: ``"SSIM"``, ``"PSNR (dB) changed"``.

    An unknown metric is upper-cased, so results from newer versions still show.
    """
    base, region = split_region(metric)
    spec = _BY_NAME.get(base)
    name = base.upper() if spec is None else spec.label + (f" ({spec.unit})" if spec.unit else "")
    return f"{name} {region}" if region else name

"""The metric spec registry: one entry per metric evaluate computes, with the right direction."""

from __future__ import annotations

import pytest

from svai.metrics import options, specs


def test_every_metric_evaluate_computes_has_exactly_one_spec():
    names = [spec.name for spec in specs.SPECS]
    assert len(names) == len(set(names))
    assert options.METRICS == specs.metric_names() == (
        "ssim", "psnr", "lpips", "identity", "identity_target", "fid", "kid", "is")
    assert options.normalize_metrics(None) == list(names)
    assert set(options.PAIRED_METRICS) | set(options.SET_METRICS) == set(names)
    assert not set(options.PAIRED_METRICS) & set(options.SET_METRICS)


@pytest.mark.parametrize(
    ("name", "higher_is_better", "kind"),
    [
        # SSIM and PSNR grow with similarity; LPIPS, FID and KID are distances; IS rewards
        # confident and varied class predictions (Salimans et al. 2016).
        ("ssim", True, "paired"),
        ("psnr", True, "paired"),
        ("lpips", False, "paired"),
        ("fid", False, "set"),
        ("kid", False, "set"),
        ("is", True, "set"),
        # A cosine similarity of face embeddings: 1 for the same face.
        ("identity", True, "paired"),
        ("identity_target", True, "paired"),
    ],
)
def test_directions_and_kinds_follow_the_definitions(name, higher_is_better, kind):
    spec = specs.get_spec(name)
    assert (spec.higher_is_better, spec.kind) == (higher_is_better, kind)
    assert spec.arrow == ("↑" if higher_is_better else "↓")
    assert spec.paired == (kind == "paired")
    for region in specs.REGIONS:
        assert specs.get_spec(f"{name}_{region}") is spec


def test_region_names_and_labels():
    assert specs.split_region("psnr_changed") == ("psnr", "changed")
    assert specs.split_region("lpips_kept") == ("lpips", "kept")
    assert specs.split_region("_kept") == ("_kept", None)
    assert specs.split_region("sharpness") == ("sharpness", None)
    assert specs.metric_label("psnr_changed") == "PSNR (dB) changed"
    assert specs.metric_label("is") == "IS"
    assert specs.metric_label("sharpness_kept") == "SHARPNESS kept"
    assert specs.spec_of("sharpness") is None
    with pytest.raises(KeyError, match="ssim, psnr"):
        specs.get_spec("sharpness")


def test_specs_are_frozen():
    with pytest.raises(AttributeError):
        specs.get_spec("fid").higher_is_better = True  # type: ignore[misc]


def test_headline_metrics_are_what_the_training_summary_shows():
    assert specs.headline_metrics() == ("ssim", "psnr", "lpips", "fid")

"""svai.report.table: column order, directions, best values, baseline verdicts and sorting."""

from __future__ import annotations

import json

import pytest

from svai import report
from svai.errors import SvaiError


def test_column_order_preferred_then_regions_then_alphabetical(tmp_path):
    names = ["zeta", "psnr", "ssim_kept", "alpha", "fid", "ssim_changed", "kid", "lpips_changed", "is", "lpips", "ssim"]
    data = {"name": "m", "pred": "p", "target": "t", "metrics": {n: {"mean": 1.0, "n": 1} for n in names}}
    (tmp_path / "m.json").write_text(json.dumps(data))
    table = report.comparison_table(report.load_results([tmp_path / "m.json"]))
    assert [c.metric for c in table.columns] == [
        "fid", "kid", "is", "lpips", "ssim", "psnr", "lpips_changed", "ssim_changed", "ssim_kept", "alpha", "zeta",
    ]


def test_directions_come_from_the_json_or_known_defaults(tmp_path, kit):
    data = {"name": "m", "pred": "p", "target": "t",
            "metrics": {**kit.metrics({"fid": (1.0, None), "ssim_kept": (0.5, None)}, directions=False),
                        "custom": {"mean": 1.0, "higher_is_better": True}, "mystery": {"mean": 2.0}}}
    (tmp_path / "m.json").write_text(json.dumps(data))
    columns = {c.metric: c for c in report.comparison_table(report.load_results([tmp_path / "m.json"])).columns}
    assert (columns["fid"].arrow, columns["ssim_kept"].arrow, columns["custom"].arrow) == ("↓", "↑", "↑")
    assert columns["mystery"].higher_is_better is None and columns["mystery"].title == "mystery"


def test_best_cells_and_baseline_verdicts(runs, kit):
    table = kit.table_for(runs)
    best = {(r.label, m) for r in table.rows for m, c in r.cells.items() if c.best}
    assert best == {("pix2pix", "fid"), ("cyclegan", "lpips"), ("cyclegan", "ssim"), ("pix2pix", "psnr")}
    worse = {(r.label, m) for r in table.rows for m, c in r.cells.items() if c.vs_baseline == "worse"}
    assert worse == {("pix2pix", "ssim"), ("cyclegan", "fid"), ("cyclegan", "psnr")}
    assert kit.row(table, "pix2pix").beats_baseline == "3/4"
    assert kit.row(table, "cyclegan").beats_baseline == "2/4"
    assert kit.row(table, "baseline").beats_baseline == "" and kit.row(table, "baseline").wins is None


def test_ties_for_best_are_all_marked(runs, kit):
    tied = kit.evaluation("cyclegan", {**kit.CYCLEGAN, "fid": (40.0, None)}, runs["cg_out"], runs["after"],
                          runs["before"], kit.baseline_json(runs["before"], runs["after"]))
    kit.write_run(runs["cg"], tied)
    table = kit.table_for(runs)
    assert [r.label for r in table.rows if r.cells["fid"].best] == ["pix2pix", "cyclegan"]


def test_default_order_puts_baselines_first(runs, kit):
    assert [r.label for r in kit.table_for(runs).rows] == ["baseline", "pix2pix", "cyclegan"]


@pytest.mark.parametrize(
    ("metric", "order"),
    [
        ("fid", ["pix2pix", "baseline", "cyclegan"]),
        ("SSIM", ["cyclegan", "baseline", "pix2pix"]),
        ("lpips", ["cyclegan", "pix2pix", "baseline"]),
        ("psnr", ["pix2pix", "baseline", "cyclegan"]),
    ],
)
def test_sort_orders_by_the_better_direction(runs, metric, order, kit):
    assert [r.label for r in kit.table_for(runs, sort=metric).rows] == order


def test_unknown_sort_metric_lists_the_available_ones(runs, kit):
    with pytest.raises(SvaiError, match="fid, lpips, ssim, psnr"):
        kit.table_for(runs, sort="accuracy")


def test_rows_without_the_sort_metric_go_last(runs, kit):
    data = json.loads((runs["cg"] / "evaluation.json").read_text())
    del data["metrics"]["fid"]
    kit.write_run(runs["cg"], data)
    assert [r.label for r in kit.table_for(runs, sort="fid").rows][-1] == "cyclegan"


def test_preferred_order_places_every_known_metric_once():
    from svai.metrics.specs import metric_names

    assert sorted(report.PREFERRED_ORDER) == sorted(metric_names())
    assert report.REGION_SUFFIXES == ("_changed", "_kept")

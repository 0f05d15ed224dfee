"""svai.report.grid: which images a grid shows, its layout, and the PNG it writes."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from svai import report
from svai.errors import SvaiError


@pytest.mark.parametrize(("cell", "resample"), [(64, Image.Resampling.NEAREST), (32, Image.Resampling.LANCZOS)])
def test_grid_layout_and_cells_equal_the_resized_sources(runs, cell, resample, kit):
    rows = report.load_results([runs["p2p"], runs["cg"]])
    ids = ["syn-000004", "sub/dir/img", "syn-000000.png"]
    grid = report.image_grid(rows, ids=ids, cell=cell)
    bar = grid.height - 3 * cell
    assert grid.width == 4 * cell and bar == report.title_bar_height(cell) and 0 < bar < cell
    folders = [runs["before"], runs["p2p_out"], runs["cg_out"], runs["after"]]
    for r, image_id in enumerate(["syn-000004", "sub/dir/img", "syn-000000"]):
        for c, folder in enumerate(folders):
            source = next(folder.glob(f"{image_id}.*"))
            expected = np.asarray(kit.load_rgb(source).resize((cell, cell), resample))
            box = (c * cell, bar + r * cell, (c + 1) * cell, bar + (r + 1) * cell)
            np.testing.assert_array_equal(np.asarray(grid.crop(box)), expected)


def test_grid_titles_are_drawn_over_every_column(runs):
    grid = report.image_grid(report.load_results([runs["p2p"], runs["cg"]]), k=1, cell=64)
    strip = np.asarray(grid)[: report.title_bar_height(64)]
    for c in range(4):
        assert (strip[:, c * 64 + 8: (c + 1) * 64 - 8] < 100).any(), f"no title text over column {c}"


def test_grid_spreads_ids_over_the_common_sorted_set(runs, kit):
    plan = report.plan_grid(report.load_results([runs["p2p"], runs["cg"]]), k=3)
    common = sorted(kit.IDS)
    assert plan.ids[0] == common[0] and plan.ids[-1] == common[-1]
    assert len(set(plan.ids)) == 3 and plan.ids == sorted(plan.ids)
    assert plan.titles == ["before", "pix2pix", "cyclegan", "real after"]


def test_spread_properties():
    items = [f"{i:02d}" for i in range(10)]
    for k in range(1, 12):
        chosen = report.spread(items, k)
        assert len(chosen) == min(k, 10) and chosen == sorted(set(chosen))
    assert report.spread(items, 2) == ["00", "09"]


def test_grid_without_before_folder_leaves_the_column_out_with_a_warning(runs, kit):
    for key, name, values, out in (("p2p", "pix2pix", kit.PIX2PIX, "p2p_out"), ("cg", "cyclegan", kit.CYCLEGAN, "cg_out")):
        kit.write_run(runs[key], kit.evaluation(name, values, runs[out], runs["after"], None, None))
    rows = report.load_results([runs["p2p"], runs["cg"]])
    plan = report.plan_grid(rows, k=2)
    assert plan.titles == ["pix2pix", "cyclegan", "real after"]
    assert any("before" in warning for warning in plan.warnings)
    assert report.plan_grid(rows, k=2, before_dir=runs["before"]).titles[0] == "before"


def test_grid_unknown_id_and_missing_folder_are_errors(runs):
    rows = report.load_results([runs["p2p"], runs["cg"]])
    with pytest.raises(SvaiError, match="nope"):
        report.plan_grid(rows, ids=["nope"])
    shutil.rmtree(runs["cg_out"])
    with pytest.raises(SvaiError, match=str(runs["cg_out"])):
        report.plan_grid(rows)


def test_save_png_is_atomic_and_readable(runs, tmp_path, kit):
    grid = report.image_grid(report.load_results([runs["p2p"]]), k=2, cell=32)
    target = tmp_path / "grids" / "g.png"
    report.save_png(grid, target)
    assert kit.load_rgb(target).size == grid.size
    assert [p.name for p in target.parent.iterdir()] == ["g.png"]

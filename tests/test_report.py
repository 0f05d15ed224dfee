"""svai.report: loading results, the comparison table, its text formats, grids and the HTML report.

Every expectation below is worked out by hand from the fixture numbers:

            fid ↓   lpips ↓   ssim ↑        psnr ↑
baseline    60      0.25      0.82 ± 0.05   23.0 ± 2.0
pix2pix     40      0.20      0.80 ± 0.05   24.0 ± 2.0     better on fid, lpips, psnr: 3/4
cyclegan    65      0.15      0.85 ± 0.04   22.0 ± 1.5     better on lpips, ssim:      2/4

Best: fid pix2pix, lpips cyclegan, ssim cyclegan, psnr pix2pix.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from svai import report
from svai.errors import SvaiError

IDS = [f"syn-{i:06d}" for i in range(9)] + ["sub/dir/img"]
SIZE = 48

BASELINE = {"fid": (60.0, None), "lpips": (0.25, 0.03), "ssim": (0.82, 0.05), "psnr": (23.0, 2.0)}
PIX2PIX = {"fid": (40.0, None), "lpips": (0.20, 0.03), "ssim": (0.80, 0.05), "psnr": (24.0, 2.0)}
CYCLEGAN = {"fid": (65.0, None), "lpips": (0.15, 0.02), "ssim": (0.85, 0.04), "psnr": (22.0, 1.5)}
HIGHER = {"fid": False, "lpips": False, "ssim": True, "psnr": True}


def metrics(values: dict, n: int = 10, directions: bool = True) -> dict:
    out = {}
    for name, (mean, std) in values.items():
        entry: dict = {"mean": mean, "n": n, "per_image": {image_id: mean for image_id in IDS}}
        if std is not None:
            entry["std"] = std
        if directions:
            entry["higher_is_better"] = HIGHER[name]
        out[name] = entry
    return out


def write_images(folder: Path, seed: int, ext: str = ".png", ids: list[str] = IDS) -> Path:
    """Random noise images, different in every folder and for every id."""
    rng = np.random.default_rng(seed)
    for image_id in ids:
        path = folder / f"{image_id}{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(path)
    return folder


def evaluation(name: str, values: dict, pred: Path, target: Path, before: Path | None, baseline: dict | None) -> dict:
    return {
        "svai_version": "0.1.0", "name": name, "role": "model",
        "pred": str(pred), "target": str(target), "masks": None, "before": str(before) if before else None,
        "metrics": metrics(values), "baseline": baseline,
        "unavailable": {"is": "no Inception weights: run `svai weights fetch`"},
        "unmatched": {"pred_only": [], "target_only": []}, "skipped": [],
        "settings": {"ssim": {"window": 11, "gaussian": True}, "fid_dims": 2048, "lpips_net": "alex"},
        "weights": {"inception": "6726825d"}, "versions": {"torch": "2.4.0"},
    }


def baseline_json(before: Path, target: Path, values: dict = BASELINE) -> dict:
    return {"name": "baseline", "role": "baseline", "pred": str(before), "target": str(target),
            "metrics": metrics(values)}


def write_run(folder: Path, data: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "evaluation.json").write_text(json.dumps(data, indent=1))
    (folder / "config.yaml").write_text("model: {name: x}\n")
    return folder


@pytest.fixture()
def runs(tmp_path: Path) -> dict:
    before = write_images(tmp_path / "data" / "before", 1)
    after = write_images(tmp_path / "data" / "after", 2)
    p2p_out = write_images(tmp_path / "out" / "p2p", 3)
    cg_out = write_images(tmp_path / "out" / "cg", 4, ext=".jpg")  # matched by id, whatever the extension
    base = baseline_json(before, after)
    p2p = write_run(tmp_path / "runs" / "p2p", evaluation("pix2pix", PIX2PIX, p2p_out, after, before, base))
    cg = write_run(tmp_path / "runs" / "cg", evaluation("cyclegan", CYCLEGAN, cg_out, after, before, base))
    return {"p2p": p2p, "cg": cg, "before": before, "after": after,
            "p2p_out": p2p_out, "cg_out": cg_out, "tmp": tmp_path}


def table_for(runs: dict, sort: str | None = None) -> report.ComparisonTable:
    return report.comparison_table(report.load_results([runs["p2p"], runs["cg"]]), sort=sort)


def row(table: report.ComparisonTable, label: str) -> report.TableRow:
    return next(r for r in table.rows if r.label == label)


# ---------------------------------------------------------------------------------- loading


def test_embedded_baseline_shared_by_two_runs_is_one_row(runs):
    rows = report.load_results([runs["p2p"], runs["cg"]])
    assert [(r["_label"], r["role"]) for r in rows] == [
        ("pix2pix", "model"), ("baseline", "baseline"), ("cyclegan", "model"),
    ]
    assert all(r["_baseline"] == "baseline" for r in rows if r["role"] == "model")


def test_baseline_json_file_for_the_same_folders_is_deduplicated(runs):
    standalone = runs["tmp"] / "baseline.json"
    standalone.write_text(json.dumps(baseline_json(runs["before"], runs["after"])))
    rows = report.load_results([standalone, runs["p2p"], runs["cg"]])
    assert sum(r["role"] == "baseline" for r in rows) == 1


def test_same_file_given_as_folder_and_json_is_read_once(runs):
    rows = report.load_results([runs["p2p"], runs["p2p"] / "evaluation.json"])
    assert [r["_label"] for r in rows] == ["pix2pix", "baseline"]


def test_conflicting_baselines_for_the_same_folders_keep_the_first_with_a_note(runs):
    other = evaluation("cyclegan", CYCLEGAN, runs["cg_out"], runs["after"], runs["before"],
                       baseline_json(runs["before"], runs["after"], {**BASELINE, "fid": (61.0, None)}))
    write_run(runs["cg"], other)
    table = table_for(runs)
    assert row(table, "baseline").cells["fid"].mean == 60.0
    assert any("different numbers" in note for note in table.notes)


def test_different_targets_give_two_baselines_and_a_warning(runs, tmp_path):
    other_after = write_images(tmp_path / "data2" / "after", 5)
    cg = evaluation("cyclegan", CYCLEGAN, runs["cg_out"], other_after, runs["before"],
                    baseline_json(runs["before"], other_after, {**BASELINE, "fid": (70.0, None)}))
    write_run(runs["cg"], cg)
    rows = report.load_results([runs["p2p"], runs["cg"]])
    baselines = [r["_label"] for r in rows if r["role"] == "baseline"]
    assert len(baselines) == 2 and len(set(baselines)) == 2
    links = {r["_label"]: r["_baseline"] for r in rows if r["role"] == "model"}
    assert links["pix2pix"] != links["cyclegan"] and set(links.values()) == set(baselines)
    table = report.comparison_table(rows)
    assert len(table.warnings) >= 1 and "not comparable" in table.warnings[0]
    # cyclegan fid 65 beats its own baseline (70), not pix2pix's (60).
    assert row(table, "cyclegan").cells["fid"].vs_baseline == "better"


def test_two_runs_with_the_same_name_get_distinct_labels(runs, tmp_path):
    copy = write_run(tmp_path / "runs" / "p2p-long", json.loads((runs["p2p"] / "evaluation.json").read_text()))
    labels = [r["_label"] for r in report.load_results([runs["p2p"], copy])]
    assert labels == ["pix2pix (p2p)", "baseline", "pix2pix (p2p-long)"]


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda d: d / "missing", "does not exist"),
        (lambda d: d, "without evaluation.json"),
        (lambda d: (d / "bad.json").write_text("{not json") and d / "bad.json", "not valid JSON"),
        (lambda d: (d / "other.json").write_text('{"a": 1}') and d / "other.json", "not an svai evaluation JSON"),
    ],
)
def test_bad_inputs_are_one_line_errors_naming_the_path(tmp_path, make, expected):
    path = make(tmp_path)
    with pytest.raises(SvaiError) as caught:
        report.load_results([path])
    message = str(caught.value)
    assert expected in message and str(path) in message and "\n" not in message


def test_loading_and_reporting_leave_the_inputs_unchanged(runs, tmp_path):
    files = [runs["p2p"] / "evaluation.json", runs["cg"] / "evaluation.json"]
    digests = [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    rows = report.load_results([runs["p2p"], runs["cg"]])
    table = report.comparison_table(rows, sort="fid")
    report.html_report(rows, table, [report.image_grid(rows, k=2, cell=32)], tmp_path / "r.html")
    assert [hashlib.sha256(f.read_bytes()).hexdigest() for f in files] == digests


# ---------------------------------------------------------------------------------- the table


def test_column_order_preferred_then_regions_then_alphabetical(tmp_path):
    names = ["zeta", "psnr", "ssim_kept", "alpha", "fid", "ssim_changed", "kid", "lpips_changed", "is", "lpips", "ssim"]
    data = {"name": "m", "pred": "p", "target": "t", "metrics": {n: {"mean": 1.0, "n": 1} for n in names}}
    (tmp_path / "m.json").write_text(json.dumps(data))
    table = report.comparison_table(report.load_results([tmp_path / "m.json"]))
    assert [c.metric for c in table.columns] == [
        "fid", "kid", "is", "lpips", "ssim", "psnr", "lpips_changed", "ssim_changed", "ssim_kept", "alpha", "zeta",
    ]


def test_directions_come_from_the_json_or_known_defaults(tmp_path):
    data = {"name": "m", "pred": "p", "target": "t",
            "metrics": {**metrics({"fid": (1.0, None), "ssim_kept": (0.5, None)}, directions=False),
                        "custom": {"mean": 1.0, "higher_is_better": True}, "mystery": {"mean": 2.0}}}
    (tmp_path / "m.json").write_text(json.dumps(data))
    columns = {c.metric: c for c in report.comparison_table(report.load_results([tmp_path / "m.json"])).columns}
    assert (columns["fid"].arrow, columns["ssim_kept"].arrow, columns["custom"].arrow) == ("↓", "↑", "↑")
    assert columns["mystery"].higher_is_better is None and columns["mystery"].title == "mystery"


def test_best_cells_and_baseline_verdicts(runs):
    table = table_for(runs)
    best = {(r.label, m) for r in table.rows for m, c in r.cells.items() if c.best}
    assert best == {("pix2pix", "fid"), ("cyclegan", "lpips"), ("cyclegan", "ssim"), ("pix2pix", "psnr")}
    worse = {(r.label, m) for r in table.rows for m, c in r.cells.items() if c.vs_baseline == "worse"}
    assert worse == {("pix2pix", "ssim"), ("cyclegan", "fid"), ("cyclegan", "psnr")}
    assert row(table, "pix2pix").beats_baseline == "3/4"
    assert row(table, "cyclegan").beats_baseline == "2/4"
    assert row(table, "baseline").beats_baseline == "" and row(table, "baseline").wins is None


def test_ties_for_best_are_all_marked(runs):
    write_run(runs["cg"], evaluation("cyclegan", {**CYCLEGAN, "fid": (40.0, None)}, runs["cg_out"], runs["after"],
                                      runs["before"], baseline_json(runs["before"], runs["after"])))
    table = table_for(runs)
    assert [r.label for r in table.rows if r.cells["fid"].best] == ["pix2pix", "cyclegan"]


def test_default_order_puts_baselines_first(runs):
    assert [r.label for r in table_for(runs).rows] == ["baseline", "pix2pix", "cyclegan"]


@pytest.mark.parametrize(
    ("metric", "order"),
    [
        ("fid", ["pix2pix", "baseline", "cyclegan"]),
        ("SSIM", ["cyclegan", "baseline", "pix2pix"]),
        ("lpips", ["cyclegan", "pix2pix", "baseline"]),
        ("psnr", ["pix2pix", "baseline", "cyclegan"]),
    ],
)
def test_sort_orders_by_the_better_direction(runs, metric, order):
    assert [r.label for r in table_for(runs, sort=metric).rows] == order


def test_unknown_sort_metric_lists_the_available_ones(runs):
    with pytest.raises(SvaiError, match="fid, lpips, ssim, psnr"):
        table_for(runs, sort="accuracy")


def test_rows_without_the_sort_metric_go_last(runs):
    data = json.loads((runs["cg"] / "evaluation.json").read_text())
    del data["metrics"]["fid"]
    write_run(runs["cg"], data)
    assert [r.label for r in table_for(runs, sort="fid").rows][-1] == "cyclegan"


# ---------------------------------------------------------------------------------- text formats


def markdown_rows(text: str) -> tuple[list[str], dict[str, list[str]]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    split = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return split[0], {cells[0]: cells[1:] for cells in split[2:]}


def test_markdown_marks_best_worse_direction_and_std(runs):
    header, body = markdown_rows(report.format_table(table_for(runs), "markdown"))
    assert header == ["model", "fid ↓", "lpips ↓", "ssim ↑", "psnr ↑", "beats baseline"]
    fid, lpips, ssim, psnr, beats = body["pix2pix"]
    assert fid.startswith("**") and float(fid.strip("*")) == 40.0 and "±" not in fid  # fid has no std
    assert ssim.endswith("†") and not ssim.startswith("**")
    mean, std = ssim.rstrip("† ").split(" ± ")
    assert (float(mean), float(std)) == (0.80, 0.05)
    assert beats == "3/4" and body["cyclegan"][-1] == "2/4" and body["baseline"][-1] == "—"
    assert not any("†" in cell for cell in body["baseline"])


def test_n_is_shown_only_in_columns_where_it_differs(runs):
    data = json.loads((runs["cg"] / "evaluation.json").read_text())
    data["metrics"]["ssim"]["n"] = 9
    write_run(runs["cg"], data)
    _, body = markdown_rows(report.format_table(table_for(runs), "markdown"))
    assert "(n=9)" in body["cyclegan"][2] and "(n=10)" in body["pix2pix"][2]
    assert not any("n=" in cell for cells in body.values() for i, cell in enumerate(cells) if i != 2)


def test_csv_round_trip(runs):
    table = table_for(runs)
    records = {r["name"]: r for r in csv.DictReader(io.StringIO(report.format_table(table, "csv")))}
    assert list(records) == ["baseline", "pix2pix", "cyclegan"]
    for label, values in (("baseline", BASELINE), ("pix2pix", PIX2PIX), ("cyclegan", CYCLEGAN)):
        for metric, (mean, std) in values.items():
            assert float(records[label][metric]) == mean
            assert records[label][f"{metric}_std"] == ("" if std is None else repr(std))
            assert int(records[label][f"{metric}_n"]) == 10
    assert records["pix2pix"]["fid_best"] == "true" and records["cyclegan"]["fid_best"] == "false"
    assert records["cyclegan"]["fid_vs_baseline"] == "worse" and records["cyclegan"]["lpips_vs_baseline"] == "better"
    assert records["baseline"]["fid_vs_baseline"] == ""
    assert (records["pix2pix"]["baseline_wins"], records["pix2pix"]["baseline_compared"]) == ("3", "4")


def test_json_round_trip(runs):
    data = json.loads(report.format_table(table_for(runs, sort="ssim"), "json"))
    assert data["sort"] == "ssim"
    assert [(c["metric"], c["higher_is_better"]) for c in data["columns"]] == list(HIGHER.items())
    by_name = {r["name"]: r for r in data["rows"]}
    assert [r["name"] for r in data["rows"]] == ["cyclegan", "baseline", "pix2pix"]
    for label, values in (("baseline", BASELINE), ("pix2pix", PIX2PIX), ("cyclegan", CYCLEGAN)):
        assert {m: (v["mean"], v["std"]) for m, v in by_name[label]["metrics"].items()} == values
    assert by_name["pix2pix"]["beats_baseline"] == {"wins": 3, "compared": 4}
    assert by_name["baseline"]["beats_baseline"] is None
    assert by_name["cyclegan"]["metrics"]["ssim"]["best"] is True
    assert by_name["pix2pix"]["metrics"]["ssim"]["vs_baseline"] == "worse"


def test_unknown_format_is_an_error(runs):
    with pytest.raises(SvaiError, match="markdown, csv, json"):
        report.format_table(table_for(runs), "xml")


def test_rich_table_has_every_row_and_arrowed_header(runs):
    rendered = report.rich_table(table_for(runs))
    headers = [str(c.header) for c in rendered.columns]
    assert headers == ["model", "fid ↓", "lpips ↓", "ssim ↑", "psnr ↑", "beats baseline"]
    assert rendered.row_count == 3


# ---------------------------------------------------------------------------------- image grid


def load_rgb(path: Path) -> Image.Image:
    return Image.open(path).convert("RGB")


@pytest.mark.parametrize(("cell", "resample"), [(64, Image.Resampling.NEAREST), (32, Image.Resampling.LANCZOS)])
def test_grid_layout_and_cells_equal_the_resized_sources(runs, cell, resample):
    rows = report.load_results([runs["p2p"], runs["cg"]])
    ids = ["syn-000004", "sub/dir/img", "syn-000000.png"]
    grid = report.image_grid(rows, ids=ids, cell=cell)
    bar = grid.height - 3 * cell
    assert grid.width == 4 * cell and bar == report.title_bar_height(cell) and 0 < bar < cell
    folders = [runs["before"], runs["p2p_out"], runs["cg_out"], runs["after"]]
    for r, image_id in enumerate(["syn-000004", "sub/dir/img", "syn-000000"]):
        for c, folder in enumerate(folders):
            source = next(folder.glob(f"{image_id}.*"))
            expected = np.asarray(load_rgb(source).resize((cell, cell), resample))
            box = (c * cell, bar + r * cell, (c + 1) * cell, bar + (r + 1) * cell)
            np.testing.assert_array_equal(np.asarray(grid.crop(box)), expected)


def test_grid_titles_are_drawn_over_every_column(runs):
    grid = report.image_grid(report.load_results([runs["p2p"], runs["cg"]]), k=1, cell=64)
    strip = np.asarray(grid)[: report.title_bar_height(64)]
    for c in range(4):
        assert (strip[:, c * 64 + 8: (c + 1) * 64 - 8] < 100).any(), f"no title text over column {c}"


def test_grid_spreads_ids_over_the_common_sorted_set(runs):
    plan = report.plan_grid(report.load_results([runs["p2p"], runs["cg"]]), k=3)
    common = sorted(IDS)
    assert plan.ids[0] == common[0] and plan.ids[-1] == common[-1]
    assert len(set(plan.ids)) == 3 and plan.ids == sorted(plan.ids)
    assert plan.titles == ["before", "pix2pix", "cyclegan", "real after"]


def test_spread_properties():
    items = [f"{i:02d}" for i in range(10)]
    for k in range(1, 12):
        chosen = report.spread(items, k)
        assert len(chosen) == min(k, 10) and chosen == sorted(set(chosen))
    assert report.spread(items, 2) == ["00", "09"]


def test_grid_without_before_folder_leaves_the_column_out_with_a_warning(runs):
    for key, name, values, out in (("p2p", "pix2pix", PIX2PIX, "p2p_out"), ("cg", "cyclegan", CYCLEGAN, "cg_out")):
        write_run(runs[key], evaluation(name, values, runs[out], runs["after"], None, None))
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


def test_save_png_is_atomic_and_readable(runs, tmp_path):
    grid = report.image_grid(report.load_results([runs["p2p"]]), k=2, cell=32)
    target = tmp_path / "grids" / "g.png"
    report.save_png(grid, target)
    assert load_rgb(target).size == grid.size
    assert [p.name for p in target.parent.iterdir()] == ["g.png"]


# ---------------------------------------------------------------------------------- HTML report


class Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse(path: Path) -> Collector:
    collector = Collector()
    collector.feed(path.read_text(encoding="utf-8"))
    return collector


def write_report(runs: dict, path: Path) -> tuple[Path, Image.Image]:
    rows = report.load_results([runs["p2p"], runs["cg"]])
    grid = report.image_grid(rows, k=3, cell=64)
    report.html_report(rows, report.comparison_table(rows), {"test images": grid}, path)
    return path, grid


def test_html_report_structure_and_self_containment(runs, tmp_path):
    path, grid = write_report(runs, tmp_path / "html" / "report.html")
    page = parse(path)
    tags = [tag for tag, _ in page.tags]
    assert "script" not in tags and "link" not in tags and "iframe" not in tags
    for _, attrs in page.tags:
        for name in ("src", "href"):
            assert not (attrs.get(name) or "").startswith(("http:", "https:", "//")), attrs
    images = [attrs for tag, attrs in page.tags if tag == "img"]
    assert len(images) == 1 and images[0]["src"].startswith("data:image/png;base64,")
    embedded = Image.open(io.BytesIO(base64.b64decode(images[0]["src"].split(",", 1)[1])))
    assert embedded.size == grid.size
    classes = [attrs.get("class", "") for tag, attrs in page.tags if tag == "td"]
    assert sum("best" in c.split() for c in classes) == 4 and sum("worse" in c.split() for c in classes) == 3
    text = " ".join(page.text)
    for expected in ("pix2pix", "cyclegan", "fid ↓", "3/4", "no Inception weights", "settings.lpips_net", "6726825d"):
        assert expected in text
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]


def test_html_report_escapes_names_from_the_json(runs, tmp_path):
    data = json.loads((runs["p2p"] / "evaluation.json").read_text())
    data["name"] = '<script>alert("x")</script>'
    data["unavailable"] = {"lpips": "<img src=http://example.com/x.png>"}
    write_run(runs["p2p"], data)
    path, _ = write_report(runs, tmp_path / "report.html")
    page = parse(path)
    assert "script" not in [tag for tag, _ in page.tags]
    assert [attrs["src"][:5] for tag, attrs in page.tags if tag == "img"] == ["data:"]
    assert '<script>alert("x")</script>' in "".join(page.text)
    assert 'src="http' not in path.read_text()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs headless Chromium")
def test_html_report_renders_in_chromium(runs, tmp_path):
    path, _ = write_report(runs, tmp_path / "report.html")
    shot = tmp_path / "shot.png"
    subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         f"--screenshot={shot}", "--window-size=1200,900", path.as_uri()],
        check=True, capture_output=True, timeout=120,
    )
    pixels = np.asarray(load_rgb(shot))
    assert pixels.shape == (900, 1200, 3)
    assert pixels.std() > 10
    # The noise grid only appears if the embedded PNG decoded: text alone has few colours.
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 2000

"""svai.report.formats: markdown, CSV, JSON and the terminal table, and the one cell formatter."""

from __future__ import annotations

import csv
import io
import json

import pytest

from svai import report
from svai.errors import SvaiError


def markdown_rows(text: str) -> tuple[list[str], dict[str, list[str]]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    split = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return split[0], {cells[0]: cells[1:] for cells in split[2:]}


def test_markdown_marks_best_worse_direction_and_std(runs, kit):
    header, body = markdown_rows(report.format_table(kit.table_for(runs), "markdown"))
    assert header == ["model", "fid ↓", "lpips ↓", "ssim ↑", "psnr ↑", "beats baseline"]
    fid, lpips, ssim, psnr, beats = body["pix2pix"]
    assert fid.startswith("**") and float(fid.strip("*")) == 40.0 and "±" not in fid  # fid has no std
    assert ssim.endswith("†") and not ssim.startswith("**")
    mean, std = ssim.rstrip("† ").split(" ± ")
    assert (float(mean), float(std)) == (0.80, 0.05)
    assert beats == "3/4" and body["cyclegan"][-1] == "2/4" and body["baseline"][-1] == "—"
    assert not any("†" in cell for cell in body["baseline"])


def test_n_is_shown_only_in_columns_where_it_differs(runs, kit):
    data = json.loads((runs["cg"] / "evaluation.json").read_text())
    data["metrics"]["ssim"]["n"] = 9
    kit.write_run(runs["cg"], data)
    _, body = markdown_rows(report.format_table(kit.table_for(runs), "markdown"))
    assert "(n=9)" in body["cyclegan"][2] and "(n=10)" in body["pix2pix"][2]
    assert not any("n=" in cell for cells in body.values() for i, cell in enumerate(cells) if i != 2)


def test_csv_round_trip(runs, kit):
    table = kit.table_for(runs)
    records = {r["name"]: r for r in csv.DictReader(io.StringIO(report.format_table(table, "csv")))}
    assert list(records) == ["baseline", "pix2pix", "cyclegan"]
    for label, values in (("baseline", kit.BASELINE), ("pix2pix", kit.PIX2PIX), ("cyclegan", kit.CYCLEGAN)):
        for metric, (mean, std) in values.items():
            assert float(records[label][metric]) == mean
            assert records[label][f"{metric}_std"] == ("" if std is None else repr(std))
            assert int(records[label][f"{metric}_n"]) == 10
    assert records["pix2pix"]["fid_best"] == "true" and records["cyclegan"]["fid_best"] == "false"
    assert records["cyclegan"]["fid_vs_baseline"] == "worse" and records["cyclegan"]["lpips_vs_baseline"] == "better"
    assert records["baseline"]["fid_vs_baseline"] == ""
    assert (records["pix2pix"]["baseline_wins"], records["pix2pix"]["baseline_compared"]) == ("3", "4")


def test_json_round_trip(runs, kit):
    data = json.loads(report.format_table(kit.table_for(runs, sort="ssim"), "json"))
    assert data["sort"] == "ssim"
    assert [(c["metric"], c["higher_is_better"]) for c in data["columns"]] == list(kit.HIGHER.items())
    by_name = {r["name"]: r for r in data["rows"]}
    assert [r["name"] for r in data["rows"]] == ["cyclegan", "baseline", "pix2pix"]
    for label, values in (("baseline", kit.BASELINE), ("pix2pix", kit.PIX2PIX), ("cyclegan", kit.CYCLEGAN)):
        assert {m: (v["mean"], v["std"]) for m, v in by_name[label]["metrics"].items()} == values
    assert by_name["pix2pix"]["beats_baseline"] == {"wins": 3, "compared": 4}
    assert by_name["baseline"]["beats_baseline"] is None
    assert by_name["cyclegan"]["metrics"]["ssim"]["best"] is True
    assert by_name["pix2pix"]["metrics"]["ssim"]["vs_baseline"] == "worse"


def test_unknown_format_is_an_error(runs, kit):
    with pytest.raises(SvaiError, match="markdown, csv, json"):
        report.format_table(kit.table_for(runs), "xml")


def test_rich_table_has_every_row_and_arrowed_header(runs, kit):
    rendered = report.rich_table(kit.table_for(runs))
    headers = [str(c.header) for c in rendered.columns]
    assert headers == ["model", "fid ↓", "lpips ↓", "ssim ↑", "psnr ↑", "beats baseline"]
    assert rendered.row_count == 3


@pytest.mark.parametrize(
    ("mean", "std", "n", "inline", "detail"),
    [
        (0.8, 0.05, None, "0.800 ± 0.050", "±0.050"),
        (24.0, None, 9, "24.000 (n=9)", "n=9"),
        (1.0, 0.25, 9, "1.000 ± 0.250 (n=9)", "±0.250 n=9"),
        (float("inf"), None, None, "inf", ""),
        (-float("inf"), 0.0, None, "-inf ± 0.000", "±0.000"),
        (None, 0.1, 3, "—", ""),  # no mean: nothing else is shown
    ],
)
def test_one_summary_formatter_for_every_layout(mean, std, n, inline, detail):
    text = report.summary_text(mean, std, 3, n)
    assert text.inline() == inline and text.detail() == detail
    assert text.detail("± ") == detail.replace("±", "± ")


def test_every_format_shows_the_same_cell_text(runs, kit):
    table = kit.table_for(runs)
    ssim = next(c for c in table.columns if c.metric == "ssim")
    cell = kit.row(table, "cyclegan").cells["ssim"]
    assert report.cell_text(cell, ssim) == "0.8500 ± 0.0400"
    _, body = markdown_rows(report.format_table(table, "markdown"))
    assert body["cyclegan"][2] == "**0.8500 ± 0.0400**"
    rich_cell = list(report.rich_table(table).columns[3].cells)[2]
    assert rich_cell.plain == "0.8500\n±0.0400"
    page = report.report_html(report.load_results([runs["p2p"], runs["cg"]]), table, [])
    assert '0.8500<br><span class="std">± 0.0400</span>' in page

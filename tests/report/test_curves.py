"""svai.report.curves: loss curves from log.jsonl as inline SVG, sample grids over training, and
the environment differences the report and `svai compare` show."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.support.html import collect
from svai import report
from svai.cli import app
from svai.report import curves

SVG = "{http://www.w3.org/2000/svg}"


def write_history(run: Path, steps: int = 6, sample_every: int = 2, scale: float = 1.0) -> list[dict]:
    records = [{"step": s, "lr_factor": 1.0, "G_l1": scale / s, "D": 0.5 + 0.01 * s, "images_per_s": 30.0}
               for s in range(1, steps + 1)]
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 7, "G_l')
    (run / "samples").mkdir()
    rng = np.random.default_rng(0)
    for step in range(sample_every, steps + 1, sample_every):
        Image.fromarray(rng.integers(0, 256, (400, 300, 3), dtype=np.uint8)).save(run / "samples" / f"step-{step:08d}.png")
    return records


def test_nice_ticks_are_round_and_cover_the_range() -> None:
    assert curves.nice_ticks(0.27, 0.57) == [0.2, 0.3, 0.4, 0.5, 0.6]
    assert curves.nice_ticks(0.0, 1.0) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert curves.nice_ticks(1, 6) == [0, 2, 4, 6]
    assert curves.nice_ticks(3.0, 3.0) == pytest.approx([2.6, 2.8, 3.0, 3.2, 3.4])


def test_line_chart_maps_values_to_the_plot_area() -> None:
    svg = ET.fromstring(curves.line_chart("G_l1", [("a", [(0.0, 0.0), (5.0, 0.5), (10.0, 1.0)]),
                                                   ("b", [(0.0, 1.0), (10.0, 0.0)])], width=520, height=240))
    lines = svg.findall(f"{SVG}polyline")
    assert [line.get("data-run") for line in lines] == ["a", "b"]
    a = [tuple(map(float, point.split(","))) for point in lines[0].get("points").split()]
    # Plot area: x from 58 to 508, y from 30 (value 1) to 206 (value 0).
    assert a == [(58.0, 206.0), (283.0, 118.0), (508.0, 30.0)]
    b = [tuple(map(float, point.split(","))) for point in lines[1].get("points").split()]
    assert b == [(58.0, 30.0), (508.0, 206.0)]
    ticks = [t.text for t in svg.findall(f"{SVG}text") if t.get("class") == "tick"]
    assert {"0", "0.25", "0.5", "0.75", "1", "step", "a", "b"} <= set(ticks)
    assert curves.line_chart("empty", [("a", [])]) == ""
    single = ET.fromstring(curves.line_chart("one", [("a", [(3.0, 2.0)])]))
    assert len(single.findall(f"{SVG}circle")) == 1 and not single.findall(f"{SVG}polyline")


def test_long_logs_are_averaged_over_equal_windows() -> None:
    points = [(float(i), float(i % 2)) for i in range(1200)]
    thinned = curves.thin(points, limit=600)
    assert len(thinned) == 600
    assert thinned[0] == (0.5, 0.5) and thinned[-1] == (1198.5, 0.5)
    assert curves.thin(points[:10], limit=600) == points[:10]


def test_histories_come_from_run_folders_only(runs: dict) -> None:
    records = write_history(runs["p2p"])
    rows = report.load_results([runs["p2p"], runs["cg"]])
    [history] = curves.load_histories(rows)
    assert history.label == "pix2pix" and history.run_dir == runs["p2p"]
    assert history.records == records  # the torn last line is left out
    assert [step for step, _ in history.samples] == [2, 4, 6]
    assert history.series("G_l1") == [(float(r["step"]), r["G_l1"]) for r in records]
    assert curves.chart_keys([history]) == ["G_l1", "D", "lr_factor", "images_per_s"]


def environment_file(run: Path, **fields) -> None:
    base = {"svai_version": "0.1.0", "torch": "2.4.0", "accelerate": "1.0.0", "device": "cpu", "precision": "no",
            "seed": 0, "command": f"svai train --out {run.name}", "started": "2025-01-01T00:00:00Z"}
    (run / "environment.json").write_text(json.dumps({**base, **fields}))


def test_the_report_draws_each_runs_curves_and_samples_over_training(runs: dict, tmp_path: Path) -> None:
    write_history(runs["p2p"], steps=14, sample_every=2)  # 7 grids: 6 are shown, first and last included
    write_history(runs["cg"], steps=6, scale=2.0)
    environment_file(runs["p2p"])
    environment_file(runs["cg"], torch="2.5.1", device="cuda (NVIDIA H100)")
    rows = report.load_results([runs["p2p"], runs["cg"]])
    path = tmp_path / "report.html"
    report.html_report(rows, report.comparison_table(rows), {}, path, histories=report.load_histories(rows))
    text = path.read_text(encoding="utf-8")
    page = collect(text)
    svgs = re.findall(r"<svg .*?</svg>", text, flags=re.S)
    assert len(svgs) == 4  # G_l1, D, the learning-rate factor, images per second
    for svg in svgs:
        assert [line.get("data-run") for line in ET.fromstring(svg).iter(f"{SVG}polyline")] == ["pix2pix", "cyclegan"]
    samples = [attrs for tag, attrs in page.tags if tag == "img"]
    assert [a["alt"] for a in samples] == [f"pix2pix samples at step {s}" for s in (2, 4, 6, 10, 12, 14)] + \
        [f"cyclegan samples at step {s}" for s in (2, 4, 6)]
    assert all(a["src"].startswith("data:image/png;base64,") and int(a["height"]) == 240 for a in samples)
    words = " ".join(" ".join(page.text).split())
    assert "Runs differ in: torch: 2.4.0 (pix2pix), 2.5.1 (cyclegan)" in words
    assert "Runs differ in: device: cpu (pix2pix), cuda (NVIDIA H100) (cyclegan)" in words
    assert "environment.command" in words and "svai train --out p2p" in words
    assert "http:" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_a_report_without_histories_has_no_training_section(runs: dict) -> None:
    rows = report.load_results([runs["p2p"], runs["cg"]])
    text = report.report_html(rows, report.comparison_table(rows), {}, report.load_histories(rows))
    assert "<svg" not in text and "Training</h2>" not in text and "Runs differ in" not in text


def test_compare_prints_what_differs_under_the_table(runs: dict) -> None:
    environment_file(runs["p2p"])
    environment_file(runs["cg"], precision="bf16", seed=3)
    result = CliRunner().invoke(app, ["compare", str(runs["p2p"]), str(runs["cg"])])
    assert result.exit_code == 0, result.output
    footer = result.stdout[result.stdout.index("runs differ in:"):].splitlines()
    assert footer[1:] == ["  precision: no (pix2pix), bf16 (cyclegan)", "  seed: 0 (pix2pix), 3 (cyclegan)"]
    csv_out = CliRunner().invoke(app, ["compare", str(runs["p2p"]), str(runs["cg"]), "--format", "csv"])
    assert csv_out.exit_code == 0 and "differ" not in csv_out.stdout

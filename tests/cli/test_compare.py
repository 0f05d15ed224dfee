"""`svai compare` end to end through the CLI: outputs on stdout, messages on stderr, exit codes."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from svai.cli import app

IDS = ["a", "b", "c"]


def images(folder: Path, value: int) -> Path:
    folder.mkdir(parents=True)
    for image_id in IDS:
        Image.fromarray(np.full((16, 16, 3), value, dtype=np.uint8)).save(folder / f"{image_id}.png")
    return folder


def run(folder: Path, name: str, ssim: float, fid: float, pred: Path, target: Path, before: Path) -> Path:
    def metrics(ssim: float, fid: float) -> dict:
        return {"ssim": {"mean": ssim, "std": 0.01, "n": 3, "higher_is_better": True},
                "fid": {"mean": fid, "n": 3, "higher_is_better": False}}

    data = {
        "svai_version": "0.1.0", "name": name, "role": "model", "pred": str(pred), "target": str(target),
        "masks": None, "before": str(before), "metrics": metrics(ssim, fid),
        "baseline": {"name": "baseline", "role": "baseline", "pred": str(before), "target": str(target),
                     "metrics": metrics(0.70, 50.0)},
        "unavailable": {}, "unmatched": {"pred_only": [], "target_only": []}, "skipped": [],
        "settings": {}, "weights": {}, "versions": {},
    }
    folder.mkdir(parents=True)
    (folder / "evaluation.json").write_text(json.dumps(data))
    return folder


@pytest.fixture()
def two_runs(tmp_path: Path) -> list[str]:
    before, after = images(tmp_path / "before", 10), images(tmp_path / "after", 200)
    return [
        str(run(tmp_path / "runs" / "a", "alpha", 0.75, 40.0, images(tmp_path / "pa", 90), after, before)),
        str(run(tmp_path / "runs" / "b", "beta", 0.65, 30.0, images(tmp_path / "pb", 120), after, before)),
    ]


def invoke(*args: str):
    return CliRunner().invoke(app, ["compare", *args])


def test_markdown_table_on_stdout(two_runs):
    result = invoke(*two_runs, "--format", "markdown", "--sort", "ssim")
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert rows[0] == "| model | fid ↓ | ssim ↑ | beats baseline |"
    assert [r.split("|")[1].strip() for r in rows[2:]] == ["alpha", "baseline", "beta"]
    beta = rows[-1]
    assert "**" in beta.split("|")[2] and "†" in beta.split("|")[3] and beta.split("|")[4].strip() == "1/2"


def test_csv_and_json_stdout_parse_back(two_runs):
    result = invoke(*two_runs, "--format", "csv")
    assert result.exit_code == 0
    records = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(r["name"], float(r["fid"])) for r in records] == [("baseline", 50.0), ("alpha", 40.0), ("beta", 30.0)]
    result = invoke(*two_runs, "-f", "json")
    assert [r["name"] for r in json.loads(result.stdout)["rows"]] == ["baseline", "alpha", "beta"]


def test_terminal_table_shows_every_row(two_runs):
    result = invoke(*two_runs)
    assert result.exit_code == 0
    for text in ("alpha", "beta", "baseline", "ssim ↑", "fid ↓"):
        assert text in result.stdout


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--sort", "accuracy"], "fid, ssim"),
        (["--format", "xml"], "--format"),
        (["--grid", "grid.jpg"], ".png"),
        (["--grid", "g.png", "--ids", "a,zz"], "zz"),
        (["--rows", "0", "--grid", "g.png"], "--rows"),
    ],
)
def test_option_errors_exit_2_with_one_line(two_runs, tmp_path, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    result = invoke(*two_runs, *extra)
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_missing_result_exits_2_naming_it(tmp_path):
    missing = tmp_path / "nowhere"
    result = invoke(str(missing))
    assert result.exit_code == 2
    assert "does not exist" in result.stderr and "nowhere" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_grid_and_report_files(two_runs, tmp_path):
    grid, page = tmp_path / "out" / "grid.png", tmp_path / "out" / "report.html"
    result = invoke(*two_runs, "--grid", str(grid), "--rows", "2", "--cell", "32", "--report", str(page))
    assert result.exit_code == 0, result.output
    with Image.open(grid) as image:
        assert image.width == 4 * 32 and image.height > 2 * 32
    html = page.read_text()
    assert "data:image/png;base64," in html and 'src="http' not in html
    assert str(grid) in result.stderr and str(page) in result.stderr

"""svai.report.html: the self-contained HTML page, its structure and its escaping."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.html import Collector, collect
from svai import report


def parse(path: Path) -> Collector:
    return collect(path.read_text(encoding="utf-8"))


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


def test_html_report_escapes_names_from_the_json(runs, tmp_path, kit):
    data = json.loads((runs["p2p"] / "evaluation.json").read_text())
    data["name"] = '<script>alert("x")</script>'
    data["unavailable"] = {"lpips": "<img src=http://example.com/x.png>"}
    kit.write_run(runs["p2p"], data)
    path, _ = write_report(runs, tmp_path / "report.html")
    page = parse(path)
    assert "script" not in [tag for tag, _ in page.tags]
    assert [attrs["src"][:5] for tag, attrs in page.tags if tag == "img"] == ["data:"]
    assert '<script>alert("x")</script>' in "".join(page.text)
    assert 'src="http' not in path.read_text()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs headless Chromium")
def test_html_report_renders_in_chromium(runs, tmp_path, kit):
    path, _ = write_report(runs, tmp_path / "report.html")
    shot = tmp_path / "shot.png"
    subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         f"--screenshot={shot}", "--window-size=1200,900", path.as_uri()],
        check=True, capture_output=True, timeout=120,
    )
    pixels = np.asarray(kit.load_rgb(shot))
    assert pixels.shape == (900, 1200, 3)
    assert pixels.std() > 10
    # The noise grid only appears if the embedded PNG decoded: text alone has few colours.
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 2000

"""The compare report of two trained runs in headless Chromium: the loss curves render and no
request leaves the machine (the page is one file; everything else is inline).

Skipped where no Chromium is installed (Debian: apt-get install chromium) or without the
websocket-client package.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest

pytest.importorskip("websocket", reason="the browser test drives Chromium with websocket-client")

from tests.support.cli import run_ok  # noqa: E402
from tests.support.devtools import Chromium, find_browser  # noqa: E402

BROWSER = find_browser()
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no Chromium here (Debian: apt-get install chromium)")

TINY = ["--image-size", "32", "--set", "model.ngf=8", "--set", "model.ndf=8", "--set", "train.log_every=1",
        "--set", "train.sample_every=2", "--set", "train.sample_count=2"]



@pytest.fixture(scope="module")
def report_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("browser-report")
    data = root / "data"
    run_ok("prepare", "synthetic", data, "--count", "12", "--size", "32", "--seed", "1", "--test-fraction", "0.25")
    for name, seed in (("first", 0), ("second", 1)):
        run_ok("train", "--model", "pix2pix", "--data", data, "--out", root / "runs" / name, "--steps", "4",
               "--seed", seed, *TINY)
    page = root / "report.html"
    run_ok("compare", root / "runs" / "first", root / "runs" / "second", "--report", page)
    return page


def test_the_report_shows_both_runs_curves_offline(report_file: Path, tmp_path: Path) -> None:
    assert BROWSER is not None
    browser = Chromium(BROWSER, tmp_path / "profile")
    try:
        page = browser.page()
        for domain in ("Network", "Page", "Runtime", "Log"):
            page.call(f"{domain}.enable")
        page.call("Page.navigate", url=report_file.as_uri())
        page.wait_for("document.readyState === 'complete'")
        charts = page.evaluate("document.querySelectorAll('svg.chart').length")
        runs = page.evaluate("[...new Set([...document.querySelectorAll('svg.chart polyline')]"
                             ".map(p => p.dataset.run))]")
        # Every line is drawn: a real box on the page, inside its chart.
        boxes = page.evaluate("[...document.querySelectorAll('svg.chart polyline')].map(p => {"
                              " const b = p.getBoundingClientRect(); return [b.width, b.height]; })")
        titles = page.evaluate("[...document.querySelectorAll('svg.chart text.title')].map(t => t.textContent)")
        samples = page.evaluate("[...document.querySelectorAll('.samples img')].map(i => i.naturalWidth)")
        urls = page.requested_urls()
        page.close()
    finally:
        browser.close()
    assert {"G_l1", "G_gan", "D", "learning-rate factor", "images per second"} <= set(titles)
    assert charts == len(titles) and sorted(runs) == ["pix2pix (first)", "pix2pix (second)"]
    assert len(boxes) == 2 * charts and all(width > 100 for width, _ in boxes)
    assert len(samples) == 4 and all(width == 3 * 32 for width in samples)  # steps 2 and 4 of each run
    problems = [e["params"] for e in page.events
                if (e["method"] == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
                or e["method"] == "Runtime.exceptionThrown"]
    assert problems == []
    # The page itself, then only data: URIs: no host is ever asked for anything.
    assert urls and urls[0] == report_file.as_uri()
    assert all(urlsplit(url).scheme in ("file", "data") for url in urls), urls
    assert [url for url in urls if urlsplit(url).scheme == "file"] == [report_file.as_uri()]
    assert {urlsplit(url).hostname for url in urls} <= {None, ""}

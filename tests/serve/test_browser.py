"""The consultation page in a real browser: headless Chromium driven over the DevTools protocol.

Skipped where no Chromium is installed (Debian: apt-get install chromium) or without the
websocket-client package; `.ci/run` installs Chromium where apt-get can.
"""

from __future__ import annotations

import io
import json
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("websocket", reason="the browser test drives Chromium with websocket-client")
pytest.importorskip("uvicorn", reason="svai serve needs the app extra: pip install 'svai[app]'")

from serve.devtools import Chromium, Page, find_browser  # noqa: E402  (tests/serve/devtools.py)
from serve.support import LiveServer, face_jpeg  # noqa: E402  (tests/serve/support.py)

BROWSER = find_browser()
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no Chromium here (Debian: apt-get install chromium)")

READY = "document.body?.dataset.state === 'ready' && document.body.dataset.result"


def fetch_png(url: str) -> np.ndarray:
    with urllib.request.urlopen(url, timeout=30) as response:
        return np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB")).astype(int)


def set_range(page: Page, element: str, value: float) -> None:
    """Move a slider as a hand would: the value, then its input and change events."""
    page.evaluate(f"(() => {{ const s = document.getElementById('{element}'); s.value = '{value}';"
                  " s.dispatchEvent(new Event('input')); s.dispatchEvent(new Event('change')); })()")


def next_result(page: Page, previous: str) -> str:
    return page.wait_for(f"{READY} !== '{previous}' && document.body.dataset.state === 'ready' "
                         "&& document.body.dataset.result")


def test_a_consultation_in_headless_chromium(live_server: LiveServer, tmp_path: Path) -> None:
    photo = face_jpeg(1200, 1600, orientation=6, seed=1)
    picture = tmp_path / "patient.jpg"
    picture.write_bytes(photo.data)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    assert BROWSER is not None
    browser = Chromium(BROWSER, tmp_path / "profile")
    try:
        page = browser.page()
        for domain in ("Network", "Page", "DOM", "Runtime", "Log"):
            page.call(f"{domain}.enable")
        page.call("Page.setDownloadBehavior", behavior="allow", downloadPath=str(downloads))
        page.call("Page.navigate", url=live_server.url + "/")
        page.wait_for("document.body?.dataset.state === 'idle'")
        # Two runs: the model menu shows; the first takes procedures, the second does not.
        assert page.evaluate("document.getElementById('model-section').hidden") is False
        assert page.evaluate("[...document.querySelectorAll('#procedures input')].map(i => i.value)") == \
            ["eyes", "nose", "jaw"]
        page.evaluate("(() => { const m = document.getElementById('model'); m.value = '2';"
                      " m.dispatchEvent(new Event('change')); })()")
        assert page.evaluate("document.getElementById('procedures-section').hidden") is True
        page.evaluate("(() => { const m = document.getElementById('model'); m.value = '1';"
                      " m.dispatchEvent(new Event('change')); })()")
        assert page.evaluate("document.getElementById('procedures-section').hidden") is False

        # Upload: the page simulates at once with the default settings.
        page.set_file("#file", picture)
        first = page.wait_for(READY)
        # Tick a procedure, move the intensity to 0, simulate.
        page.evaluate("document.querySelector('#procedures input[value=nose]').click()")
        set_range(page, "intensity", 0)
        page.evaluate("document.getElementById('simulate').click()")
        zero = next_result(page, first)
        before = fetch_png(page.evaluate("document.getElementById('side-before').src"))
        after_zero = fetch_png(page.evaluate("document.getElementById('side-after').src"))
        assert np.array_equal(after_zero, before)  # intensity 0: the photo itself
        # Back to full intensity: the result appears and differs from the photo.
        set_range(page, "intensity", 1)
        full = next_result(page, zero)
        after_full = fetch_png(page.evaluate("document.getElementById('side-after').src"))
        assert after_full.shape == before.shape and np.abs(after_full - before).mean() > 2
        assert page.evaluate("document.getElementById('compare-after').naturalWidth") == before.shape[1]
        assert page.evaluate("document.getElementById('results').hidden") is False
        # The whole-photo view: the upright photo, 1600 px tall at most.
        page.evaluate("document.querySelector('input[name=view][value=photo]').click()")
        page.wait_for("document.getElementById('side-after').src.endsWith('view=photo') && "
                      "document.getElementById('side-after').complete")
        assert page.evaluate("[document.getElementById('compare-before').naturalWidth,"
                             " document.getElementById('compare-before').naturalHeight]") == [1200, 1600]
        # The comparison divider follows its slider.
        set_range(page, "split", 30)
        assert page.evaluate("document.getElementById('compare-clip').style.clipPath") == "inset(0px 0px 0px 30%)"

        shot = page.screenshot(tmp_path / "consultation.png")
        image = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB"))
        assert image.shape[1] > 1000 and image.std() > 20 and len(np.unique(image.reshape(-1, 3), axis=0)) > 500

        # Save: a before | simulation PNG with no metadata lands in the downloads.
        page.evaluate("document.getElementById('save').click()")
        deadline = time.monotonic() + 20
        saved: list[Path] = []
        while not saved and time.monotonic() < deadline:
            saved = [p for p in downloads.glob("*.png")]
            time.sleep(0.1)
        assert len(saved) == 1, list(downloads.iterdir())
        exported = Image.open(saved[0])
        assert not exported.info and exported.width > 2 * before.shape[1]

        # Nothing left 127.0.0.1.
        urls = page.requested_urls()
        page.close()
    finally:
        browser.close()
    # No console errors: no refused request, no missing file, no script error.
    problems = [e["params"] for e in page.events
                if (e["method"] == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
                or e["method"] == "Runtime.exceptionThrown"
                or (e["method"] == "Runtime.consoleAPICalled" and e["params"]["type"] == "error")]
    assert problems == []
    assert len(urls) >= 10
    assert {urlsplit(url).hostname for url in urls} == {"127.0.0.1"}, urls
    assert all(url.startswith(live_server.url + "/") for url in urls), urls
    # The audit saw each simulation the page showed, the last one with the ticked procedure.
    records = [json.loads(line) for line in live_server.audit.read_text().splitlines()]
    assert len(records) >= 3
    assert records[-1]["settings"] == {"procedures": ["nose"], "intensity": 1.0, "composite": False}
    assert full != zero != first

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

from tests.support.devtools import Chromium, Page, find_browser  # noqa: E402
from tests.support.serve import LiveServer, face_jpeg  # noqa: E402

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


def click(page: Page, selector: str) -> None:
    page.evaluate(f"document.querySelector({json.dumps(selector)}).click()")


def choose_model(page: Page, model_id: str) -> None:
    page.evaluate(f"(() => {{ const m = document.getElementById('model'); m.value = '{model_id}';"
                  " m.dispatchEvent(new Event('change')); })()")


def uploads(page: Page) -> int:
    return sum(url.endswith("/api/photos") for url in page.requested_urls())


def rect(page: Page, element_id: str) -> dict:
    return page.evaluate(f"(() => {{ const r = document.getElementById('{element_id}').getBoundingClientRect();"
                         " return {left: r.left, top: r.top, right: r.right, bottom: r.bottom, width: r.width}; })()")


def test_a_consultation_in_headless_chromium(live_server: LiveServer, use_face_weights: Path, tmp_path: Path) -> None:
    """The surgeon's walk: upload, error, upload again, tick, slide, switch model and back, A/B,
    overlay, pick a face, nudge, save, tablet width; every request to 127.0.0.1."""
    from skimage import data

    astronaut = tmp_path / "patient.jpg"
    Image.fromarray(data.astronaut()).save(astronaut, quality=92)
    cup = tmp_path / "cup.jpg"
    Image.fromarray(data.coffee()).save(cup, quality=92)
    group = tmp_path / "group.jpg"
    camera = np.repeat(data.camera()[..., None], 3, axis=2)
    Image.fromarray(np.concatenate([data.astronaut(), camera], axis=1)).save(group, quality=92)
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
        assert page.evaluate("document.getElementById('drop').getAttribute('role')") == "button"
        assert page.evaluate("[...document.querySelectorAll('#procedures input[type=checkbox]')].map(i => i.value)") \
            == ["eyes", "nose", "jaw"]

        # 5. Settings are kept per model: tick nose at 0.5, switch to the other model and back.
        click(page, "#procedure-nose")
        set_range(page, "strength-nose", 0.5)
        choose_model(page, "2")
        assert page.evaluate("document.getElementById('procedures-section').hidden") is True
        choose_model(page, "1")
        assert page.evaluate("document.getElementById('procedure-nose').checked") is True
        assert page.evaluate("document.getElementById('strength-nose').value") == "0.5"

        # Upload: the page simulates at once, with the nose at 0.5.
        page.set_file("#file", astronaut)
        first = page.wait_for(READY)
        assert page.evaluate("document.getElementById('face-info').textContent").startswith("1 face")
        records = [json.loads(line) for line in live_server.audit.read_text().splitlines()]
        assert records[-1]["settings"]["procedures"] == {"nose": 0.5}

        # 1. A photo without a face: an error, and nothing of the previous patient stays on screen.
        page.set_file("#file", cup)
        page.wait_for("document.body.dataset.state === 'error'")
        assert "no face" in page.evaluate("document.getElementById('status').textContent")
        assert page.evaluate("document.getElementById('results').hidden") is True
        assert page.evaluate("document.getElementById('compare-before').getAttribute('src')") is None
        assert page.evaluate("document.getElementById('simulate').disabled") is True
        # 2. The same file again is sent again (and fails again), then the first photo again works.
        count = uploads(page)
        page.set_file("#file", cup)
        page.wait_for(f"document.body.dataset.state === 'error' && {count} < 99")
        page.wait_for("document.body.dataset.state === 'error'")
        assert uploads(page) == count + 1
        page.set_file("#file", astronaut)
        again = page.wait_for(READY)
        assert again != first

        # 3. Intensity 0: the page says plainly that nothing changed, not "Simulated".
        set_range(page, "intensity", 0)
        zero = next_result(page, again)
        assert page.evaluate("document.body.dataset.changed") == "false"
        status = page.evaluate("document.getElementById('status').textContent")
        assert status.startswith("No visible change") and "intensity is 0" in status
        before = fetch_png(page.evaluate("document.getElementById('side-before').src"))
        assert np.array_equal(fetch_png(page.evaluate("document.getElementById('side-after').src")), before)
        set_range(page, "intensity", 1)
        full = next_result(page, zero)
        assert page.evaluate("document.body.dataset.changed") == "true"
        assert page.evaluate("document.getElementById('status').textContent").startswith("Simulated in")

        # A/B: keep nose 0.5 as A, move the nose to 1.0: both are shown with their settings.
        click(page, "#pin")
        set_range(page, "strength-nose", 1)
        b = next_result(page, full)
        page.wait_for("!document.getElementById('ab').hidden")
        assert "nose 0.50" in page.evaluate("document.getElementById('ab-a-caption').textContent")
        assert "nose 1.00" in page.evaluate("document.getElementById('ab-b-caption').textContent")

        # Reset: the model's defaults (no procedure ticked, intensity 1).
        click(page, "#reset")
        reset = next_result(page, b)
        assert page.evaluate("document.querySelectorAll('#procedures input:checked').length") == 0

        # 4. The overlay shows the face square and the procedure regions.
        click(page, "#overlay")
        assert page.evaluate("document.getElementById('overlay-layer').hidden") is False
        assert page.evaluate("document.querySelectorAll('#overlay-layer .face-square').length") == 1
        assert page.evaluate("document.querySelectorAll('#overlay-layer .region-nose').length") == 1
        # Several faces: the whole-photo view outlines the other face; clicking it frames it.
        page.set_file("#file", group)
        grouped = page.wait_for(f"{READY} !== '{reset}' && document.body.dataset.state === 'ready' "
                                "&& document.body.dataset.result")
        assert page.evaluate("document.getElementById('face-info').textContent").startswith("2 faces found")
        click(page, "input[name=view][value=photo]")
        page.wait_for("document.querySelectorAll('#overlay-layer .other-face').length === 1")
        box = page.evaluate("document.querySelector('#overlay-layer .face-square').getAttribute('x')")
        page.evaluate("document.querySelector('#overlay-layer .other-face')"
                      ".dispatchEvent(new MouseEvent('click', {bubbles: true}))")
        picked = next_result(page, grouped)
        assert float(page.evaluate("document.querySelector('#overlay-layer .face-square').getAttribute('x')")) > \
            float(box) + 300
        # Nudge the square right: the simulation follows.
        x_before = page.evaluate("Number(document.querySelector('#overlay-layer .face-square').getAttribute('x'))")
        click(page, ".nudge button[data-move='1,0']")
        nudged = next_result(page, picked)
        assert page.evaluate("Number(document.querySelector('#overlay-layer .face-square').getAttribute('x'))") > x_before

        # 8. Keyboard: the divider's slider shows its focus (a headless tab has focus only when emulated).
        page.call("Emulation.setFocusEmulationEnabled", enabled=True)
        page.evaluate("document.getElementById('split').focus({focusVisible: true})")
        width = page.evaluate("getComputedStyle(document.getElementById('divider')).width")
        assert width == "4px"

        # Save: a before | simulation PNG with no metadata lands in the downloads, audited.
        click(page, "#save")
        deadline = time.monotonic() + 20
        saved: list[Path] = []
        while not saved and time.monotonic() < deadline:
            saved = [p for p in downloads.glob("*.png")]
            time.sleep(0.1)
        assert len(saved) == 1, list(downloads.iterdir())
        exported = Image.open(saved[0])
        assert not exported.info and exported.width > 1000

        # 6. A tablet in portrait: the result sits beside the controls, near the top.
        page.call("Emulation.setDeviceMetricsOverride", width=768, height=1024, deviceScaleFactor=1, mobile=False)
        time.sleep(0.3)
        controls, results = page.evaluate("document.querySelector('.controls').getBoundingClientRect().right"), \
            rect(page, "results")
        assert results["left"] >= controls and results["top"] < 200
        shot = page.screenshot(tmp_path / "tablet.png")
        image = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB"))
        assert image.shape[1] == 768 and image.std() > 20
        assert nudged

        urls = page.requested_urls()
        page.close()
    finally:
        browser.close()
    # No console errors but the expected refusals of the face-less photo.
    problems = [e["params"] for e in page.events
                if e["method"] == "Runtime.exceptionThrown"
                or (e["method"] == "Runtime.consoleAPICalled" and e["params"]["type"] == "error")]
    assert problems == []
    assert len(urls) >= 20
    assert {urlsplit(url).hostname for url in urls} == {"127.0.0.1"}, urls
    assert all(url.startswith(live_server.url + "/") for url in urls), urls
    events = [json.loads(line)["event"] for line in live_server.audit.read_text().splitlines()]
    assert events[-1] == "save" and events.count("simulate") >= 8


def test_a_small_photo_is_shown_scaled_up(live_server: LiveServer, tmp_path: Path) -> None:
    """6. A photo of 64 px or less: the comparison is drawn large enough for its slider and tags."""
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.asarray(Image.open(io.BytesIO(face_jpeg(64, 64).data)).convert("RGB"))).save(tiny)
    assert BROWSER is not None
    browser = Chromium(BROWSER, tmp_path / "profile")
    try:
        page = browser.page()
        page.call("Page.navigate", url=live_server.url + "/")
        page.wait_for("document.body?.dataset.state === 'idle'")
        page.set_file("#file", tiny)
        page.wait_for("document.body.dataset.state === 'ready' || document.body.dataset.state === 'error'")
        assert page.evaluate("document.body.dataset.state") == "ready", \
            page.evaluate("document.getElementById('status').textContent")
        figure = rect(page, "compare")
        assert figure["width"] >= 320
        tags = page.evaluate("[...document.querySelectorAll('.tag')].map(t => t.getBoundingClientRect())"
                             ".map(r => [r.left, r.right])")
        assert tags[0][1] < tags[1][0]  # "Before" and "Simulation" do not overlap
        page.close()
    finally:
        browser.close()

"""A small client of the Chrome DevTools protocol, enough to drive one page of headless Chromium.

`Chromium` starts the browser with a fresh profile and everything that phones home switched
off, and finds its DevTools port in the profile's `DevToolsActivePort` file. `Page` talks to
one tab over its WebSocket (websocket-client): commands get their answers by id, and every
event is kept, so a test can list the network requests the page made.
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import websocket

# Headless, no sandbox (containers run as root), and nothing the browser would fetch on its own:
# no component or safe-browsing updates, no sync, no QUIC probes, no first-run pages.
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--metrics-recording-only",
    "--mute-audio",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
    "--window-size=1280,1100",
)

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str | None:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return None


class Chromium:
    """A headless Chromium with its own profile folder; `close` ends it."""

    def __init__(self, binary: str, profile: Path, timeout: float = 30.0) -> None:
        self.profile = Path(profile)
        self.profile.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        active = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (active.is_file() and active.read_text().count("\n") >= 1):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"Chromium did not start (exit code {self.process.returncode})")
            time.sleep(0.05)
        self.port = int(active.read_text().splitlines()[0])

    def page(self) -> "Page":
        """The first tab, connected."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=10) as response:
            targets = json.loads(response.read())
        tab = next(t for t in targets if t["type"] == "page")
        return Page(tab["webSocketDebuggerUrl"])

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


class Page:
    """One tab: `call` sends a command and returns its result; `events` holds every event."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        # Chromium refuses WebSocket clients that send an Origin it was not told to allow.
        self.socket = websocket.create_connection(url, timeout=timeout, suppress_origin=True)
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        ident = next(self.ids)
        self.socket.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self.events.append(message)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        answer = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in answer:
            raise RuntimeError(f"{expression}: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30.0) -> Any:
        """Poll a JavaScript expression until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"still false after {timeout:.0f} s: {expression}")
            time.sleep(0.1)

    def set_file(self, selector: str, path: Path) -> None:
        """Choose a file in an <input type=file>, as a user would (the page gets its change event)."""
        root = self.call("DOM.getDocument")["root"]["nodeId"]
        node = self.call("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        self.call("DOM.setFileInputFiles", nodeId=node, files=[str(path)])

    def screenshot(self, path: Path) -> bytes:
        data = base64.b64decode(self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"])
        Path(path).write_bytes(data)
        return data

    def requested_urls(self) -> list[str]:
        """Every URL the page asked for so far (Network.requestWillBeSent events)."""
        self.evaluate("1")  # drain the events that arrived meanwhile
        return [e["params"]["request"]["url"] for e in self.events if e["method"] == "Network.requestWillBeSent"]

    def close(self) -> None:
        self.socket.close()

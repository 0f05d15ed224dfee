"""Fixtures of the consultation app tests: trained runs, face photos, the app and a live server.

    runs (session): two tiny pix2pix runs trained for two steps on `tiny_dataset`:
        "procedures", conditioned on the procedures (model.procedure_maps), and "plain", not.
    simulator (session): both runs loaded, served as models "1" and "2".
    small_photo (session): a 480 x 640 face photo stored under EXIF orientation 6
        (`tests.support.serve.face_jpeg`).
    make_app(...): the app over `simulator`, with a private upload folder under tmp_path.
    live_server: the app served by uvicorn on 127.0.0.1 in a thread; yields its base URL.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import pytest
from typer.testing import CliRunner

from svai.cli import app as cli
from svai.generate import load_model
from svai.serve.simulate import Simulator, serve_models

if TYPE_CHECKING:
    from starlette.applications import Starlette

from tests.support.serve import FacePhoto, LiveServer
from tests.support.serve import face_jpeg

TINY = ["--steps", "2", "--batch-size", "2", "--image-size", "32", "--set", "model.ngf=8", "--set", "model.ndf=8",
        "--set", "train.sample_every=0", "--set", "train.evaluate=false"]

@pytest.fixture(scope="session")
def runs(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve-runs")
    found = {}
    for name, extra in (("procedures", ["--set", "model.procedure_maps=true"]), ("plain", [])):
        out = root / name
        result = CliRunner().invoke(cli, ["train", "--model", "pix2pix", "--data", str(tiny_dataset),
                                          "--out", str(out), *TINY, *extra])
        assert result.exit_code == 0, result.output
        found[name] = out
    return found


@pytest.fixture(scope="session")
def simulator(runs: dict[str, Path]) -> Simulator:
    folders = [runs["procedures"], runs["plain"]]
    return Simulator(serve_models(folders, [load_model(folder, device="cpu") for folder in folders]))


@pytest.fixture(scope="session")
def small_photo() -> FacePhoto:
    return face_jpeg(480, 640, orientation=6)


@pytest.fixture
def make_app(simulator: Simulator, tmp_path: Path) -> Callable[..., Starlette]:
    from svai.serve.app import create_app
    from svai.serve.audit import AuditLog

    def build(audit: Path | None = None, hosts: Iterable[str] | None = None) -> Starlette:
        folder = tmp_path / "private"
        folder.mkdir(exist_ok=True)
        return create_app(simulator, folder, AuditLog(audit) if audit is not None else None, hosts=hosts)

    return build


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def live_server(make_app: Callable[..., Starlette], tmp_path: Path) -> Iterator[LiveServer]:
    import uvicorn

    audit = tmp_path / "audit.jsonl"
    application = make_app(audit=audit)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(application, host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield LiveServer(f"http://127.0.0.1:{port}", application, audit)
    finally:
        server.should_exit = True
        thread.join(timeout=10)

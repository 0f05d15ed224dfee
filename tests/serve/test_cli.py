"""`svai serve` on the command line: options, errors, the printed address, clean exit."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

pytest.importorskip("uvicorn", reason="svai serve needs the app extra: pip install 'svai[app]'")
pytest.importorskip("starlette", reason="svai serve needs the app extra: pip install 'svai[app]'")

from svai.cli import app  # noqa: E402
from tests.support.cli import assert_user_error  # noqa: E402


def invoke(*args: object) -> Result:
    return CliRunner().invoke(app, ["serve", *(str(a) for a in args)])


@pytest.fixture
def no_serving(monkeypatch: pytest.MonkeyPatch) -> list:
    """Replace uvicorn's serving loop: the command returns once it would serve; the list gets
    the app it was given and the address it listened on."""
    import uvicorn

    served: list = []

    def run(self: uvicorn.Server, sockets: list[socket.socket] | None = None) -> None:
        assert sockets is not None
        served.append((self.config.app, sockets[0].getsockname()))

    monkeypatch.setattr(uvicorn.Server, "run", run)
    return served


def test_help_shows_examples() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    assert "svai serve --run runs/p2p-warp" in result.output and "--audit" in result.output


def test_it_prints_the_address_and_removes_its_private_folder(
        runs: dict[str, Path], no_serving: list, tmp_path: Path) -> None:
    result = invoke("--run", runs["procedures"], "--run", runs["plain"], "--port", 0, "--audit", tmp_path / "a.jsonl")
    assert result.exit_code == 0, result.output
    (application, (host, port)), = no_serving
    assert host == "127.0.0.1" and port > 0
    assert f"open http://127.0.0.1:{port}" in result.stdout
    assert "model 1: procedures (pix2pix, step 2)" in result.stdout and "model 2: plain" in result.stdout
    assert "warning" not in result.stderr
    folder = application.state.consultation.folder
    assert not folder.exists()
    assert (tmp_path / "a.jsonl").exists()


def test_a_host_beyond_this_machine_is_warned_about(runs: dict[str, Path], no_serving: list) -> None:
    result = invoke("--run", runs["plain"], "--host", "0.0.0.0", "--port", 0)
    assert result.exit_code == 0, result.output
    assert "warning:" in result.stderr and "other machines" in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1


def test_a_port_in_use_is_one_line(runs: dict[str, Path]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert_user_error(invoke("--run", runs["plain"], "--port", port), f"--port {port} is in use", "--port 0")


@pytest.mark.parametrize("args, fragments", [
    (["--port", "70000"], ["--port must be between 0 and 65535"]),
    (["--host", "no-such-host.invalid"], ["--host no-such-host.invalid"]),
    (["--device", "tpu"], ["--device 'tpu'"]),
])
def test_bad_options_are_one_line(runs: dict[str, Path], args: list[str], fragments: list[str]) -> None:
    assert_user_error(invoke("--run", runs["plain"], *args), *fragments)


def test_a_missing_run_or_audit_folder_is_one_line(runs: dict[str, Path], tmp_path: Path) -> None:
    assert_user_error(invoke("--run", tmp_path / "nowhere", "--port", 0), "nowhere")
    assert_user_error(invoke("--run", runs["plain"], "--audit", tmp_path / "no" / "audit.jsonl"),
                      "--audit", "does not exist")


def private_folders(tmp_path: Path) -> set[Path]:
    """The upload folders of `svai serve` processes: in /dev/shm, else in $TMPDIR."""
    return {p for base in (Path("/dev/shm"), tmp_path) if base.is_dir() for p in base.glob("svai-serve-*")}


def printed_address(process: subprocess.Popen, scheme: str) -> str | None:
    """The address `svai serve` prints to open (read from its output), or None if it ends first."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = process.stdout.readline() if process.stdout is not None else ""
        if not line:
            return None
        if f"open {scheme}://" in line:
            return line.split("open ", 1)[1].split()[0]
    return None


def test_the_real_command_serves_until_stopped_and_cleans_up(runs: dict[str, Path], tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    existing = private_folders(tmp_path)
    command = [sys.executable, "-m", "svai.cli", "serve", "--run", str(runs["plain"]), "--port", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert process.stdout is not None and process.stderr is not None
    try:
        address = printed_address(process, "http")
        assert address is not None and address.startswith("http://127.0.0.1:"), process.stderr.read()
        with urllib.request.urlopen(address + "/api/models", timeout=30) as response:
            assert [m["label"] for m in json.loads(response.read())["models"]] == ["plain (pix2pix, step 2)"]
    finally:
        process.send_signal(signal.SIGTERM)  # as a service manager stops it; Ctrl-C takes the same path
        code = process.wait(timeout=30)
    assert code == 0, process.stderr.read()
    assert "stopped" in process.stdout.read()
    assert private_folders(tmp_path) - existing == set()


def test_without_the_app_extra_it_says_how_to_install_it(
        runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    assert_user_error(invoke("--run", runs["plain"]), "uvicorn is not installed", "pip install 'svai[app]'")


def test_off_loopback_it_wants_the_token_and_serves_tls(runs: dict[str, Path], tmp_path: Path) -> None:
    """--host 0.0.0.0 with a certificate: https, a token made at start and printed in the address,
    every request without it refused. Only 127.0.0.1 is contacted."""
    import ssl

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                           "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)], capture_output=True)
    if made.returncode != 0:
        pytest.skip("openssl cannot make a test certificate here")
    assert_user_error(invoke("--run", runs["plain"], "--certfile", cert), "--certfile and --keyfile go together")
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    command = [sys.executable, "-m", "svai.cli", "serve", "--run", str(runs["plain"]), "--port", "0",
               "--host", "0.0.0.0", "--certfile", str(cert), "--keyfile", str(key)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert process.stdout is not None and process.stderr is not None
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    try:
        address = printed_address(process, "https")
        assert address is not None and "/?token=" in address, process.stderr.read()
        port = address.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1]
        token = address.split("?token=", 1)[1]
        local = f"https://127.0.0.1:{port}"
        for url in (local + "/api/models", local + "/?token=wrong"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(url, timeout=30, context=context)
            assert refused.value.code == 403
            refused.value.close()
        with urllib.request.urlopen(f"{local}/?token={token}", timeout=30, context=context) as response:
            assert response.status == 200 and "svai_token=" in response.headers["Set-Cookie"]
        request = urllib.request.Request(local + "/api/models", headers={"X-Svai-Token": token})
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            assert json.loads(response.read())["models"]
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
    assert code == 0
    assert "served over TLS" in process.stderr.read()

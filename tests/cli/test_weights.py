"""`svai weights` lists every file with its location and status; `fetch` downloads (never
from the network here: file:// sources and a registry patched to expect them)."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from svai import weights
from svai.cli import app

runner = CliRunner()


@pytest.fixture
def dirs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.delenv(weights.WEIGHTS_DIR_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("COLUMNS", "200")
    return tmp_path


def expect(monkeypatch: pytest.MonkeyPatch, key: str, content: bytes, **changes: str) -> None:
    entry = weights.REGISTRY[key]
    monkeypatch.setitem(
        weights.REGISTRY, key, dataclasses.replace(entry, sha256=hashlib.sha256(content).hexdigest(), **changes)
    )


def test_list_shows_every_file_location_and_status(dirs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mine = dirs / "mine"
    mine.mkdir()
    (mine / "alexnet-owt-7be5be79.pth").write_bytes(b"good alexnet")
    (mine / "vgg16-397923af.pth").write_bytes(b"bad vgg")
    expect(monkeypatch, "alexnet", b"good alexnet")
    result = runner.invoke(app, ["weights", "--weights-dir", str(mine)])
    assert result.exit_code == 0, result.output
    rows = {line.split()[1]: line for line in result.output.splitlines() if line.startswith("│")}
    for entry in weights.REGISTRY.values():
        assert entry.filename in result.output
    assert "verified" in rows["alexnet"]
    assert "wrong hash" in rows["vgg16"]
    assert "missing" in rows["inception"] and "missing" in rows["squeezenet"]
    assert f"alexnet: {mine / 'alexnet-owt-7be5be79.pth'}" in result.output
    assert f"vgg16: {mine / 'vgg16-397923af.pth'}" in result.output
    assert str(dirs / "torch" / "hub" / "checkpoints") in result.output


def test_list_without_verifying(dirs: Path) -> None:
    hub = dirs / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "vgg16-397923af.pth").write_bytes(b"anything")
    result = runner.invoke(app, ["weights", "--no-verify"])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "vgg16-397923af.pth" in line and line.startswith("│"))
    assert "present" in row


def test_fetch_one_from_a_file_url(dirs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = dirs / "usb" / "copy.pth"
    source.parent.mkdir()
    source.write_bytes(b"inception bytes")
    expect(monkeypatch, "inception", b"inception bytes")
    result = runner.invoke(app, ["weights", "fetch", "inception", "--url", source.as_uri()])
    assert result.exit_code == 0, result.output
    saved = dirs / "torch" / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth"
    assert saved.read_bytes() == b"inception bytes"
    # Present and verified: a second fetch does nothing.
    again = runner.invoke(app, ["weights", "fetch", "inception", "--url", (dirs / "gone").as_uri()])
    assert again.exit_code == 0 and "already present" in again.output


def test_fetch_all_uses_each_published_url(dirs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every registry URL is redirected to a local file; the command must ask for each one.
    for key, entry in list(weights.REGISTRY.items()):
        source = dirs / "mirror" / entry.filename
        source.parent.mkdir(exist_ok=True)
        source.write_bytes(key.encode())
        expect(monkeypatch, key, key.encode(), url=source.as_uri())
    result = runner.invoke(app, ["weights", "fetch", "--weights-dir", str(dirs / "out")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (dirs / "out").iterdir()) == sorted(e.filename for e in weights.REGISTRY.values())


def test_fetch_errors_exit_2_in_one_line(dirs: Path) -> None:
    unknown = runner.invoke(app, ["weights", "fetch", "resnet"])
    assert unknown.exit_code == 2
    assert "unknown weights 'resnet'" in unknown.output and "Traceback" not in unknown.output
    bad = dirs / "bad.pth"
    bad.write_bytes(b"wrong")
    corrupt = runner.invoke(app, ["weights", "fetch", "inception", "--url", bad.as_uri()])
    assert corrupt.exit_code == 2
    assert "sha256" in corrupt.output
    assert not (dirs / "torch" / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth").exists()
    no_name = runner.invoke(app, ["weights", "fetch", "--url", bad.as_uri()])
    assert no_name.exit_code == 2 and "--url needs a NAME" in no_name.output

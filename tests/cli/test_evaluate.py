"""`svai evaluate` through the CLI: the table, the JSON file, and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio
from typer.testing import CliRunner

from svai.cli import app

IDS = ["a", "b", "c", "d"]
SIZE = 40


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """DATA/test/{before,after,masks} and a pred folder; no weights anywhere, a private cache."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("SVAI_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("SVAI_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    folders = {name: tmp_path / "data" / "test" / name for name in ("before", "after", "masks")}
    folders["pred"] = tmp_path / "pred"
    for folder in folders.values():
        folder.mkdir(parents=True)
    for key in IDS:
        after = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        pred = np.clip(after.astype(int) + rng.integers(-20, 21, after.shape), 0, 255).astype(np.uint8)
        mask = np.zeros((SIZE, SIZE), np.uint8)
        mask[10:30, 10:30] = 255
        Image.fromarray(after).save(folders["after"] / f"{key}.png")
        Image.fromarray(pred).save(folders["pred"] / f"{key}.png")
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(folders["before"] / f"{key}.png")
        Image.fromarray(mask).save(folders["masks"] / f"{key}.png")
    return folders


def evaluate(*args: str | Path):
    return CliRunner().invoke(app, ["evaluate", *map(str, args)])


def test_table_and_json(data: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "run" / "evaluation.json"
    result = evaluate("--pred", data["pred"], "--target", data["after"], "--metrics", "ssim,psnr", "--json", out)
    assert result.exit_code == 0, result.output
    assert "SSIM" in result.stdout and "PSNR (dB) changed" in result.stdout and "↑" in result.stdout
    saved = json.loads(out.read_text())
    assert saved["name"] == "pred" and saved["role"] == "model" and saved["baseline"] is None
    assert saved["masks"] == str(data["masks"])
    expected = np.mean([
        peak_signal_noise_ratio(np.asarray(Image.open(data["after"] / f"{k}.png")), np.asarray(Image.open(data["pred"] / f"{k}.png")))
        for k in IDS
    ])
    assert saved["metrics"]["psnr"]["mean"] == pytest.approx(expected, abs=1e-6)
    assert f"{expected:.2f}" in result.stdout
    assert saved["metrics"]["psnr"]["n"] == len(IDS) and saved["metrics"]["psnr"]["identical"] == 0


def test_missing_weights_only_fail_metrics_asked_for_by_name(data: dict[str, Path]) -> None:
    # Default metric list: LPIPS/FID/KID/IS lack weights, are reported, and the run succeeds.
    result = evaluate("--pred", data["pred"], "--target", data["after"])
    assert result.exit_code == 0, result.output
    assert "unavailable" in result.stderr and "svai weights fetch alexnet" in result.stderr
    assert "SSIM" in result.stdout
    # Named: the others are still computed and shown, then exit code 2 without a traceback.
    result = evaluate("--pred", data["pred"], "--target", data["after"], "--metrics", "ssim", "--metrics", "lpips")
    assert result.exit_code == 2
    assert "SSIM" in result.stdout and "could not compute LPIPS" in result.stderr
    assert "Traceback" not in result.output


def test_lpips_with_weights_dir(data: dict[str, Path], tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    weights.mkdir()
    torch.manual_seed(0)
    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), weights / "squeezenet1_1-b8a52dc0.pth")
    out = tmp_path / "e.json"
    result = evaluate(
        "--pred", data["pred"], "--target", data["after"], "--metrics", "lpips", "--lpips-net", "squeeze",
        "--weights-dir", weights, "--json", out,
    )
    assert result.exit_code == 0, result.output
    saved = json.loads(out.read_text())
    assert set(saved["metrics"]) == {"lpips", "lpips_changed", "lpips_kept"}
    assert saved["metrics"]["lpips"]["higher_is_better"] is False and "↓" in result.stdout
    assert list(saved["weights"]) == ["squeezenet1_1-b8a52dc0.pth"]


def test_baseline_row(data: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "e.json"
    result = evaluate(
        "--pred", data["pred"], "--target", data["after"], "--metrics", "psnr", "--baseline", data["before"],
        "--name", "p2p", "--json", out,
    )
    assert result.exit_code == 0, result.output
    assert "baseline" in result.stdout and "p2p" in result.stdout
    saved = json.loads(out.read_text())
    assert saved["baseline"]["role"] == "baseline" and saved["before"] == str(data["before"])
    assert saved["baseline"]["metrics"]["psnr"]["mean"] < saved["metrics"]["psnr"]["mean"]


def test_unreadable_image_is_listed_and_fails_at_the_end(data: dict[str, Path], tmp_path: Path) -> None:
    (data["pred"] / "b.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "e.json"
    result = evaluate("--pred", data["pred"], "--target", data["after"], "--metrics", "ssim", "--json", out)
    assert result.exit_code == 2
    assert "b.png" in result.stderr and "Traceback" not in result.output
    saved = json.loads(out.read_text())
    assert saved["metrics"]["ssim"]["n"] == len(IDS) - 1
    assert [Path(item["file"]).name for item in saved["skipped"]] == ["b.png"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--pred", "MISSING"], "does not exist"),
        (["--metrics", "nope"], "--metrics 'nope'"),
        (["--lpips-net", "resnet"], "--lpips-net"),
        (["--fid-dims", "100"], "--fid-dims"),
        (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--batch-size", "0"], "--"),
    ],
)
def test_bad_options_are_one_line_errors(data: dict[str, Path], tmp_path: Path, args: list[str], message: str) -> None:
    base = {"--pred": str(data["pred"]), "--target": str(data["after"])}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = str(tmp_path / value) if value == "MISSING" else value
    result = evaluate(*[item for pair in base.items() for item in pair])
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output

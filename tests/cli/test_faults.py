"""Hostile conditions through the CLI: killed commands, overlapping folders, machine errors.

Each command is killed (SIGKILL) at a random moment; the next run of the same command must
complete and the inputs must be byte-identical. Every other failure is one line, exit code 2.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.cli import TINY, assert_user_error, invoke

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def svai(*args: object) -> list[str]:
    return [sys.executable, "-m", "svai.cli", *(str(a) for a in args)]


def hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def kill_at_random(command: list[str], earliest: float, latest: float) -> float:
    """Start `command`, SIGKILL it after a random delay (unless it ended first); return the delay."""
    delay = random.uniform(earliest, latest)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    try:
        process.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    return delay


def run_ok(command: list[str], note: str) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, f"{note}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return result


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("faults") / "photos"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(60):
        for side in ("before", "after"):
            Image.fromarray(rng.integers(0, 255, (150, 200, 3), dtype=np.uint8)).save(
                src / f"p{i:03d}_{side}.jpg", quality=90)
    return src


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("faults-data") / "data"
    assert invoke("prepare", "synthetic", data, "--count", "16", "--size", "32", "--test-fraction", "0.25").exit_code == 0
    return data


@pytest.mark.slow
def test_prepare_killed_at_a_random_moment_finishes_on_the_next_run(photos: Path, tmp_path: Path) -> None:
    before = hashes(photos)
    clean = tmp_path / "clean"
    run_ok(svai("prepare", photos, clean, "--size", "64", "--workers", "2"), "clean run")
    out = tmp_path / "out"
    command = svai("prepare", photos, out, "--size", "64", "--workers", "2")
    delay = kill_at_random(command, 0.5, 4.0)
    run_ok(command, f"re-run after SIGKILL at {delay:.2f}s")
    assert (out / "manifest.csv").read_bytes() == (clean / "manifest.csv").read_bytes()
    assert hashes(out / "train") == hashes(clean / "train") and hashes(out / "test") == hashes(clean / "test")
    assert hashes(photos) == before


@pytest.mark.slow
def test_prepare_stops_quickly_on_sigterm_and_ends_its_workers(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    process = subprocess.Popen(svai("prepare", photos, out, "--size", "256", "--workers", "2"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 60
    while not list(out.glob("*/before/*.png")):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    children = _descendants(process.pid)
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert time.monotonic() - sent < 3, "SIGTERM took too long"
    assert process.returncode == 130 and "Traceback" not in stderr and "same command again" in stderr
    time.sleep(1)
    assert not [pid for pid in children if _running(pid)], "worker processes outlived prepare"
    run_ok(svai("prepare", photos, out, "--size", "256", "--workers", "2"), "re-run after SIGTERM")


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                if ppid == parent:
                    found.append(int(entry))
                    todo.append(int(entry))
    return found


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_train_killed_at_a_random_moment_continues_on_the_next_run(dataset: Path, tmp_path: Path) -> None:
    before = hashes(dataset)
    run = tmp_path / "run"
    # Long enough (several seconds here) that the kill lands in set-up, training or evaluation.
    command = svai("train", "--model", "pix2pix", "--data", dataset, "--out", run, "--steps", "300",
                   "--set", "train.checkpoint_every=25", *TINY)
    delay = kill_at_random(command, 1.0, 5.0)
    resume = ["--resume"] if list((run / "checkpoints").glob("step-*")) else []
    if resume and (run / "evaluation.json").is_file():
        pytest.skip("the run finished before the kill")
    run_ok(command + resume, f"next run after SIGKILL at {delay:.2f}s")
    assert (run / "evaluation.json").is_file()
    assert not (run / ".svai.lock").exists()
    assert hashes(dataset) == before


@pytest.mark.slow
def test_generate_killed_at_a_random_moment_completes_on_the_next_run(dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert invoke("train", "--model", "pix2pix", "--data", dataset, "--out", run, "--steps", "1",
                  "--set", "train.evaluate=false", *TINY).exit_code == 0
    inputs = dataset / "train" / "before"
    before = hashes(inputs)
    out = tmp_path / "out"
    command = svai("generate", "--run", run, "--input", inputs, "--output", out, "--batch-size", "1")
    delay = kill_at_random(command, 0.5, 4.0)
    run_ok(command, f"re-run after SIGKILL at {delay:.2f}s")
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in inputs.iterdir())
    assert hashes(inputs) == before


def test_generate_never_writes_into_an_input_inside_the_output(dataset: Path, tmp_path: Path) -> None:
    # A zip-style g/photos/ folder: --input g/photos --output g would replace g/photos/a.png.
    outer = tmp_path / "g"
    photos = outer / "photos"
    photos.mkdir(parents=True)
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(photos / "a.png")
    before = hashes(outer)
    result = invoke("generate", "--run", tmp_path / "no-run", "--input", photos, "--output", outer)
    assert_user_error(result, "--output", "holds --input")
    assert hashes(outer) == before


def test_train_out_under_a_file_is_one_line(dataset: Path, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    result = invoke("train", "--model", "pix2pix", "--data", dataset, "--out", tmp_path / "file" / "run", *TINY)
    assert_user_error(result, "file")


def test_a_too_long_output_name_is_one_line(dataset: Path, tmp_path: Path) -> None:
    long = tmp_path / ("n" * 300)
    assert_user_error(invoke("train", "--model", "pix2pix", "--data", dataset, "--out", long, *TINY), "too long")
    assert_user_error(invoke("prepare", "synthetic", long, "--count", "2", "--size", "32"), "too long")


def test_prepare_out_under_a_file_is_one_line(photos: Path, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    assert_user_error(invoke("prepare", photos, tmp_path / "file" / "out"), "file")


@pytest.mark.parametrize("size", ["0", "-5"])
def test_prepare_refuses_a_size_of_zero_or_less(photos: Path, tmp_path: Path, size: str) -> None:
    assert_user_error(invoke("prepare", photos, tmp_path / "out", "--size", size), "--size")
    assert_user_error(invoke("prepare", "synthetic", tmp_path / "synth", "--size", size), "--size")
    assert not (tmp_path / "out").exists() and not (tmp_path / "synth").exists()


def test_a_full_disk_during_generate_is_one_line(dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    run = tmp_path / "run"
    assert invoke("train", "--model", "pix2pix", "--data", dataset, "--out", run, "--steps", "1",
                  "--set", "train.evaluate=false", *TINY).exit_code == 0

    def full(path: Path, data: bytes, privacy: object = None) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr("svai.io.write_atomic", full)
    result = invoke("generate", "--run", run, "--input", dataset / "test" / "before", "--output", tmp_path / "o")
    assert_user_error(result, "no space left", str(tmp_path / "o"))


@pytest.mark.parametrize("content", [b"\xff\xfe\x00bad", b"model: [unclosed"])
def test_a_config_that_is_not_utf8_or_yaml_is_one_line(dataset: Path, tmp_path: Path, content: bytes) -> None:
    config = tmp_path / "c.yaml"
    config.write_bytes(content)
    result = invoke("train", "--model", "pix2pix", "--data", dataset, "--out", tmp_path / "r", "--config", config)
    assert_user_error(result, str(config))
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_bytes(content)
    assert_user_error(invoke("generate", "--run", run, "--input", dataset / "test" / "before",
                             "--output", tmp_path / "o"), "config.yaml")


def test_generate_on_cuda_without_a_gpu_is_one_line(dataset: Path, tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    result = invoke("generate", "--run", tmp_path, "--input", dataset / "test" / "before",
                    "--output", tmp_path / "o", "--device", "cuda")
    assert_user_error(result, "--device cuda", "no CUDA GPU")


@pytest.mark.slow
def test_evaluate_and_compare_killed_at_a_random_moment_complete_on_the_next_run(dataset: Path, tmp_path: Path) -> None:
    import json

    before = hashes(dataset)
    out = tmp_path / "out"
    evaluate = svai("evaluate", "--pred", dataset / "test" / "before", "--target", dataset / "test" / "after",
                    "--masks", dataset / "test" / "masks", "--metrics", "ssim,psnr", "--no-cache",
                    "--json", out / "evaluation.json")
    delay = kill_at_random(evaluate, 0.2, 3.0)
    run_ok(evaluate, f"evaluate re-run after SIGKILL at {delay:.2f}s")
    tested = len(list((dataset / "test" / "before").iterdir()))
    assert json.loads((out / "evaluation.json").read_text())["metrics"]["ssim"]["n"] == tested

    compare = svai("compare", out, "--grid", out / "grid.png", "--report", out / "report.html",
                   "--before", dataset / "test" / "before")
    delay = kill_at_random(compare, 0.2, 3.0)
    run_ok(compare, f"compare re-run after SIGKILL at {delay:.2f}s")
    assert Image.open(out / "grid.png").size[0] > 0
    assert (out / "report.html").read_text(encoding="utf-8").rstrip().endswith("</html>")
    assert sorted(p.name for p in out.iterdir()) == ["evaluation.json", "grid.png", "report.html"]
    assert hashes(dataset) == before

"""Experiment trackers through Accelerate: TensorBoard's own reader reads back what svai logged,
a missing tracker is one line before step 1, and values are means over processes."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from svai import tracking
from svai.cli import app
from svai.errors import SvaiError

TINY = ["--image-size", "32", "--set", "model.ngf=8", "--set", "model.ndf=8", "--set", "train.evaluate=false"]


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def accumulator(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return events


@pytest.fixture(scope="module")
def logged(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four steps logged every step and sampled every second step, then resumed to six."""
    pytest.importorskip("tensorboard", reason="TensorBoard is an extra: pip install 'svai[tensorboard]'")
    run = tmp_path_factory.mktemp("tracked") / "run"
    common = ["--set", "train.log_every=1", "--set", "train.sample_every=2", "--set", "train.sample_count=2"]
    result = invoke("train", "--model", "pix2pix", "--data", tiny_dataset, "--out", run, "--steps", "4",
                    "--log-with", "tensorboard", *TINY, *common)
    assert result.exit_code == 0, result.output
    result = invoke("train", "--out", run, "--resume", "--steps", "6")
    assert result.exit_code == 0, result.output
    return run


def test_tensorboard_reads_back_the_losses_learning_rates_and_samples(logged: Path) -> None:
    records = [json.loads(line) for line in (logged / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    events = accumulator(logged / tracking.TRACKERS_DIR / tracking.PROJECT)
    tags = events.Tags()
    losses = [k for k in records[0] if k not in ("step", "lr_factor", "images_per_s")]
    assert {"G_l1", "G_gan", "D"} <= set(losses)
    for key in [*losses, "lr_factor", "images_per_s"]:
        scalars = events.Scalars(f"train/{key}")
        # The resumed run continues the same file set: every step once, no duplicate from the first try.
        assert [s.step for s in scalars] == [1, 2, 3, 4, 5, 6], key
        assert [s.value for s in scalars] == pytest.approx([r[key] for r in records], rel=1e-5, abs=1e-6), key
    # The learning rates follow pix2pix's schedule: constant, then a linear decay to the last step.
    g_rates = [s.value for s in events.Scalars("lr/G")]
    assert g_rates[0] == pytest.approx(2e-4) and g_rates[-1] < g_rates[0]
    assert g_rates == pytest.approx([2e-4 * r["lr_factor"] for r in records], rel=1e-5)
    # The sample grids, through TensorBoard's own image summaries, are the PNGs in RUN/samples.
    assert tags["images"] == [tracking.SAMPLES_TAG]
    images = events.Images(tracking.SAMPLES_TAG)
    assert [i.step for i in images] == [2, 4, 6]
    for image in images:
        logged_pixels = np.asarray(Image.open(io.BytesIO(image.encoded_image_string)).convert("RGB"))
        saved = np.asarray(Image.open(logged / "samples" / f"step-{image.step:08d}.png").convert("RGB"))
        assert logged_pixels.shape == saved.shape == (2 * 32, 3 * 32, 3)
        assert np.array_equal(logged_pixels, saved)


def test_the_run_config_is_logged_as_hyperparameters(logged: Path) -> None:
    from tensorboard.plugins.hparams import plugin_data_pb2

    folder = logged / tracking.TRACKERS_DIR / tracking.PROJECT
    starts = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        events = accumulator(sub)
        if not list(sub.glob("events.out.tfevents.*")):
            continue  # Accelerate's hparams.yml copy
        for tag, content in events.PluginTagToContent("hparams").items():
            data = plugin_data_pb2.HParamsPluginData.FromString(content)
            if data.HasField("session_start_info"):
                starts.append(data.session_start_info.hparams)
    assert starts, "no hparams session in the event files"
    hparams = starts[0]
    assert hparams["model.name"].string_value == "pix2pix"
    assert hparams["train.steps"].number_value == 4
    assert hparams["data.image_size"].number_value == 32
    assert hparams["train.log_with"].string_value == "tensorboard"


def test_a_tracker_that_is_not_installed_is_one_line_before_step_1(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tracking, "_installed", lambda name: name != "wandb")
    run = tmp_path / "run"
    result = invoke("train", "--model", "pix2pix", "--data", tiny_dataset, "--out", run, "--steps", "1",
                    "--log-with", "wandb", *TINY)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "--log-with wandb" in lines[0] and "pip install 'svai[wandb]'" in lines[0]
    assert not (run / "checkpoints").exists() and not (run / "log.jsonl").exists()


def test_an_unknown_tracker_names_the_choices(tiny_dataset: Path, tmp_path: Path) -> None:
    result = invoke("train", "--model", "pix2pix", "--data", tiny_dataset, "--out", tmp_path / "r", "--steps", "1",
                    "--log-with", "tensorbored", *TINY)
    assert result.exit_code == 2
    assert "tensorbored" in result.stderr and "tensorboard, wandb" in result.stderr.replace("\n", " ")


def test_check_trackers_splits_commas_and_drops_repeats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracking, "_installed", lambda name: True)
    assert tracking.check_trackers(["tensorboard,wandb", "TensorBoard", " aim "]) == ["tensorboard", "wandb", "aim"]
    assert tracking.check_trackers([]) == []
    monkeypatch.setattr(tracking, "_installed", lambda name: False)
    with pytest.raises(SvaiError, match=r"pip install 'svai\[mlflow\]'"):
        tracking.check_trackers(["mlflow"])
    with pytest.raises(SvaiError, match="pip install dvclive"):
        tracking.check_trackers(["dvclive"])


def test_only_trackers_that_send_are_announced() -> None:
    assert tracking.sending_notice(["tensorboard", "aim"], {}) == []
    [line] = tracking.sending_notice(["wandb"], {})
    assert "WANDB_MODE=offline" in line and "patient photos" in line
    assert tracking.sending_notice(["wandb"], {"WANDB_MODE": "offline"}) == []
    assert tracking.sending_notice(["mlflow"], {}) == []  # files under the working folder
    [line] = tracking.sending_notice(["mlflow"], {"MLFLOW_TRACKING_URI": "https://mlflow.example"})
    assert "https://mlflow.example" in line


def test_flat_hparams_gives_every_tracker_plain_values() -> None:
    tree = {"model": {"name": "pix2pix", "ngf": 8, "betas": [0.5, 0.999]},
            "data": {"procedures": [], "augment": {"enabled": False}}, "train": {"resume": None, "lr": 2e-4}}
    assert tracking.flat_hparams(tree) == {
        "model.name": "pix2pix", "model.ngf": 8, "model.betas": "0.5, 0.999", "data.procedures": "",
        "data.augment.enabled": False, "train.resume": "", "train.lr": 2e-4,
    }


class _Recorder:
    def __init__(self, name: str) -> None:
        self.name = name
        self.calls: list[tuple] = []


class _ListImages(_Recorder):
    def log_images(self, values: dict, step: int) -> None:
        self.calls.append(("log_images", values, step))


def test_images_go_through_each_trackers_own_image_call() -> None:
    image = np.zeros((4, 6, 3), np.uint8)
    generic = _ListImages("wandb")
    tracking.send_image(generic, "samples", image, 7)
    assert generic.calls == [("log_images", {"samples": [image]}, 7)]
    aim = _ListImages("aim")
    tracking.send_image(aim, "samples", image, 7)
    assert aim.calls == [("log_images", {"samples": (image, "step 7")}, 7)]
    silent = _Recorder("dvclive")
    tracking.send_image(silent, "samples", image, 7)  # no image call: skipped, nothing raised
    assert silent.calls == []


PROCESS_MEAN = """
import json, sys
from accelerate import Accelerator
from svai.tracking import process_mean
accelerator = Accelerator(cpu=True)
rank = accelerator.process_index
mean = process_mean(accelerator, {"step": 3, "loss": float(rank + 1), "images_per_s": 10.0 * (rank + 1), "lr_factor": 1.0})
if accelerator.is_main_process:
    print(json.dumps(mean))
# Gloo's threads must stop before the interpreter does, or the exit may abort.
accelerator.wait_for_everyone()
accelerator.end_training()
"""


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_values_are_averaged_over_processes(tmp_path: Path) -> None:
    script = tmp_path / "mean.py"
    script.write_text(PROCESS_MEAN)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
               str(script)]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 0, done.stderr[:3000]
    mean = json.loads(done.stdout.strip().splitlines()[-1])
    assert mean == {"step": 3, "loss": 1.5, "images_per_s": 15.0, "lr_factor": 1.0}


def test_help_names_the_option_and_the_extra() -> None:
    text = " ".join(invoke("train", "--help").stdout.replace("│", " ").split())
    assert "--log-with TRACKER" in text and "pip install 'svai[tensorboard]'" in text
    assert "--log-with tensorboard" in text  # the example

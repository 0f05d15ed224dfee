from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from svai.checkpoint import find_checkpoint
from svai.errors import SvaiError
from svai.train import train
from tests.support.training import TINY, config


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(find_checkpoint(run).path / "weights.safetensors"))


@pytest.mark.parametrize("model", ["pix2pix", "cyclegan-attn"])
def test_interrupted_and_resumed_equals_one_go(model: str, tiny_dataset: Path, tmp_path: Path) -> None:
    # pix2pix exercises dropout and batch norm; cyclegan the image pools and unpaired draws.
    extra = ["train.batch_size=2", "model.pool_size=3"] if model.startswith("cyclegan") else ["train.batch_size=2"]
    one_go = train(config(model, tiny_dataset, 6, *extra), tmp_path / "one")
    assert one_go.step == 6 and not one_go.interrupted

    first = train(config(model, tiny_dataset, 6, *extra), tmp_path / "two", should_stop=lambda step: step == 3)
    assert first.interrupted and first.step == 3
    assert find_checkpoint(tmp_path / "two").step == 3
    resumed = train(config(model, tiny_dataset, 6, *extra), tmp_path / "two", resume=True)
    assert resumed.start_step == 3 and resumed.step == 6

    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert a.keys() == b.keys()
    mismatched = [k for k in a if not torch.equal(a[k], b[k])]
    assert not mismatched, mismatched[:5]
    # the log tells one history: one line per step, no duplicates from the resumed half
    steps = [json.loads(line)["step"] for line in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))


def test_different_seeds_give_different_weights(tiny_dataset: Path, tmp_path: Path) -> None:
    train(config("pix2pix", tiny_dataset, 1), tmp_path / "a")
    train(config("pix2pix", tiny_dataset, 1, "train.seed=1"), tmp_path / "b")
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("G."))


def test_run_folder_contents(tiny_dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(config("pix2pix", tiny_dataset, 4, "train.sample_every=2", "train.checkpoint_every=1",
                 "train.keep_checkpoints=2"), run)
    assert (run / "config.yaml").is_file()
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step-00000002.png", "step-00000004.png"]
    kept = sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir())
    assert kept == ["step-00000003", "step-00000004"]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-00000004"
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert all({"step", "G", "D", "images_per_s"} <= set(r) for r in records)
    from PIL import Image
    sample = Image.open(run / "samples" / "step-00000004.png")
    assert sample.size == (3 * 32, 4 * 32)  # before | generated | after, four test pairs


def test_a_new_run_refuses_an_existing_run_folder(tiny_dataset: Path, tmp_path: Path) -> None:
    train(config("pix2pix", tiny_dataset, 1), tmp_path / "run")
    with pytest.raises(SvaiError, match="already holds a run"):
        train(config("pix2pix", tiny_dataset, 2), tmp_path / "run")
    with pytest.raises(SvaiError, match="already at step 1"):
        train(config("pix2pix", tiny_dataset, 1), tmp_path / "run", resume=True)


def test_a_half_written_checkpoint_is_never_latest(tiny_dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(config("pix2pix", tiny_dataset, 2), run)
    # a crash mid-save leaves only a temporary folder behind
    (run / "checkpoints" / ".tmp-step-00000003-1").mkdir()
    ((run / "checkpoints" / ".tmp-step-00000003-1") / "weights.safetensors").write_bytes(b"partial")
    assert find_checkpoint(run).step == 2
    resumed = train(config("pix2pix", tiny_dataset, 3), run, resume=True)
    assert resumed.start_step == 2 and resumed.step == 3


def test_fp16_on_cpu_is_a_clear_error(tiny_dataset: Path, tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SvaiError, match="fp16 needs a CUDA GPU"):
        train(config("pix2pix", tiny_dataset, 1, "train.mixed_precision=fp16"), tmp_path / "run")


def test_bf16_autocast_trains_on_cpu(tiny_dataset: Path, tmp_path: Path) -> None:
    result = train(config("pix2pix", tiny_dataset, 2, "train.mixed_precision=bf16"), tmp_path / "run")
    assert result.step == 2
    assert all(torch.isfinite(v.float()).all() for v in weights(tmp_path / "run").values())


@pytest.mark.slow
def test_two_cpu_processes_share_one_run(tiny_dataset: Path, tmp_path: Path) -> None:
    """torchrun with two CPU processes (gloo): one log, one checkpoint with both RNG states."""
    import os
    import subprocess
    import sys

    run = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
               "-m", "svai.cli", "train", "--model", "cyclegan-attn", "--data", str(tiny_dataset), "--out", str(run),
               "--steps", "2", "--image-size", "32", *[x for s in TINY for x in ("--set", s)]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("trained cyclegan-attn") == 1
    checkpoint = find_checkpoint(run).path
    assert sorted(p.name for p in checkpoint.glob("rng-*")) == ["rng-0.safetensors", "rng-1.safetensors"]
    assert [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()] == [1, 2]


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_a_signal_saves_a_checkpoint_and_exits_cleanly(signum: str, tiny_dataset: Path, tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    command = [sys.executable, "-m", "svai.cli", "train", "--model", "pix2pix", "--data", str(tiny_dataset),
               "--out", str(run), "--steps", "100000", "--image-size", "32", *[x for s in TINY for x in ("--set", s)]]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    log = run / "log.jsonl"
    deadline = time.monotonic() + 120
    while not (log.is_file() and log.read_text().count("\n") >= 2):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.2)
    process.send_signal(getattr(signal, signum))
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "--resume" in stderr
    saved = find_checkpoint(run).step
    last_logged = json.loads(log.read_text().splitlines()[-1])["step"]
    assert saved == last_logged >= 2


def test_augmentation_is_part_of_the_config_and_resumes_exactly(tiny_dataset: Path, tmp_path: Path) -> None:
    augment = ["data.augment.hflip=0.5", "data.augment.rotate_p=0.5", "data.augment.color_p=0.5", "train.batch_size=2"]
    one_go = train(config("pix2pix", tiny_dataset, 4, *augment), tmp_path / "one")
    train(config("pix2pix", tiny_dataset, 4, *augment), tmp_path / "two", should_stop=lambda step: step == 2)
    train(config("pix2pix", tiny_dataset, 4, *augment), tmp_path / "two", resume=True)
    plain = train(config("pix2pix", tiny_dataset, 4, "train.batch_size=2"), tmp_path / "plain")
    a, b, c = weights(tmp_path / "one"), weights(tmp_path / "two"), weights(tmp_path / "plain")
    assert one_go.step == plain.step == 4
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if k.startswith("G."))  # augmentation changed training
    with pytest.raises(SvaiError, match="data.augment"):
        config("pix2pix", tiny_dataset, 1, "data.augment.hflip=2")


def test_a_second_writer_into_a_training_run_is_refused(tiny_dataset: Path, tmp_path: Path) -> None:
    from svai.train import prepare_training

    run = tmp_path / "run"
    first = prepare_training(config("pix2pix", tiny_dataset, 2), run)
    # A second new run into the same folder, and a resume, both meet the first one's lock.
    with pytest.raises(SvaiError, match="in use by process"):
        prepare_training(config("pix2pix", tiny_dataset, 2), run)
    first.run()  # releases the lock when done
    assert train(config("pix2pix", tiny_dataset, 3), run, resume=True).step == 3
    assert [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_a_run_that_failed_before_its_first_checkpoint_starts_again(tiny_dataset: Path, tmp_path: Path) -> None:
    from svai.train import prepare_training

    run = tmp_path / "run"
    # A run killed during its first steps: config.yaml and a log line, no checkpoint yet.
    prepare_training(config("pix2pix", tiny_dataset, 2), run).close()
    (run / "log.jsonl").write_text('{"step": 1}\n')
    assert not (run / "checkpoints").exists()
    assert train(config("pix2pix", tiny_dataset, 2), run).step == 2


def test_out_inside_the_dataset_is_refused(tiny_dataset: Path) -> None:
    with pytest.raises(SvaiError, match="inside --data"):
        train(config("pix2pix", tiny_dataset, 1), tiny_dataset / "run")
    assert not (tiny_dataset / "run").exists()


def corrupted_copy(tiny_dataset: Path, root: Path, pair: str) -> Path:
    import shutil

    data = root / "data"
    shutil.copytree(tiny_dataset, data)
    (data / "train" / "after" / f"{pair}.png").write_bytes(b"not a png")
    return data


def test_a_bad_dataset_file_is_skipped_with_a_warning(tiny_dataset: Path, tmp_path: Path, caplog) -> None:
    data = corrupted_copy(tiny_dataset, tmp_path, "p003")
    with caplog.at_level("WARNING"):
        result = train(config("pix2pix", data, 6, "train.batch_size=2"), tmp_path / "run")
    assert result.step == 6
    warnings = [r.getMessage() for r in caplog.records if "p003" in r.getMessage()]
    assert len(warnings) == 1 and "after/p003.png" in warnings[0]


def test_on_bad_file_error_names_the_file_and_keeps_the_finished_steps(tiny_dataset: Path, tmp_path: Path) -> None:
    from svai.data.dataset import StepBatches

    data = corrupted_copy(tiny_dataset, tmp_path, "p003")
    order = StepBatches(8, 2, 0, 6, 0)
    first = next(step for step in range(6) if any(i == 3 for i, _ in order.batch(step)))
    with pytest.raises(SvaiError, match="after/p003.png cannot be read"):
        train(config("pix2pix", data, 6, "train.batch_size=2", "data.on_bad_file=error"), tmp_path / "run")
    if first > 0:
        assert find_checkpoint(tmp_path / "run").step == first

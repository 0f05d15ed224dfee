"""Checkpoints on a damaged disk: verification, fallback to the newest intact one, permissions."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from svai.checkpoint import TrainingState, checkpoint_problem, find_checkpoint, safetensors_problem, save_checkpoint
from svai.errors import SvaiError
from svai.generate import load_model
from svai.train import train

from tests.support.training import config


@pytest.fixture
def run(tiny_dataset: Path, tmp_path: Path) -> Path:
    """A run with two checkpoints (steps 1 and 2), `latest` at step 2."""
    folder = tmp_path / "run"
    train(config("pix2pix", tiny_dataset, 2, "train.checkpoint_every=1", "train.evaluate=false"), folder)
    return folder


def step_dir(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step-{step:08d}"


def truncate(file: Path, keep: int) -> None:
    data = file.read_bytes()
    file.write_bytes(data[:keep] if keep >= 0 else data[:keep])


def test_intact_checkpoints_pass_verification(run: Path) -> None:
    assert checkpoint_problem(step_dir(run, 1)) is None and checkpoint_problem(step_dir(run, 2)) is None
    assert find_checkpoint(run).step == 2


@pytest.mark.parametrize("file, damage, problem", [
    ("weights.safetensors", lambda f: truncate(f, -100), "weights.safetensors truncated"),
    ("weights.safetensors", lambda f: f.write_bytes(b""), "weights.safetensors empty"),
    ("optimizer.safetensors", lambda f: f.write_bytes(b"\x08" + b"\x00" * 7 + b"notjson!"), "optimizer.safetensors not a safetensors file"),
    ("state.json", lambda f: f.write_bytes(b""), "state.json empty"),
    ("state.json", lambda f: f.write_text('{"step": 2, "optim'), "state.json not valid JSON"),
])
def test_a_damaged_newest_checkpoint_falls_back_to_the_older_one(
    run: Path, file: str, damage, problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    damage(step_dir(run, 2) / file)
    assert checkpoint_problem(step_dir(run, 2)) == problem
    with caplog.at_level(logging.WARNING, logger="svai.checkpoint"):
        assert find_checkpoint(run).step == 1
    [message] = [r.getMessage() for r in caplog.records if r.name == "svai.checkpoint"]
    assert str(step_dir(run, 2) / file) in message and "step-00000001" in message and "\n" not in message
    # generate takes the intact one as well, and so does a resumed run
    assert load_model(run).step == 1


def test_resume_continues_from_the_newest_intact_checkpoint(run: Path, tiny_dataset: Path) -> None:
    truncate(step_dir(run, 2) / "weights.safetensors", 50)
    resumed = train(config("pix2pix", tiny_dataset, 3, "train.checkpoint_every=1", "train.evaluate=false"),
                    run, resume=True)
    assert resumed.start_step == 1 and resumed.step == 3
    assert find_checkpoint(run).step == 3


def test_no_intact_checkpoint_is_one_clear_error(run: Path) -> None:
    (step_dir(run, 1) / "state.json").write_bytes(b"")
    truncate(step_dir(run, 2) / "rng-0.safetensors", 10)
    with pytest.raises(SvaiError, match="no intact checkpoint") as error:
        find_checkpoint(run)
    assert "\n" not in str(error.value) and "rng-0.safetensors" in str(error.value)


def test_a_damaged_chosen_step_names_the_file(run: Path) -> None:
    truncate(step_dir(run, 1) / "weights.safetensors", 30)
    with pytest.raises(SvaiError, match=r"--checkpoint 1: .*weights.safetensors is damaged \(truncated\)"):
        find_checkpoint(run, 1)


def test_safetensors_problem_sees_trailing_bytes(run: Path) -> None:
    file = step_dir(run, 2) / "weights.safetensors"
    file.write_bytes(file.read_bytes() + b"x")
    assert safetensors_problem(file) == "has trailing bytes"


def test_checkpoint_files_get_the_mode_of_ordinary_files(run: Path, tmp_path: Path) -> None:
    probe = tmp_path / "probe"
    probe.write_text("x")
    expected = stat.S_IMODE(probe.stat().st_mode)
    for file in step_dir(run, 2).iterdir():
        assert stat.S_IMODE(file.stat().st_mode) == expected, file
    assert stat.S_IMODE((run / "config.yaml").stat().st_mode) == expected


def test_leftovers_of_a_crashed_save_are_removed_at_the_next_save(tmp_path: Path) -> None:
    import torch

    root = tmp_path / "checkpoints"
    dead = root / ".tmp-step-00000009-999999999"
    dead.mkdir(parents=True)
    (dead / "weights.safetensors").write_bytes(b"partial")
    live = root / f".tmp-step-00000009-{os.getppid()}"  # a live process's save is left alone
    live.mkdir()
    net = torch.nn.Linear(2, 2)
    save_checkpoint(tmp_path, TrainingState(1, {"G": net}, {"g": torch.optim.Adam(net.parameters())}))
    assert not dead.exists() and live.exists()


def test_frozen_entries_are_left_out_and_not_expected_back(tmp_path: Path) -> None:
    import torch
    from safetensors import safe_open

    from svai.checkpoint import load_networks

    def nets() -> dict[str, torch.nn.Module]:
        return {"G": torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)), "vgg": torch.nn.Linear(4, 4)}

    # All of "vgg" and the first layer of "G" are pretrained (a base model under an adapter).
    def frozen(network: str, key: str) -> bool:
        return network == "vgg" or key.startswith("0.")

    saved = nets()
    path = save_checkpoint(tmp_path, TrainingState(1, saved, {}, frozen=frozen))
    with safe_open(str(path / "weights.safetensors"), framework="pt") as handle:
        assert sorted(handle.keys()) == ["G.1.bias", "G.1.weight"]
    fresh = nets()
    load_networks(path, fresh, frozen=frozen)
    torch.testing.assert_close(fresh["G"][1].weight, saved["G"][1].weight)
    # Without the predicate the same file is short of the frozen entries: a one-line error.
    with pytest.raises(SvaiError, match=r"weights of 'G' do not fit the configured model \(missing '0.weight'\)"):
        load_networks(path, nets())


def _rewrite_header(file: Path, change) -> None:  # type: ignore[no-untyped-def]
    import json
    import struct

    data = file.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    change(header[next(k for k in header if k != "__metadata__" and header[k]["shape"])])
    text = json.dumps(header, separators=(",", ":")).encode().ljust(length)
    assert len(text) == length
    file.write_bytes(data[:8] + text + data[8 + length:])


@pytest.mark.parametrize("change", [
    lambda entry: entry.__setitem__("data_offsets", None),
    lambda entry: entry.__setitem__("data_offsets", "0,4"),
    lambda entry: entry.__setitem__("shape", [True] * len(entry["shape"])),
    lambda entry: entry.__setitem__("dtype", 5),
    lambda entry: entry.pop("shape"),
])
def test_a_tampered_header_is_a_damaged_checkpoint_not_a_crash(run: Path, change) -> None:  # type: ignore[no-untyped-def]
    file = step_dir(run, 2) / "weights.safetensors"
    _rewrite_header(file, change)
    assert safetensors_problem(file) in ("has a damaged header", "not a safetensors file")
    assert find_checkpoint(run).step == 1  # the older, intact checkpoint


def test_a_full_disk_while_saving_is_one_line_and_leaves_no_partial_folder(
        run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors import SafetensorError

    from svai.generate import load_model

    model = load_model(run)

    def full(tensors, filename, metadata=None):  # type: ignore[no-untyped-def]
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                              'message: "No space left on device" })')

    monkeypatch.setattr("svai.checkpoint.save_file", full)
    with pytest.raises(SvaiError, match="no space left"):
        save_checkpoint(run, TrainingState(3, model.nets, {}))
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")) == []

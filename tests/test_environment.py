"""RUN/environment.json: what reproduces a run, written at the start and appended to on resume."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import svai
from svai import environment
from svai.run import resolve
from svai.train import train

SETS = ["model.ngf=8", "model.ndf=8", "train.sample_every=0", "train.evaluate=false"]


def test_a_run_records_versions_device_precision_seed_and_command(tiny_dataset: Path, tmp_path: Path) -> None:
    import accelerate
    import torch

    run = tmp_path / "run"
    config = resolve("pix2pix", sets=SETS, flags={"data.root": str(tiny_dataset), "train.steps": 1,
                                                  "data.image_size": 32, "train.seed": 5,
                                                  "train.mixed_precision": "bf16"})
    train(config, run, command="svai train --model pix2pix")
    record = json.loads((run / environment.ENVIRONMENT_FILE).read_text())
    assert record["svai_version"] == svai.__version__
    assert record["torch"] == torch.__version__ and record["accelerate"] == accelerate.__version__
    assert record["device"] == ("cpu" if not torch.cuda.is_available() else record["device"])
    assert (record["precision"], record["seed"], record["processes"]) == ("bf16", 5, 1)
    assert record["command"] == "svai train --model pix2pix" and record["start_step"] == 0
    checkout = Path(svai.__file__).resolve().parent.parent
    if (checkout / ".git").exists():
        head = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True)
        assert record["git_commit"] == head.stdout.strip()
        assert isinstance(record["git_dirty"], bool)
    else:
        assert "git_commit" not in record

    # A resume keeps the first start on top and appends its own record.
    resumed = resolve(base=json.loads(json.dumps(config.to_dict())), flags={"train.steps": 2})
    train(resumed, run, resume=True, command="svai train --out run --resume --steps 2")
    again = json.loads((run / environment.ENVIRONMENT_FILE).read_text())
    assert {k: v for k, v in again.items() if k != "resumes"} == record
    [resume] = again["resumes"]
    assert resume["start_step"] == 1 and resume["command"] == "svai train --out run --resume --steps 2"


@pytest.mark.parametrize("argv, expected", [
    (["/venv/bin/svai", "train", "--out", "my run"], "svai train --out 'my run'"),
    (["/src/svai/cli/__main__.py", "generate", "--run", "r"], "svai generate --run r"),
    (["notebook.py", "--x"], "notebook.py --x"),
    ([], ""),
])
def test_the_command_is_recorded_as_typed(argv: list[str], expected: str) -> None:
    assert environment.command_line(argv) == expected


def test_git_state_looks_only_at_the_given_folder(tmp_path: Path) -> None:
    inner = tmp_path / "venv" / "site-packages"
    inner.mkdir(parents=True)
    (tmp_path / ".git").mkdir()  # a checkout around a virtual environment is not svai's checkout
    assert environment.git_state(inner) == (None, None)


def test_differences_name_only_the_fields_that_differ() -> None:
    a = {"svai_version": "0.1.0", "torch": "2.4.0", "device": "cpu", "seed": 0, "precision": "no",
         "command": "svai train --out a", "started": "2025-01-01T00:00:00Z"}
    b = {**a, "torch": "2.5.1", "device": "cuda (NVIDIA H100)", "command": "svai train --out b"}
    c = {**a, "git_commit": "abc123", "git_dirty": True}
    assert environment.difference_lines({"a": a, "b": b, "none": None}) == [
        "torch: 2.4.0 (a), 2.5.1 (b)", "device: cpu (a), cuda (NVIDIA H100) (b)"]
    assert environment.difference_lines({"a": a, "c": c}) == [
        "git commit: - (a), abc123 (c)", "uncommitted changes: - (a), yes (c)"]
    assert environment.difference_lines({"a": a, "a2": dict(a)}) == []
    assert environment.difference_lines({"a": a}) == []

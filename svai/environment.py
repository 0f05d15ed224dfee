"""What reproduces a run besides its config: versions, the commit, the device and the command.

`RUN/environment.json` is written atomically when training starts. Its top level describes the
first start; every resume appends its own record under `resumes`, so a run continued on
another machine or version says so. `svai compare` reads the top level and names the fields
that differ between runs (`differences`).

This module imports neither torch nor accelerate at load time: the report reads it too.
"""

from __future__ import annotations

import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

ENVIRONMENT_FILE = "environment.json"
# The fields a comparison names when they differ, in the order it names them, with labels.
COMPARED = {
    "svai_version": "svai",
    "git_commit": "git commit",
    "git_dirty": "uncommitted changes",
    "python": "python",
    "torch": "torch",
    "accelerate": "accelerate",
    "cuda": "CUDA",
    "device": "device",
    "processes": "processes",
    "precision": "precision",
    "seed": "seed",
}


def git_state(root: Path) -> tuple[str | None, bool | None]:
    """(commit, uncommitted changes) of the checkout whose top folder is `root`; (None, None)
    when it is not one or git is missing. Only `root` itself is looked at: a package installed
    into a virtual environment that lies inside some other checkout is not that checkout."""
    root = Path(root).resolve()
    if not (root / ".git").exists():
        return None, None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit or None, bool(status.strip())


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command as a user would type it again: `svai train ...` for the CLI, whether it ran
    as the `svai` script, `python -m svai.cli` or under torchrun; the argv otherwise."""
    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return ""
    first = Path(argv[0])
    if first.name == "svai" or first.parts[-3:] == ("svai", "cli", "__main__.py"):
        return shlex.join(["svai", *argv[1:]])
    return shlex.join(argv)


def device_name(device: Any) -> str:
    """"cpu", or "cuda (NVIDIA H100 80GB HBM3)" with the GPU's name."""
    import torch

    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


def environment_record(
    *,
    device: Any,
    processes: int,
    precision: str,
    seed: int,
    start_step: int = 0,
    command: str | None = None,
) -> dict[str, Any]:
    """Everything besides the config that a rerun needs to match, for this process now."""
    import accelerate
    import torch

    import svai

    commit, dirty = git_state(Path(svai.__file__).resolve().parent.parent)
    record: dict[str, Any] = {"svai_version": svai.__version__}
    if commit is not None:
        record.update(git_commit=commit, git_dirty=dirty)
    record.update(
        python=platform.python_version(),
        torch=torch.__version__,
        accelerate=accelerate.__version__,
        cuda=torch.version.cuda,
        device=device_name(device),
        processes=processes,
        precision=precision,
        seed=seed,
        platform=platform.platform(),
        command=command_line() if command is None else command,
        started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        start_step=start_step,
    )
    return record


def read_environment(run_dir: Path) -> dict[str, Any] | None:
    """A run folder's environment record, or None when it has none (runs from before the
    record existed) or it cannot be read."""
    from svai.io import read_json_object

    return read_json_object(Path(run_dir) / ENVIRONMENT_FILE)


def write_environment(run_dir: Path, record: Mapping[str, Any]) -> Path:
    """Record a start in `RUN/environment.json`, atomically: the first start becomes the
    top level, a later start (a resume) is appended under `resumes`."""
    from svai.io import write_atomic

    path = Path(run_dir) / ENVIRONMENT_FILE
    earlier = read_environment(run_dir) if record.get("start_step") else None
    if earlier is None:
        data = dict(record)
    else:
        data = {**earlier, "resumes": [*earlier.get("resumes", []), dict(record)]}
    write_atomic(path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))
    return path


def differences(records: Mapping[str, Mapping[str, Any] | None]) -> list[tuple[str, dict[str, str]]]:
    """(label, {run: value}) for each compared field whose value differs between the runs
    that hold a record; runs without one are left out."""
    present = {run: record for run, record in records.items() if record}
    if len(present) < 2:
        return []
    out = []
    for key, label in COMPARED.items():
        values = {run: _text(record.get(key)) for run, record in present.items()}
        if len(set(values.values())) > 1:
            out.append((label, values))
    return out


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def difference_lines(records: Mapping[str, Mapping[str, Any] | None]) -> list[str]:
    """`differences` as lines: "torch: 2.4.0 (p2p), 2.5.1 (cga)"."""
    lines = []
    for label, values in differences(records):
        grouped: dict[str, list[str]] = {}
        for run, value in values.items():
            grouped.setdefault(value, []).append(run)
        lines.append(f"{label}: " + ", ".join(f"{value} ({', '.join(runs)})" for value, runs in grouped.items()))
    return lines


__all__ = ["COMPARED", "ENVIRONMENT_FILE", "command_line", "device_name", "difference_lines", "differences",
           "environment_record", "git_state", "read_environment", "write_environment"]

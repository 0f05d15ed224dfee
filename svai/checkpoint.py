"""Checkpoints: safetensors files written atomically, so a crash never leaves a broken "latest".

A checkpoint is a folder `RUN/checkpoints/step-00001000/` holding

- `weights.safetensors`: every network's state dict, keys prefixed `<network>.`
- `optimizer.safetensors`: every optimiser's tensors, keys `<phase>/<param index>/<name>`
- `rng-<rank>.safetensors`: torch (CPU and CUDA) and numpy random states of one process
- `state.json`: step, optimiser hyperparameters, python random states, grad-scaler state

It is written under a temporary name and renamed into place; only then does
`RUN/checkpoints/latest` (a one-line text file) move to it. Nothing here unpickles.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from svai.io import write_atomic
from svai.errors import SvaiError

CHECKPOINTS = "checkpoints"
LATEST = "latest"


def step_name(step: int) -> str:
    return f"step-{step:08d}"


@dataclass(frozen=True)
class CheckpointRef:
    path: Path
    step: int


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _tensors_of(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share storage; a contiguous copy is always safe.
    return {f"{prefix}{k}": v.detach().cpu().contiguous().clone() for k, v in state.items()}


def network_tensors(nets: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for name, net in nets.items():
        tensors.update(_tensors_of(net.state_dict(), f"{name}."))
    return tensors


def optimizer_payload(optimizers: dict[str, torch.optim.Optimizer]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split optimiser state dicts into tensors (safetensors) and plain values (JSON)."""
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {}
    for phase, optimizer in optimizers.items():
        state = optimizer.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for index, values in state["state"].items():
            for key, value in values.items():
                if torch.is_tensor(value):
                    tensors[f"{phase}/{index}/{key}"] = value.detach().cpu().contiguous().clone()
                else:
                    scalars.setdefault(str(index), {})[key] = value
        meta[phase] = {"param_groups": state["param_groups"], "scalars": scalars}
    return tensors, meta


def load_optimizers(path: Path, optimizers: dict[str, torch.optim.Optimizer], meta: dict[str, Any]) -> None:
    tensors = load_file(str(path / "optimizer.safetensors"))
    for phase, optimizer in optimizers.items():
        if phase not in meta:
            raise SvaiError(f"{path}: no optimiser state for phase {phase!r}; the run's model has changed")
        state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            owner, index, name = key.split("/", 2)
            if owner == phase:
                state.setdefault(int(index), {})[name] = value
        for index, values in meta[phase]["scalars"].items():
            state.setdefault(int(index), {}).update(values)
        groups = meta[phase]["param_groups"]
        for group in groups:
            if "betas" in group:
                group["betas"] = tuple(group["betas"])
        optimizer.load_state_dict({"state": state, "param_groups": groups})


def rng_payload() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{index}"] = state
    kind, keys, position, has_gauss, cached = np.random.get_state()
    tensors["numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.uint32).astype(np.int64))
    version, internal, gauss_next = random.getstate()
    meta = {
        "numpy": {"kind": kind, "position": int(position), "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
    }
    return tensors, meta


def restore_rng(path: Path, rank: int, meta: dict[str, Any]) -> None:
    file = path / f"rng-{rank}.safetensors"
    if not file.is_file():
        file = path / "rng-0.safetensors"
    tensors = load_file(str(file))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    saved = meta["rng"][str(rank)] if str(rank) in meta["rng"] else meta["rng"]["0"]
    numpy_meta = saved["numpy"]
    np.random.set_state((
        numpy_meta["kind"], tensors["numpy"].numpy().astype(np.uint32), numpy_meta["position"],
        numpy_meta["has_gauss"], numpy_meta["cached"],
    ))
    python = saved["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss_next"]))


def save_checkpoint(
    run_dir: Path,
    step: int,
    nets: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    extra: dict[str, Any] | None = None,
    rng_states: list[tuple[dict[str, torch.Tensor], dict[str, Any]]] | None = None,
    keep: int = 2,
) -> Path:
    """Write a checkpoint for `step` atomically, point `latest` at it, prune to `keep`.

    `rng_states` holds one `rng_payload()` per process (rank order); by default this
    process's only. Call on the main process only.
    """
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_name(step)
    tmp = root / f".tmp-{step_name(step)}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(network_tensors(nets), str(tmp / "weights.safetensors"))
    optimizer_tensors, optimizer_meta = optimizer_payload(optimizers)
    save_file(optimizer_tensors, str(tmp / "optimizer.safetensors"))
    rng_meta: dict[str, Any] = {}
    for rank, (tensors, meta) in enumerate(rng_states or [rng_payload()]):
        save_file(tensors, str(tmp / f"rng-{rank}.safetensors"))
        rng_meta[str(rank)] = meta
    state = {"step": step, "optimizers": optimizer_meta, "rng": rng_meta, **(extra or {})}
    (tmp / "state.json").write_text(json.dumps(state) + "\n", encoding="utf-8")
    for file in tmp.iterdir():
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())
    if final.exists():
        # Re-saving the same step (an interrupt right after a scheduled save) replaces it whole.
        old = root / f".old-{step_name(step)}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(root)
    write_atomic(root / LATEST, (final.name + "\n").encode())
    _prune(root, keep)
    return final


def _prune(root: Path, keep: int) -> None:
    steps = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))
    for old in steps[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(run_dir: Path, which: str | int = "latest") -> CheckpointRef:
    """Locate `latest` or a given step in a run folder; errors name the folder and the fix."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        raise SvaiError(f"{run_dir} has no checkpoints: train it first (svai train ... --out {run_dir})")
    available = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))
    if which == "latest":
        pointer = root / LATEST
        name = pointer.read_text(encoding="utf-8").strip() if pointer.is_file() else ""
        path = root / name if name else None
        if path is None or not (path / "state.json").is_file():
            # `latest` is only moved after a complete write, so this means it was removed by hand.
            complete = [p for p in available if (p / "state.json").is_file()]
            if not complete:
                raise SvaiError(f"{run_dir} has no complete checkpoint: train it first")
            path = complete[-1]
    else:
        try:
            step = int(which)
        except (TypeError, ValueError):
            raise SvaiError(f"--checkpoint {which!r}: use latest or a step number") from None
        path = root / step_name(step)
        if not (path / "state.json").is_file():
            steps = ", ".join(str(int(p.name[5:])) for p in available) or "none"
            raise SvaiError(f"--checkpoint {step}: no such checkpoint in {run_dir} (available: {steps})")
    state = read_state(path)
    return CheckpointRef(path=path, step=int(state["step"]))


def read_state(path: Path) -> dict[str, Any]:
    return json.loads((Path(path) / "state.json").read_text(encoding="utf-8"))


def load_networks(path: Path, nets: dict[str, nn.Module], names: tuple[str, ...] | None = None) -> None:
    """Load the named networks (all by default) from a checkpoint's weights, strictly."""
    file = Path(path) / "weights.safetensors"
    wanted = set(names) if names is not None else set(nets)
    states: dict[str, dict[str, torch.Tensor]] = {name: {} for name in wanted}
    with safe_open(str(file), framework="pt", device="cpu") as handle:
        for key in handle.keys():
            owner, _, rest = key.partition(".")
            if owner in states:
                states[owner][rest] = handle.get_tensor(key)
    for name in wanted:
        if not states[name]:
            raise SvaiError(f"{file} has no weights for network {name!r}")
        try:
            nets[name].load_state_dict(states[name], strict=True)
        except RuntimeError as error:
            first = str(error).strip().splitlines()[0]
            raise SvaiError(f"{file}: weights of {name!r} do not fit the configured model ({first})") from None

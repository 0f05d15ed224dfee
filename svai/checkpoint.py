"""Checkpoints: safetensors files written atomically, so a crash never leaves a broken "latest".

A checkpoint is a folder `RUN/checkpoints/step-00001000/` holding

- `weights.safetensors`: every network's state dict, keys prefixed `<network>.`
- `optimizer.safetensors`: every optimiser's tensors, keys `<phase>/<param index>/<name>`
- `rng-<rank>.safetensors`: torch (CPU and CUDA) and numpy random states of one process
- `state.json`: step, optimiser hyperparameters, python random states, grad-scaler state

It is written under a temporary name and renamed into place; only then does
`RUN/checkpoints/latest` (a one-line text file) move to it. Nothing here unpickles.

Loading does not trust the disk: a file truncated or emptied after the write (a full disk,
a copy that stopped, a hand edit) is found by `checkpoint_problem` before anything is loaded,
and `find_checkpoint` falls back to the newest intact checkpoint, saying which it skipped.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from svai.io import default_file_mode, remove_stale_temporaries, safetensors_reason, write_atomic
from svai.errors import SvaiError

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
LATEST = "latest"
_REQUIRED = ("weights.safetensors", "optimizer.safetensors", "rng-0.safetensors", "state.json")
# A safetensors header larger than this is not one svai wrote (it would describe millions of tensors).
_MAX_HEADER = 100 << 20


def step_name(step: int) -> str:
    return f"step-{step:08d}"


@dataclass(frozen=True)
class CheckpointRef:
    path: Path
    step: int


def safetensors_problem(file: Path) -> str | None:
    """Why `file` is not a complete safetensors file, or None when its header and size agree."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                return "empty" if not head else "truncated"
            (length,) = struct.unpack("<Q", head)
            if length > min(size - 8, _MAX_HEADER):
                return "truncated" if length <= _MAX_HEADER else "not a safetensors file"
            header = json.loads(handle.read(length))
    except FileNotFoundError:
        return "missing"
    except OSError as error:
        return f"unreadable ({error.strerror})"
    except (ValueError, UnicodeDecodeError, RecursionError):
        return "not a safetensors file"
    if not isinstance(header, dict):
        return "not a safetensors file"
    end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        span = _tensor_span(entry)
        if span is None:
            return "has a damaged header"
        end = max(end, span)
    expected = 8 + length + end
    if size < expected:
        return "truncated"
    if size > expected:
        return "has trailing bytes"
    return None


# Bytes per element of the dtypes safetensors knows.
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
                "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def _tensor_span(entry: Any) -> int | None:
    """Where a header entry's data ends, or None when the entry does not describe a tensor
    (its offsets, shape and dtype must agree)."""
    if not isinstance(entry, dict):
        return None
    offsets, shape, dtype = entry.get("data_offsets"), entry.get("shape"), entry.get("dtype")
    whole = (int,)
    if (not isinstance(offsets, list) or len(offsets) != 2 or not isinstance(shape, list)
            or dtype not in _DTYPE_BYTES
            or not all(isinstance(v, whole) and not isinstance(v, bool) and v >= 0 for v in [*offsets, *shape])):
        return None
    count = 1
    for dim in shape:
        count *= dim
    if offsets[1] - offsets[0] != count * _DTYPE_BYTES[dtype]:
        return None
    return offsets[1]


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint folder `path` cannot be loaded ("weights.safetensors truncated"), or None."""
    path = Path(path)
    for name in _REQUIRED:
        file = path / name
        if name.endswith(".safetensors"):
            problem = safetensors_problem(file)
        else:
            try:
                state = json.loads(file.read_text(encoding="utf-8"))
                problem = None if isinstance(state, dict) and isinstance(state.get("step"), int) else "incomplete"
            except FileNotFoundError:
                problem = "missing"
            except (OSError, ValueError, RecursionError):
                problem = "empty" if file.is_file() and file.stat().st_size == 0 else "not valid JSON"
        if problem is not None:
            return f"{name} {problem}"
    return None


def has_checkpoint(run_dir: Path) -> bool:
    """Whether the run folder holds at least one finished checkpoint folder (intact or not)."""
    root = Path(run_dir) / CHECKPOINTS
    return root.is_dir() and any(p.is_dir() and p.name.startswith("step-") for p in root.iterdir())


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


# (network, state-dict key) -> whether the entry is pretrained and frozen: such entries come
# from the weights lookup (`ModelFamily.load_pretrained`), never from a checkpoint.
Frozen = Callable[[str, str], bool]


def network_tensors(nets: dict[str, nn.Module], frozen: Frozen | None = None) -> dict[str, torch.Tensor]:
    """Every network's state-dict tensors, keys prefixed `<network>.`, less the frozen entries."""
    tensors: dict[str, torch.Tensor] = {}
    for name, net in nets.items():
        state = {k: v for k, v in net.state_dict().items() if frozen is None or not frozen(name, k)}
        tensors.update(_tensors_of(state, f"{name}."))
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


def _load_file(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except SafetensorError as error:
        raise SvaiError(f"{file} is damaged ({error}): resume from another checkpoint") from None


def load_optimizers(path: Path, optimizers: dict[str, torch.optim.Optimizer], meta: dict[str, Any]) -> None:
    tensors = _load_file(path / "optimizer.safetensors")
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
    tensors = _load_file(file)
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


@dataclass(frozen=True)
class TrainingState:
    """What a checkpoint holds: the step, the networks, the optimizers, `extra` entries for
    state.json, one `rng_payload()` per process in rank order (None: this process's only), and
    which network entries are frozen (left out)."""

    step: int
    nets: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    extra: dict[str, Any] | None = None
    rng_states: list[tuple[dict[str, torch.Tensor], dict[str, Any]]] | None = None
    frozen: Frozen | None = None


def save_checkpoint(run_dir: Path, state: TrainingState, keep: int = 2) -> Path:
    """Write a checkpoint of `state` atomically, point `latest` at it, prune to `keep`. Call on
    the main process only."""
    step = state.step
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(root)
    final = root / step_name(step)
    tmp = root / f".tmp-{step_name(step)}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        _write_folder(tmp, state)
    except BaseException:
        # A full disk or a stop half-way: the partial folder goes, the last checkpoint stays.
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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


def _write_folder(tmp: Path, state: TrainingState) -> None:
    """Every file of a checkpoint, written and synced into the (temporary) folder `tmp`."""
    _save_tensors(network_tensors(state.nets, state.frozen), tmp / "weights.safetensors")
    optimizer_tensors, optimizer_meta = optimizer_payload(state.optimizers)
    _save_tensors(optimizer_tensors, tmp / "optimizer.safetensors")
    rng_meta: dict[str, Any] = {}
    for rank, (tensors, meta) in enumerate(state.rng_states or [rng_payload()]):
        _save_tensors(tensors, tmp / f"rng-{rank}.safetensors")
        rng_meta[str(rank)] = meta
    record = {"step": state.step, "optimizers": optimizer_meta, "rng": rng_meta, **(state.extra or {})}
    (tmp / "state.json").write_text(json.dumps(record) + "\n", encoding="utf-8")
    mode = default_file_mode()
    for file in tmp.iterdir():
        # safetensors creates its files owner-only; give them the mode of the run's other files.
        os.chmod(file, mode)
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())


def _save_tensors(tensors: dict[str, torch.Tensor], file: Path) -> None:
    """safetensors' save_file, its I/O failures (a full disk) turned into one line."""
    try:
        save_file(tensors, str(file))
    except SafetensorError as error:
        raise SvaiError(f"cannot write the checkpoint file {file}: {safetensors_reason(error)}") from None


def _prune(root: Path, keep: int) -> None:
    steps = sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and p.name.startswith("step-"))
    for old in steps[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(run_dir: Path, which: str | int = "latest") -> CheckpointRef:
    """Locate `latest` or a given step in a run folder; errors name the folder and the fix."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        raise SvaiError(f"{run_dir} has no checkpoints: train it first (svai train ... --out {run_dir})")
    available = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))
    if which == "latest":
        path = _newest_intact(run_dir, root, available)
    else:
        try:
            step = int(which)
        except (TypeError, ValueError):
            raise SvaiError(f"--checkpoint {which!r}: use latest or a step number") from None
        path = root / step_name(step)
        if not path.is_dir():
            steps = ", ".join(str(int(p.name[5:])) for p in available) or "none"
            raise SvaiError(f"--checkpoint {step}: no such checkpoint in {run_dir} (available: {steps})")
        problem = checkpoint_problem(path)
        if problem is not None:
            raise SvaiError(f"--checkpoint {step}: {path / problem.split()[0]} is damaged ({problem.split(' ', 1)[1]}); "
                            "choose another step")
    state = read_state(path)
    return CheckpointRef(path=path, step=int(state["step"]))


def _newest_intact(run_dir: Path, root: Path, available: list[Path]) -> Path:
    """The checkpoint `latest` names when it is intact, else the newest intact one."""
    pointer = root / LATEST
    try:
        name = pointer.read_text(encoding="utf-8").strip() if pointer.is_file() else ""
    except (OSError, UnicodeDecodeError):
        name = ""
    named = root / name if name and (root / name) in available else None
    # `latest` is only moved after a complete write; without it, the newest folder comes first.
    candidates = ([named] if named else []) + [p for p in reversed(available) if p != named]
    damaged: list[str] = []
    for path in candidates:
        problem = checkpoint_problem(path)
        if problem is None:
            if damaged:
                log.warning("%s; using %s instead", "; ".join(damaged), path)
            return path
        file, _, why = problem.partition(" ")
        damaged.append(f"checkpoint {path / file} is damaged ({why})")
    if damaged:
        raise SvaiError(f"{run_dir} has no intact checkpoint ({damaged[0]}): train it again without --resume "
                        "into a new folder")
    raise SvaiError(f"{run_dir} has no complete checkpoint: train it first")


def read_state(path: Path) -> dict[str, Any]:
    return json.loads((Path(path) / "state.json").read_text(encoding="utf-8"))


def load_networks(
    path: Path, nets: dict[str, nn.Module], names: tuple[str, ...] | None = None, frozen: Frozen | None = None,
) -> None:
    """Load the named networks (all by default) from a checkpoint's weights, strictly: every
    entry but the `frozen` ones (filled from the weights lookup instead) must be there."""
    file = Path(path) / "weights.safetensors"
    wanted = set(names) if names is not None else set(nets)
    states: dict[str, dict[str, torch.Tensor]] = {name: {} for name in wanted}
    try:
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            for key in handle.keys():
                owner, _, rest = key.partition(".")
                if owner in states:
                    states[owner][rest] = handle.get_tensor(key)
    except SafetensorError as error:
        raise SvaiError(f"{file} is damaged ({error}): use another checkpoint") from None
    for name in sorted(wanted):
        expected = [k for k in nets[name].state_dict() if frozen is None or not frozen(name, k)]
        if expected and not states[name]:
            raise SvaiError(f"{file} has no weights for network {name!r}")
        missing = [k for k in expected if k not in states[name]]
        unexpected = [k for k in states[name] if k not in set(expected)]
        if missing or unexpected:
            first = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
            raise SvaiError(f"{file}: weights of {name!r} do not fit the configured model ({first})")
        try:
            nets[name].load_state_dict(states[name], strict=False)
        except RuntimeError as error:
            first = str(error).strip().splitlines()[0]
            raise SvaiError(f"{file}: weights of {name!r} do not fit the configured model ({first})") from None

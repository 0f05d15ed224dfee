"""Experiment trackers (TensorBoard, W&B, MLflow, Aim …) through Accelerate's own integration.

`train.log_with` names the trackers; the loop builds its `Accelerator` with them and a
`project_dir` inside the run folder, and a `Tracking` object sends what `log.jsonl` holds (the
losses, the learning-rate factor, images per second), the optimisers' learning rates and the
sample grids at the steps the loop logs and samples. Only the main process talks to a
tracker; the values it sends are means over all processes (`process_mean`). `log.jsonl`
stays the source of truth: the report draws curves from it whether a tracker ran or not.

Nothing here sends anything anywhere by itself: TensorBoard and Aim write files under
`RUN/trackers/`; W&B, MLflow with a server URI and the hosted trackers send what their own
settings say, and `sending_notice` says so before the first step.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from svai.errors import SvaiError

log = logging.getLogger(__name__)

TRACKERS_DIR = "trackers"
# The project (W&B project, MLflow experiment, TensorBoard folder) every run logs under; the
# run folder's name tells runs apart.
PROJECT = "svai"
# The pip extra that installs each tracker svai documents; the others install by their own name.
EXTRAS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "aim": "aim"}
# Trackers that keep everything on this machine unless their own settings say otherwise.
LOCAL = frozenset({"tensorboard", "aim", "dvclive"})
SAMPLES_TAG = "samples"


def tracker_names() -> tuple[str, ...]:
    """The tracker names Accelerate knows, in its order ("all" left out: runs name theirs)."""
    from accelerate.utils import LoggerType

    return tuple(str(kind.value) for kind in LoggerType if kind.value != "all")


def _installed(name: str) -> bool:
    from accelerate.tracking import get_available_trackers

    return name in {str(getattr(kind, "value", kind)) for kind in get_available_trackers()}


def check_trackers(names: Sequence[str]) -> list[str]:
    """The trackers of `train.log_with`, checked: each known to Accelerate and installed.

    Commas inside an entry separate names too; repeats are dropped. An unknown or missing
    tracker is a `SvaiError` naming it and the fix, raised before anything is built.
    """
    wanted: list[str] = []
    for entry in names:
        for name in str(entry).split(","):
            name = name.strip().lower()
            if name and name not in wanted:
                wanted.append(name)
    known = tracker_names()
    for name in wanted:
        if name not in known:
            raise SvaiError(f"--log-with {name}: not a tracker Accelerate supports; use one of {', '.join(known)}")
        if not _installed(name):
            extra = EXTRAS.get(name)
            fix = f"pip install 'svai[{extra}]'" if extra else f"pip install {name}"
            raise SvaiError(f"--log-with {name}: the {name} package is not installed here; {fix}, or drop --log-with")
    return wanted


def sending_notice(names: Sequence[str], environ: Mapping[str, str] | None = None) -> list[str]:
    """One line per chosen tracker that will send the run (losses, settings and the sample
    grids, which show patients' faces) off this machine under its current settings."""
    environ = os.environ if environ is None else environ
    lines = []
    for name in names:
        if name in LOCAL:
            continue
        if name == "wandb" and environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun"):
            continue
        if name == "mlflow":
            uri = environ.get("MLFLOW_TRACKING_URI", "")
            if not uri.startswith(("http:", "https:", "databricks")):
                continue
            lines.append(f"mlflow logs to {uri}: losses, settings and sample grids (patient photos) leave this machine")
            continue
        hint = "; set WANDB_MODE=offline to keep them here" if name == "wandb" else ""
        lines.append(f"{name} sends the run's losses, settings and sample grids (patient photos) to its server{hint}")
    return lines


def flat_hparams(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as one level of dotted keys whose values every tracker takes:
    numbers, strings and booleans as they are, lists joined with commas, None as ""."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_hparams(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            out[name] = ", ".join(str(item) for item in value)
        elif value is None:
            out[name] = ""
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = str(value)
    return out


def process_mean(accelerator: Any, record: dict[str, Any]) -> dict[str, Any]:
    """`record`'s numbers averaged over every process (a collective: all processes call it
    at the same step with the same keys). One process: the record as it is."""
    if accelerator.num_processes <= 1:
        return record
    import torch

    keys = sorted(k for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step")
    values = torch.tensor([float(record[k]) for k in keys], dtype=torch.float64, device=accelerator.device)
    mean = accelerator.reduce(values, reduction="mean").tolist()
    return {**record, **dict(zip(keys, mean))}


def scalars(record: Mapping[str, Any], learning_rates: Mapping[str, float]) -> dict[str, float]:
    """What a tracker plots from one `log.jsonl` record: `train/<key>` for every value but the
    step, and `lr/<optimizer>` for the learning rates."""
    values = {f"train/{k}": float(v) for k, v in record.items()
              if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
    values.update({f"lr/{name}": float(lr) for name, lr in learning_rates.items()})
    return values


class Tracking:
    """The trackers of one training run, started by `start` and closed by `finish`.

    `accelerator` was built with `log_with=names` and `project_dir=RUN/trackers`. Every call is
    a no-op without trackers and on every process but the main one.
    """

    def __init__(self, accelerator: Any, names: Sequence[str], run_dir: Path) -> None:
        self.accelerator = accelerator
        self.names = list(names)
        self.run_dir = Path(run_dir)
        self.started = False

    @property
    def active(self) -> bool:
        return self.started and self.accelerator.is_main_process

    def start(self, hparams: Mapping[str, Any], start_step: int = 0) -> None:
        """Open every tracker's run and record `hparams` as its hyper-parameters. A resumed
        run (`start_step` > 0) tells TensorBoard to hide what an earlier try logged past it."""
        if not self.names or self.started:
            return
        for line in sending_notice(self.names):
            log.warning(line)
        folder = self.run_dir / TRACKERS_DIR
        name = self.run_dir.resolve().name
        init_kwargs: dict[str, dict[str, Any]] = {
            "wandb": {"name": name, "dir": str(folder)},
            "mlflow": {"run_name": name},
        }
        if start_step:
            # Steps up to the checkpoint stand; what an earlier try logged after it is hidden.
            init_kwargs["tensorboard"] = {"purge_step": start_step + 1}
        if self.accelerator.is_main_process:
            folder.mkdir(parents=True, exist_ok=True)
        try:
            self.accelerator.init_trackers(PROJECT, config=dict(hparams), init_kwargs=init_kwargs)
        except SvaiError:
            raise
        except Exception as error:  # noqa: BLE001 - a tracker's own failure (login, server) in one line
            raise SvaiError(f"--log-with: starting the trackers failed ({type(error).__name__}: {error})") from None
        self.started = True

    def log(self, record: Mapping[str, Any], learning_rates: Mapping[str, float]) -> None:
        """Send one `log.jsonl` record (already a mean over processes) at its step."""
        if self.active:
            self.accelerator.log(scalars(record, learning_rates), step=int(record["step"]))

    def log_image(self, image: np.ndarray, step: int, tag: str = SAMPLES_TAG) -> None:
        """Send an (H, W, 3) uint8 image through each tracker's own image call."""
        if not self.active:
            return
        for tracker in self.accelerator.trackers:
            send_image(tracker, tag, image, step)

    def finish(self) -> None:
        """Close every tracker's run (flushes TensorBoard's event file). The process group
        stays: the loop's caller may still need it, so `end_training` is not called."""
        if not self.started:
            return
        self.started = False
        if not self.accelerator.is_main_process:
            return
        for tracker in list(self.accelerator.trackers):
            try:
                tracker.finish()
            except Exception as error:  # noqa: BLE001 - closing a tracker never loses the run
                log.warning("closing the %s tracker failed: %s", tracker.name, error)
        self.accelerator.trackers.clear()


def send_image(tracker: Any, tag: str, image: np.ndarray, step: int) -> None:
    """One image to one tracker, in the form its image call takes; a tracker without one is
    skipped (the grid is in RUN/samples either way)."""
    name = getattr(tracker, "name", "")
    if name == "tensorboard":
        tracker.writer.add_image(tag, image, global_step=step, dataformats="HWC")
        tracker.writer.flush()
    elif name == "mlflow":
        import mlflow

        mlflow.log_image(image, key=tag, step=step)
    elif name == "aim":
        tracker.log_images({tag: (image, f"step {step}")}, step=step)
    elif callable(getattr(tracker, "log_images", None)):
        tracker.log_images({tag: [image]}, step=step)
    else:
        log.info("the %s tracker takes no images: sample grids stay in RUN/samples", name)


__all__ = ["EXTRAS", "PROJECT", "TRACKERS_DIR", "Tracking", "check_trackers", "flat_hparams", "process_mean",
           "scalars", "send_image", "sending_notice", "tracker_names"]

"""A run folder: what it holds, how its configuration is resolved, and one writer at a time.

```
RUN/config.yaml        the resolved configuration (CONFIG_FILE)
RUN/environment.json   versions, device, precision, seed, command (svai.environment)
RUN/log.jsonl          one JSON record per logged step (LOG_FILE)
RUN/samples/           before | generated | after grids over training (SAMPLES_DIR)
RUN/checkpoints/       one safetensors folder per saved step (svai.checkpoint)
RUN/trackers/          the experiment trackers' own files (svai.tracking)
RUN/test-predictions/  the test split as the model translates it (PREDICTIONS_DIR)
RUN/evaluation.json    their metrics against the true after photos (EVALUATION_FILE)
RUN/.svai.lock         the writer's lock (svai.runlock)
```

This module imports neither torch nor the models at load time: the report reads its names.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from svai.environment import ENVIRONMENT_FILE
from svai.errors import SvaiError
from svai.io import OWN_FILES, OwnFiles, Privacy, check_output_folder, remove_stale_temporaries
from svai.runlock import LOCK_FILE, RunLock
from svai.tracking import TRACKERS_DIR

if TYPE_CHECKING:
    from svai.config import RunConfig

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
LOG_FILE = "log.jsonl"
SAMPLES_DIR = "samples"
PREDICTIONS_DIR = "test-predictions"
EVALUATION_FILE = "evaluation.json"

PRECISIONS = ("no", "fp16", "bf16")


def load_run_config(run_dir: Path) -> dict[str, Any]:
    """The saved `config.yaml` of a run folder, as a tree."""
    from svai.config import read_yaml_file

    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise SvaiError(f"{path} not found: {run_dir} is not a training run folder")
    tree = read_yaml_file(path)
    if not isinstance(tree, dict) or "model" not in tree:
        raise SvaiError(f"{path}: not a svai run configuration")
    return tree


def resolve(
    model: str | None = None,
    *,
    base: dict[str, Any] | None = None,
    config_file: Path | None = None,
    sets: list[str] | None = None,
    flags: dict[str, Any] | None = None,
) -> "RunConfig":
    """Resolve a run configuration from its layers, lowest first: the model's defaults, its
    preset, `base` (a saved run's config, for `--resume`), `config_file`, `sets` and `flags`
    (dotted keys to values, `None` meaning "not given")."""
    from svai.config import config_layers, merge_layers, named_model
    from svai.models.registry import resolve_model

    layers = config_layers(base, config_file, sets, flags)
    name = named_model(model, layers)
    family_cls, preset = resolve_model(name)
    if base is not None:
        saved = base.get("model", {}).get("family")
        if saved and saved != family_cls.name:
            raise SvaiError(f"--model {name} is a {family_cls.name} model but the run holds {saved}: drop --model or use a new --out")
    return merge_layers(name, family_cls, preset, layers)


def saved_config(run_dir: Path) -> "RunConfig":
    """The configuration a run folder was trained with."""
    return resolve(base=load_run_config(run_dir))


def run_privacy(config: "RunConfig") -> Privacy | None:
    """The privacy a new run folder gets: that of the dataset it learns from."""
    return Privacy.of(Path(config.data.root)) if config.data.root else None


@dataclass
class TrainOptions:
    """What `svai train` and `svai.api.train` are asked: a model (or preset) name, a prepared
    dataset, the run folder, and the settings that override the model's; every field left
    None is "not given". `sets` are `--set key=value` strings, `log_with` tracker names;
    `resume` continues `out` (model and data may then be None)."""

    model: str | None
    data: Path | None
    out: Path
    steps: int | None = None
    batch_size: int | None = None
    image_size: int | None = None
    mixed_precision: str | None = None
    seed: int | None = None
    config: Path | None = None
    sets: list[str] = field(default_factory=list)
    log_with: list[str] = field(default_factory=list)
    resume: bool = False

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.data = Path(self.data) if self.data is not None else None
        self.config = Path(self.config) if self.config is not None else None
        self.sets, self.log_with = list(self.sets), list(self.log_with)

    def resolve(self) -> "RunConfig":
        """The run's configuration (a resumed run's on top of its saved config.yaml), its
        dataset folder made absolute so a resumed run or its evaluation finds it from anywhere;
        refuses a run folder that overlaps what the run reads."""
        from svai.checkpoint import find_checkpoint

        if self.mixed_precision is not None and self.mixed_precision not in PRECISIONS:
            raise SvaiError(f"--mixed-precision {self.mixed_precision!r}: use one of {', '.join(PRECISIONS)}")
        if self.data is not None and not self.data.is_dir():
            raise SvaiError(f"--data {self.data}: folder not found (make one with `svai prepare`)")
        flags = {
            "data.root": str(self.data) if self.data is not None else None,
            "train.steps": self.steps, "train.batch_size": self.batch_size, "data.image_size": self.image_size,
            "train.mixed_precision": self.mixed_precision, "train.seed": self.seed,
            "train.log_with": self.log_with or None,
        }
        base = load_run_config(self.out) if self.resume else None
        if self.resume:
            find_checkpoint(self.out)  # fails early, naming the folder, when there is nothing to resume
        config = resolve(self.model, base=base, config_file=self.config, sets=self.sets, flags=flags)
        if config.data.root and Path(config.data.root).is_dir():
            config.data.root = str(Path(config.data.root).resolve())
        reads = {"--data": Path(config.data.root)} if config.data.root else {}
        if self.config is not None:
            reads["--config"] = self.config
        check_output_folder(reads, self.out, "--out")
        return config

    def call(self, function: str) -> str:
        """The call these options make, as a line for the run's environment record."""
        given = [(f.name, getattr(self, f.name)) for f in fields(self)]
        shown = [(name, value) for name, value in given if value is not None and value != [] and value is not False]
        return f"{function}(" + ", ".join(f"{name}={shlex.quote(str(value))}" for name, value in shown) + ")"


def only_evaluation_left(run_dir: Path, config: "RunConfig") -> bool:
    """A resumed run already at its last step, whose evaluation was cut short, only needs that."""
    from svai.checkpoint import find_checkpoint

    step = find_checkpoint(run_dir).step
    return step >= config.train.steps and config.train.evaluate and not (Path(run_dir) / EVALUATION_FILE).is_file()


@contextlib.contextmanager
def writing(run_dir: Path, privacy: Privacy | None) -> Iterator[RunLock | None]:
    """Hold the run folder's lock (the main process only: others get None); a folder it
    creates gets `privacy`, and is removed again when the work fails before writing anything."""
    if os.environ.get("RANK", "0") != "0":
        yield None
        return
    with RunLock(Path(run_dir), privacy=privacy) as lock:
        yield lock


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """Refuse to mix a new run into an old one, to write a run over a file, or to delete
    anything svai did not write there."""
    from svai.checkpoint import CHECKPOINTS, has_checkpoint

    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise SvaiError(f"--out {run_dir} is a file: give a folder for the run")
    if resume or not run_dir.exists():
        return
    entries = {p.name for p in run_dir.iterdir()} - {LOCK_FILE, OWN_FILES}
    if not entries:
        return
    # What a run writes before its first checkpoint; a folder holding only these may start over.
    restartable = {CONFIG_FILE, LOG_FILE, SAMPLES_DIR, CHECKPOINTS, ENVIRONMENT_FILE, TRACKERS_DIR}
    if has_checkpoint(run_dir) or not entries <= restartable:
        raise SvaiError(f"--out {run_dir} already holds a run or other files: add --resume to continue a run, "
                        "or choose a new folder")
    remove_stale_temporaries(run_dir / CHECKPOINTS)  # a first checkpoint cut short
    own = OwnFiles(run_dir)
    foreign = own.foreign(sorted(entries))
    if foreign:
        raise SvaiError(f"--out {run_dir} holds files svai did not write ({foreign[0]}"
                        f"{f' and {len(foreign) - 1} more' if len(foreign) > 1 else ''}): choose a new folder")
    # A run that stopped before its first checkpoint holds nothing worth keeping: start afresh.
    log.warning("%s: the earlier run stopped before its first checkpoint; starting it again", run_dir)
    for name in sorted(entries):
        own.remove_under(run_dir / name)
    own.save()


__all__ = ["CONFIG_FILE", "EVALUATION_FILE", "LOG_FILE", "PREDICTIONS_DIR", "SAMPLES_DIR", "TrainOptions",
           "check_run_dir", "load_run_config", "only_evaluation_left", "resolve", "run_privacy", "saved_config",
           "writing"]

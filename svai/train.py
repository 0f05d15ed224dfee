"""The one training loop, shared by every model family, on Hugging Face Accelerate.

The same code runs on CPU, one GPU and several processes (`accelerate launch` /
`torchrun`), with mixed precision from the config. Families describe networks, phases
and losses; this module owns devices, precision, backward, optimiser steps, logging,
samples and checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from svai.checkpoint import (
    TrainingState, find_checkpoint, load_networks, load_optimizers, read_state, restore_rng, rng_payload,
    save_checkpoint,
)
from svai.config import RunConfig
from svai.data.augment import augment_batch
from svai.data.dataset import PairedImages, StepBatches, collate, hash_seed
from svai.environment import ENVIRONMENT_FILE, environment_record, write_environment
from svai.errors import SvaiError
from svai.image_ops import to_uint8
from svai.io import PLANNED, OwnFiles, check_output_folder, open_append, write_atomic, write_png
from svai.models.base import Networks, Phase, PhaseGradients, Request, StepContext, check_phases, eval_mode
from svai.models.registry import build_on_meta, make_family
from svai.run import CONFIG_FILE, LOG_FILE, SAMPLES_DIR, check_run_dir, run_privacy, writing
from svai.signals import stop_signals
from svai.tracking import TRACKERS_DIR, Tracking, check_trackers, flat_hparams, process_mean

log = logging.getLogger(__name__)

EventCallback = Callable[[dict[str, Any]], None]

# The dtype mixed precision computes in: pretrained frozen networks are kept in it.
COMPUTE_DTYPES = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class Diverged(SvaiError):
    """A loss that is no longer a finite number: the settings made training diverge."""


@dataclass
class TrainResult:
    run_dir: Path
    start_step: int
    step: int
    total_steps: int
    interrupted: bool
    checkpoint: Path | None


def _accelerator(train: Any, run_dir: Path) -> Any:
    """A fresh Accelerator for the run's precision and trackers."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedDataParallelKwargs

    # Accelerate keeps one process-wide state; a second run in the same process (a notebook,
    # the test suite) may ask for another precision, so start that state afresh.
    AcceleratorState._reset_state()
    # Without an accelerator, say so explicitly: that is what lets `torchrun` /
    # `accelerate launch` run several CPU processes (gloo) instead of independent copies.
    on_cpu = not (torch.cuda.is_available() or torch.backends.mps.is_available())
    return Accelerator(
        cpu=on_cpu,
        mixed_precision=train.mixed_precision,
        # GAN phases freeze networks and call discriminators several times per step, so
        # DDP must tolerate parameters without gradients in a backward pass.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        log_with=train.log_with or None,
        project_dir=str(run_dir / TRACKERS_DIR) if train.log_with else None,
    )


class Trainer:
    """Holds the prepared objects of one run; `run()` trains to `config.train.steps`.

    Set-up is three parts: `_build` (data, family, networks, optimisers), `_prepare` (hand
    the trained networks and optimisers to Accelerate) and `_resume` (the latest checkpoint).
    The trainer keeps its own copy of `config`, completed with what the run records (the
    dataset's procedure vocabulary, the trackers); that copy is what `config.yaml` holds.
    """

    def __init__(self, config: RunConfig, run_dir: Path, resume: bool = False) -> None:
        self.run_dir = Path(run_dir)
        # What the run writes is recorded (so a restart deletes only that), and what it draws
        # from the photos (samples) is no more readable than the dataset.
        self.own = OwnFiles(self.run_dir)
        self.privacy = run_privacy(config)
        self.resume = resume
        self.on_event: EventCallback = lambda event: None
        self.should_stop: Callable[[int], bool] = lambda step: False
        # What the trainer lets go of when it closes: the run folder's lock, when it holds it.
        self.held = ExitStack()
        if config.train.mixed_precision == "fp16" and not torch.cuda.is_available():
            raise SvaiError("--mixed-precision fp16 needs a CUDA GPU: use bf16 or no on this machine")
        if not config.data.root:
            raise SvaiError("--data is required: give a folder made by `svai prepare`")
        # A tracker that is not installed fails here, before anything is built.
        train = dataclasses.replace(config.train, log_with=check_trackers(config.train.log_with))
        self.config = dataclasses.replace(config, train=train)
        self.accelerator = _accelerator(train, self.run_dir)
        self.tracking = Tracking(self.accelerator, train.log_with, self.run_dir)
        self._build()
        self._prepare()
        self.start_step = self._resume() if resume else 0
        if self.start_step >= train.steps:
            raise SvaiError(
                f"the run is already at step {self.start_step}; pass a larger --steps to continue it")

    def _build(self) -> None:
        """The data, the family, its networks (pretrained parts loaded, closed forms fitted on
        a new run), its phases and their optimisers."""
        from accelerate.utils import set_seed

        config = self.config
        data, train = config.data, config.train
        self.train_set = PairedImages(Path(data.root), "train", data.image_size, cache=data.cache,
                                      vocabulary=tuple(data.procedures) or None, on_bad_file=data.on_bad_file)
        # The run records its procedure columns, so generation later reads the same ones.
        self.config = config = dataclasses.replace(
            config, data=dataclasses.replace(data, procedures=list(self.train_set.vocabulary)))
        self.sample_set = self._sample_set()
        per_step = train.batch_size * train.grad_accumulation
        if per_step > len(self.train_set):
            # Allowed (the data order wraps around), but every step then repeats pairs.
            log.warning("train.batch_size × grad_accumulation = %d is larger than the %d training pairs in %s: "
                        "each step repeats pairs", per_step, len(self.train_set), data.root)
        set_seed(train.seed)
        self.family = make_family(config)
        build_on_meta(self.family)  # refuses impossible or oversized widths before allocating
        self.nets: Networks = self.family.build()
        # Pretrained frozen weights load now, so a missing file fails before the first step.
        self.family.load_pretrained(self.nets, COMPUTE_DTYPES[train.mixed_precision])
        # A closed-form fit (a landmark model) happens once, before the first step.
        self.fit_logs = {} if self.resume else self.family.fit(self.nets, self.train_set)
        self.phases = self.family.phases()
        check_phases(self.phases)
        self.gradients = PhaseGradients(self.nets, self.phases, self.family.prepares)
        self.trainable = list(self.gradients.parameters)
        # Phases that share an optimiser (`Phase.shares`) point at one object; the dict of
        # distinct optimisers is what is prepared, stepped, saved and restored.
        self.optimizers: dict[str, torch.optim.Optimizer] = {
            phase.name: self._optimizer(phase) for phase in self.phases if phase.shares is None}
        self.phase_optimizer = {phase.name: phase.shares or phase.name for phase in self.phases}
        self.base_lrs = {name: [g["lr"] for g in opt.param_groups] for name, opt in self.optimizers.items()}

    def _prepare(self) -> None:
        """Wrap the trained networks and the optimisers for the devices and processes; the
        other networks only move to the device."""
        trainable = self.trainable
        objects = [*[self.nets[n] for n in trainable], *self.optimizers.values()]
        # A family that only fits (no phase) has nothing for Accelerate to wrap.
        prepared = self.accelerator.prepare(*objects) if objects else ()
        prepared = prepared if isinstance(prepared, tuple) else (prepared,)
        self.wrapped: Networks = dict(self.nets)
        for name, module in zip(trainable, prepared[: len(trainable)]):
            self.wrapped[name] = module
        for name, optimizer in zip(list(self.optimizers), prepared[len(trainable):]):
            self.optimizers[name] = optimizer
        for name, module in self.nets.items():
            if name not in trainable:
                module.to(self.accelerator.device)

    # -- set-up -------------------------------------------------------------------------
    def _sample_set(self) -> PairedImages:
        try:
            return PairedImages(Path(self.config.data.root), "test", self.config.data.image_size, cache=False,
                                vocabulary=self.train_set.vocabulary)
        except SvaiError:
            return self.train_set

    def _optimizer(self, phase: Phase) -> torch.optim.Optimizer:
        """The phase's optimiser over the trainable parameters of its networks; frozen
        parameters (requires_grad off at build time) are never handed to it."""
        overrides = dict(phase.lr_overrides)
        groups = []
        for name in phase.networks:
            params = self.gradients.parameters[name]
            if params:
                groups.append({"params": params, "lr": overrides.get(name, phase.lr)})
        if not groups:
            raise ValueError(f"phase {phase.name!r} has no parameters to train")
        kind = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[phase.optimizer]
        return kind(groups, lr=phase.lr, betas=phase.betas, weight_decay=phase.weight_decay)

    def _resume(self) -> int:
        """Restore the latest checkpoint: networks, optimisers, random states, grad scaler;
        returns its step."""
        ref = find_checkpoint(self.run_dir)
        state = read_state(ref.path)
        load_networks(ref.path, self.nets, frozen=self.family.is_frozen)
        load_optimizers(ref.path, {n: getattr(o, "optimizer", o) for n, o in self.optimizers.items()}, state["optimizers"])
        restore_rng(ref.path, self.accelerator.process_index, state)
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None and state.get("grad_scaler"):
            scaler.load_state_dict(state["grad_scaler"])
        log.info("resumed from %s at step %d", ref.path, ref.step)
        return ref.step

    # -- loop ---------------------------------------------------------------------------
    def _loader(self) -> DataLoader:
        train = self.config.train
        # One loader batch feeds a whole step: `grad_accumulation` micro-batches of `batch_size`.
        sampler = StepBatches(
            len(self.train_set), train.batch_size * train.grad_accumulation, self.start_step, train.steps, train.seed,
            unpaired=not self.family.paired,
            rank=self.accelerator.process_index, world_size=self.accelerator.num_processes,
        )
        return DataLoader(
            self.train_set, batch_sampler=sampler, collate_fn=collate,
            num_workers=self.config.data.num_workers, persistent_workers=False,
            # Its own generator: creating the loader's iterator must not draw from the global
            # RNG, or a resumed run would see a shifted random stream (dropout, image pools).
            generator=torch.Generator().manual_seed(hash_seed(train.seed, self.start_step, 11)),
        )

    def _set_lr(self, step: int) -> float:
        factor = self.family.lr_factor(step, self.config.train.steps)
        for name, optimizer in self.optimizers.items():
            for group, base in zip(optimizer.param_groups, self.base_lrs[name]):
                group["lr"] = base * factor
        return factor

    def _augment(self, batch: dict[str, Any], step: int) -> dict[str, Any]:
        options = self.config.data.augment
        if not options.enabled:
            return batch
        generator = torch.Generator(device="cpu").manual_seed(
            hash_seed(self.config.train.seed, step, self.accelerator.process_index, 7))
        return augment_batch(batch, options, generator)

    def run(self, on_event: EventCallback | None = None, should_stop: Callable[[int], bool] | None = None) -> TrainResult:
        """Train to `config.train.steps`, telling `on_event` about the start, steps, logged
        records, samples, checkpoints and the end; `should_stop(step)` stops early, as
        Ctrl-C does (a checkpoint first)."""
        if on_event is not None:
            self.on_event = on_event
        if should_stop is not None:
            self.should_stop = should_stop
        config, accelerator = self.config, self.accelerator
        total = config.train.steps
        if accelerator.is_main_process:
            self._truncate_log(self.start_step)
        self.tracking.start(flat_hparams(config.to_dict()), self.start_step)
        images_per_step = config.train.batch_size * config.train.grad_accumulation * accelerator.num_processes
        step = self.start_step
        interrupted = False
        checkpoint: Path | None = None
        window_start, window_images = time.perf_counter(), 0
        totals: dict[str, float] = {}
        counts: dict[str, int] = {}
        if self.start_step == 0 and self.fit_logs:
            self._log({"step": 0, **self.fit_logs})
        self.on_event({"event": "start", "step": step, "total": total})
        saved = self.start_step
        try:
            with stop_signals() as signals:
                for raw in self._loader():
                    batch = {k: v.to(accelerator.device, non_blocking=True) if torch.is_tensor(v) else v
                             for k, v in raw.items()}
                    batch = self._augment(batch, step)
                    factor = self._set_lr(step)
                    logs = self._step(batch, step)
                    step += 1
                    window_images += images_per_step
                    for key, value in logs.items():
                        totals[key] = totals.get(key, 0.0) + value
                        counts[key] = counts.get(key, 0) + 1
                    if step % config.train.log_every == 0 or step == total:
                        elapsed = time.perf_counter() - window_start
                        record = {"step": step, "lr_factor": factor,
                                  **{k: totals[k] / counts[k] for k in totals},
                                  "images_per_s": window_images / max(elapsed, 1e-9)}
                        record = process_mean(accelerator, record)
                        self._log(record)
                        self.tracking.log(record, self._learning_rates())
                        self.on_event({"event": "log", "step": step, "total": total, "logs": record})
                        window_start, window_images, totals, counts = time.perf_counter(), 0, {}, {}
                    else:
                        self.on_event({"event": "step", "step": step, "total": total, "logs": logs})
                    if config.train.sample_every and step % config.train.sample_every == 0:
                        self._sample(step)
                    stopping = signals["signal"] is not None or self.should_stop(step)
                    if stopping or step == total or (config.train.checkpoint_every and step % config.train.checkpoint_every == 0):
                        checkpoint = self._save(step)
                        saved = step
                    if stopping and step < total:
                        interrupted = True
                        break
        except SvaiError as error:
            # A dataset file that stops training (data.on_bad_file=error) loses no finished step;
            # diverged weights are not worth a checkpoint.
            if step > saved and step < total and not isinstance(error, Diverged):
                self._save(step)
            self.close()
            raise
        if config.train.sample_every and step == total and step % config.train.sample_every:
            self._sample(step)
        accelerator.wait_for_everyone()
        self.on_event({"event": "end", "step": step, "total": total, "interrupted": interrupted})
        self.close()
        return TrainResult(self.run_dir, self.start_step, step, total, interrupted, checkpoint)

    def close(self) -> None:
        """Close the trackers, and let go of the run folder's lock when `prepare_training`
        took it for this trainer."""
        self.tracking.finish()
        self.held.close()

    def write_records(self, command: str | None) -> None:
        """Write the run's config.yaml and environment record (the main process)."""
        run_dir, config, accelerator = self.run_dir, self.config, self.accelerator
        run_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(run_dir / CONFIG_FILE, config.to_yaml().encode())
        # The log and the samples folder are recorded before the loop makes them, so a run
        # killed in its first steps is still all svai's to start again.
        self.own.plan(run_dir / LOG_FILE, run_dir / SAMPLES_DIR, run_dir / TRACKERS_DIR)
        self._record(run_dir / CONFIG_FILE)
        write_environment(run_dir, environment_record(
            device=accelerator.device, processes=accelerator.num_processes,
            precision=config.train.mixed_precision, seed=config.train.seed, start_step=self.start_step,
            command=command))
        self._record(run_dir / ENVIRONMENT_FILE)

    def _step(self, batch: dict[str, Any], step: int) -> dict[str, float]:
        """One training step: each due phase, with gradients on for its networks only,
        accumulates its gradient over the step's micro-batches, is clipped when asked, and
        takes one optimiser step."""
        parts = split_batch(batch, self.config.train.grad_accumulation)
        scaler = getattr(self.accelerator, "scaler", None)
        due = [phase for phase in self.phases if step % phase.every == 0]
        names = [phase.name for phase in due]
        # One context per micro-batch, shared by that micro-batch's phases (a generated
        # image made in one phase is reused by the next).
        contexts = [StepContext(scaler=scaler, due=names) for _ in parts]
        logs: dict[str, float] = {}
        for phase in due:
            self.gradients.enter(phase, names)
            optimizer = self.optimizers[self.phase_optimizer[phase.name]]
            optimizer.zero_grad(set_to_none=True)
            phase_totals: dict[str, float] = {}
            for index, (part, ctx) in enumerate(zip(parts, contexts)):
                with self._sync_gradients(phase, last=index == len(parts) - 1):
                    with self.accelerator.autocast():
                        loss, phase_logs = self.family.loss(phase.name, self.wrapped, part, ctx, step)
                    if not torch.isfinite(loss.detach()).all():
                        raise Diverged(f"the {phase.name} loss is {loss.item()} at step {step + 1}: training diverged; "
                                       "lower the learning rate or set train.grad_clip, then resume or start again")
                    self.accelerator.backward(loss / len(parts))
                for key, value in phase_logs.items():
                    phase_totals[key] = phase_totals.get(key, 0.0) + float(value) / len(parts)
            self._drop_foreign_gradients(phase)
            self._clip(phase, optimizer)
            optimizer.step()
            logs.update(phase_totals)
        # EMA copies and other state follow the networks themselves, never their DDP wrappers.
        self.family.after_step(self.nets, step)
        return logs

    def _drop_foreign_gradients(self, phase: Phase) -> None:
        """A phase sharing an optimiser updates only its own networks: gradients its loss left
        in the owner's other networks are dropped, so the step skips them."""
        if phase.shares is None:
            return
        owner = next(p for p in self.phases if p.name == phase.shares)
        for name in set(owner.networks) - set(phase.networks):
            for parameter in self.nets[name].parameters():
                parameter.grad = None

    @contextmanager
    def _sync_gradients(self, phase: Phase, last: bool) -> Iterator[None]:
        """Across processes, all-reduce gradients on the last micro-batch of a step only."""
        with ExitStack() as stack:
            if not last and self.accelerator.num_processes > 1:
                for name in phase.networks:
                    stack.enter_context(self.accelerator.no_sync(self.wrapped[name]))
            yield

    def _clip(self, phase: Phase, optimizer: torch.optim.Optimizer) -> None:
        """Clip the phase's gradient norm to `train.grad_clip` (0 = off), in true units under fp16."""
        limit = self.config.train.grad_clip
        if not limit:
            return
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None:
            scaler.unscale_(getattr(optimizer, "optimizer", optimizer))
        params = [p for name in phase.networks for p in self.nets[name].parameters() if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, limit)

    # -- outputs ------------------------------------------------------------------------
    def _log(self, record: dict[str, Any]) -> None:
        if not self.accelerator.is_main_process:
            return
        record = {k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v) for k, v in record.items()}
        path = self.run_dir / LOG_FILE
        if self.own.entries.get(LOG_FILE) != PLANNED:
            # Appended to all along: recorded as a path svai writes, not by size and time.
            self.own.plan(path)
            self.own.save()
        with open_append(path) as handle:
            handle.write((json.dumps(record) + "\n").encode("utf-8"))

    def _record(self, *paths: Path) -> None:
        """Add files the run has just written to the run folder's record of its own files."""
        self.own.note_with_folders(*paths)
        self.own.save()

    def _learning_rates(self) -> dict[str, float]:
        """Each optimiser's current learning rate; one per parameter group when they differ."""
        rates: dict[str, float] = {}
        for name, optimizer in self.optimizers.items():
            values = [group["lr"] for group in optimizer.param_groups]
            if len(set(values)) == 1:
                rates[name] = values[0]
            else:
                rates.update({f"{name}.{index}": value for index, value in enumerate(values)})
        return rates

    def _truncate_log(self, step: int) -> None:
        """Drop log lines past the resumed step, so the log tells one consistent history.

        A line that is not a JSON record (the last one cut short by a crash or a full disk)
        is dropped with it.
        """
        path = self.run_dir / LOG_FILE
        if not path.is_file():
            return
        kept = []
        for line in path.read_bytes().decode("utf-8", "replace").splitlines():
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):
                continue
            if isinstance(record, dict) and isinstance(record.get("step", 0), int) and record.get("step", 0) <= step:
                kept.append(line)
        write_atomic(path, ("\n".join(kept) + "\n" if kept else "").encode())

    @torch.no_grad()
    def _sample(self, step: int) -> None:
        """Save a grid of before | generated | after rows for a fixed set of pairs."""
        if not self.accelerator.is_main_process:
            return
        count = min(self.config.train.sample_count, len(self.sample_set))
        if count == 0:
            return
        items = collate([self.sample_set[(i, -1)] for i in range(count)])
        before = items["before"].to(self.accelerator.device)
        landmarks = items.get("landmarks")
        request = Request(procedures=items["procedures"].to(self.accelerator.device),
                          landmarks=landmarks).only(self.family.uses)
        with eval_mode(self.nets), self.accelerator.autocast():
            fake = self.family.translate(self.nets, before, request)
        rows = [np.concatenate(list(images), axis=1)
                for images in zip(to_uint8(items["before"]), to_uint8(fake), to_uint8(items["after"]))]
        path = self.run_dir / SAMPLES_DIR / f"step-{step:08d}.png"
        grid = np.concatenate(rows, axis=0)
        self.own.plan(path)
        self.own.save()
        write_png(path, grid, self.privacy)
        self._record(path)
        self.tracking.log_image(grid, step)
        self.on_event({"event": "sample", "step": step, "path": str(path)})

    def _save(self, step: int) -> Path | None:
        accelerator = self.accelerator
        states = [rng_payload()]
        if accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            states = gather_object(states)
        path = None
        if accelerator.is_main_process:
            scaler = getattr(accelerator, "scaler", None)
            extra = {
                "total_steps": self.config.train.steps,
                "lr_factor": self.family.lr_factor(step, self.config.train.steps),
                "grad_scaler": scaler.state_dict() if scaler is not None else None,
                "family": self.config.family,
            }
            optimizers = {n: getattr(o, "optimizer", o) for n, o in self.optimizers.items()}
            state = TrainingState(step, self.nets, optimizers, extra, states, frozen=self.family.is_frozen)
            path = save_checkpoint(self.run_dir, state, keep=self.config.train.keep_checkpoints)
            self._record(path.parent)
            self.on_event({"event": "checkpoint", "step": step, "path": str(path)})
        accelerator.wait_for_everyone()
        return path


def split_batch(batch: dict[str, Any], parts: int) -> list[dict[str, Any]]:
    """Split a batch into `parts` micro-batches along the first dimension (the ids list too)."""
    if parts == 1:
        return [batch]
    size = len(batch["before"])
    bounds = [round(i * size / parts) for i in range(parts + 1)]
    return [{k: v[lo:hi] for k, v in batch.items()} for lo, hi in zip(bounds, bounds[1:])]


def open_run(config: RunConfig, run_dir: Path, resume: bool = False, command: str | None = None) -> Trainer:
    """Check the run folder, build the models and write the run's config and environment record
    (`svai.environment`; `command` is what started the run, by default this process's command
    line); `run()` then trains. The caller holds the folder (`svai.run.writing`)."""
    run_dir = Path(run_dir)
    check_run_dir(run_dir, resume)
    trainer = Trainer(config, run_dir, resume=resume)
    if trainer.accelerator.is_main_process:
        trainer.write_records(command)
    trainer.accelerator.wait_for_everyone()
    return trainer


def prepare_training(config: RunConfig, run_dir: Path, resume: bool = False, command: str | None = None) -> Trainer:
    """`open_run`, the run folder locked by the main process (`svai.run.writing`) so that no
    second run or resume writes into it, until the trainer's `run()` or `close()`."""
    inputs = {"--data": Path(config.data.root)} if config.data.root else {}
    check_output_folder(inputs, Path(run_dir), "--out")
    with ExitStack() as held:
        held.enter_context(writing(run_dir, run_privacy(config)))
        trainer = open_run(config, run_dir, resume, command)
        trainer.held.push(held.pop_all())
    return trainer


def train(
    config: RunConfig,
    run_dir: Path,
    resume: bool = False,
    on_event: EventCallback | None = None,
    should_stop: Callable[[int], bool] | None = None,
    command: str | None = None,
) -> TrainResult:
    """Train `config` into `run_dir` (new, or continued from its latest checkpoint)."""
    trainer = prepare_training(config, run_dir, resume, command)
    try:
        return trainer.run(on_event, should_stop)
    finally:
        trainer.close()


__all__ = ["train", "open_run", "prepare_training", "Trainer", "TrainResult", "split_batch"]

"""The models a consultation app serves, the settings a page sends, and one simulation.

A served model is a trained run loaded once at start-up. What the page offers for it
follows the family's `uses`: procedure tick boxes over its vocabulary when it reads
procedures, an intensity slider when it reads intensity, a seed when it draws random styles.
Simulations run one at a time behind a lock: the model's own threads already use every core,
and a family's networks are shared state (`translate_batch` switches them to eval mode).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from svai.composite import CompositeOptions
from svai.data.dataset import procedure_vector
from svai.errors import SvaiError
from svai.generate import LoadedModel, square_input, translate_batch
from svai.models.base import Request
from svai.serve.photo import Photo, face_square, paste, square_region

log = logging.getLogger(__name__)


class ModelFailed(SvaiError):
    """The model raised on a photo: a bug or a broken run, reported on the page, not fatal."""


@dataclass(frozen=True)
class Controls:
    """What the page offers for one model.

    - procedures: the vocabulary to tick from; empty when the model has no procedure control.
    - intensity: whether the intensity slider applies.
    - seed: whether the model draws a random style (a seed makes it repeatable).
    - composite: the composite toggle's initial state (the run's `generate.composite`).
    """

    procedures: tuple[str, ...]
    intensity: bool
    seed: bool
    composite: bool
    reference: bool = False


def controls_of(model: LoadedModel) -> Controls:
    uses = model.family.uses
    return Controls(
        procedures=tuple(model.family.procedures) if "procedures" in uses else (),
        intensity="intensity" in uses,
        seed="generator" in uses,
        composite=model.composite_default,
        reference="reference" in uses,
    )


@dataclass
class ServedModel:
    """A loaded run and how the page presents it; `id` is its key in requests."""

    id: str
    run: Path
    model: LoadedModel
    controls: Controls

    @property
    def label(self) -> str:
        return f"{self.run.name} ({self.model.config.name}, step {self.model.step})"

    def describe(self) -> dict[str, Any]:
        """What the page needs to build its controls (JSON-ready)."""
        return {
            "id": self.id,
            "label": self.label,
            "family": self.model.config.family,
            "step": self.model.step,
            "image_size": self.model.config.data.image_size,
            "procedures": list(self.controls.procedures),
            "intensity": self.controls.intensity,
            "seed": self.controls.seed,
            "composite": self.controls.composite,
            "reference": self.controls.reference,
        }


def serve_models(runs: list[Path], loaded: list[LoadedModel]) -> list[ServedModel]:
    """Pair each run folder with its loaded model; ids are "1", "2" … in the order given."""
    return [ServedModel(str(index), Path(run), model, controls_of(model))
            for index, (run, model) in enumerate(zip(runs, loaded), start=1)]


@dataclass(frozen=True)
class Settings:
    """What one simulation asks for: ticked procedures, intensity in [0, 1], composite, seed."""

    procedures: tuple[str, ...] = ()
    intensity: float = 1.0
    composite: bool = False
    seed: int = 0
    # One strength in [0, 1] per procedure, same order (1 each when not given).
    strengths: tuple[float, ...] = ()
    # The uploaded reference photo's token, for reference-guided models.
    reference: str | None = None

    def strength_of(self) -> dict[str, float]:
        return dict(zip(self.procedures, self.strengths or (1.0,) * len(self.procedures)))

    def used_by(self, controls: Controls) -> dict[str, Any]:
        """The settings the model actually read (the audit records these)."""
        used: dict[str, Any] = {}
        if controls.procedures:
            used["procedures"] = self.strength_of()
        if controls.intensity:
            used["intensity"] = self.intensity
        if controls.seed:
            used["seed"] = self.seed
        used["composite"] = self.composite
        return used


def parse_settings(payload: dict[str, Any], controls: Controls) -> Settings:
    """Check the settings a page sent for a model with these controls; SvaiError naming the
    field and the fix. Missing fields take their defaults."""
    procedures = payload.get("procedures") or []
    if isinstance(procedures, list) and all(isinstance(p, str) for p in procedures):
        procedures = {p: 1.0 for p in procedures}
    if not isinstance(procedures, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) for k, v in procedures.items()):
        raise SvaiError(f"procedures: expected names, or names with strengths {{\"nose\": 0.5}}; got {procedures!r}")
    bad = {k: v for k, v in procedures.items() if not 0.0 <= v <= 1.0}
    if bad:
        name = next(iter(bad))
        raise SvaiError(f"procedures: the strength of {name} must be between 0 and 1; got {bad[name]!r}")
    if procedures and not controls.procedures:
        raise SvaiError("procedures: this model has no procedure control; untick them or choose another model")
    unknown = [p for p in procedures if p not in controls.procedures]
    if unknown:
        raise SvaiError(f"procedures: unknown {unknown[0]!r}; choose from {', '.join(controls.procedures)}")
    intensity = payload.get("intensity", 1.0)
    if isinstance(intensity, bool) or not isinstance(intensity, (int, float)) or not 0.0 <= intensity <= 1.0:
        raise SvaiError(f"intensity must be a number between 0 and 1; got {intensity!r}")
    composite = payload.get("composite", controls.composite)
    if not isinstance(composite, bool):
        raise SvaiError(f"composite must be true or false; got {composite!r}")
    seed = payload.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise SvaiError(f"seed must be a whole number from 0; got {seed!r}")
    reference = payload.get("reference")
    if reference is not None and not isinstance(reference, str):
        raise SvaiError(f"reference must be an uploaded photo's id; got {reference!r}")
    if reference is not None and not controls.reference:
        raise SvaiError("reference: this model takes no reference photo; remove it or choose another model")
    ordered = tuple(p for p in controls.procedures if p in procedures)
    return Settings(ordered, float(intensity), composite, seed, tuple(float(procedures[p]) for p in ordered), reference)


def model_request(served: ServedModel, settings: Settings) -> Request:
    """The `Request` for a model: only the fields its family reads."""
    controls = served.controls
    request = Request()
    if controls.procedures:
        request.procedures = procedure_vector(settings.strength_of(), controls.procedures)[None]
    if controls.intensity:
        request.intensity = settings.intensity
    if controls.seed:
        request.generator = torch.Generator().manual_seed(settings.seed)
    return request


@dataclass
class Simulation:
    """One simulated photo. patch: (side, side, 3) uint8, the face square of the result at
    full resolution (`svai.serve.photo.paste`); timings in seconds by stage."""

    id: str
    photo: Photo
    served: ServedModel
    settings: Settings
    patch: np.ndarray
    time: str
    timings: dict[str, float] = field(default_factory=dict)

    @cached_property
    def largest_change(self) -> int:
        """The largest change of any pixel channel, in 8-bit grey levels."""
        x0, y0, x1, y1 = self.photo.box
        original = self.photo.pixels[y0:y1, x0:x1]
        return int(np.abs(self.patch.astype(np.int16) - original).max()) if self.patch.size else 0

    def no_change_reason(self) -> str | None:
        """Why the simulation looks like the photo, when it changed no pixel by a grey level or
        more; None when it changed something."""
        if self.largest_change >= 1:
            return None
        controls, settings = self.served.controls, self.settings
        if controls.procedures and not any(s > 0 for s in settings.strength_of().values()):
            return "no procedure is ticked (or every strength is 0): tick one"
        if controls.intensity and settings.intensity == 0:
            return "the intensity is 0: raise it"
        if settings.composite:
            return ("the model's change was too small for the composite, which keeps the photo wherever the change "
                    "is under its threshold: untick Composite to see it, or choose a stronger model or setting")
        return "the model changed nothing at these settings: raise the intensity, or choose another model"


def utc_now() -> str:
    """The current UTC time as ISO 8601 with milliseconds and a Z: 2025-01-31T09:15:02.345Z."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


class Simulator:
    """Runs simulations for the served models, one at a time."""

    def __init__(self, models: list[ServedModel], composite: CompositeOptions | None = None) -> None:
        if not models:
            raise ValueError("a simulator needs at least one model")
        self.models = {served.id: served for served in models}
        self.composite = composite or CompositeOptions()
        self._lock = threading.Lock()

    def model(self, model_id: str) -> ServedModel:
        served = self.models.get(str(model_id))
        if served is None:
            raise SvaiError(f"model {model_id!r}: not served; choose one of {', '.join(self.models)}")
        return served

    def simulate(self, photo: Photo, model_id: str, settings: Settings, reference: Photo | None = None) -> Simulation:
        """Simulate `settings` on `photo`'s face square with a served model, as `svai generate`
        simulates a face square (`reference`: the reference photo of a reference-guided model).
        A model that raises is a `ModelFailed` naming the error; the model stays usable."""
        served = self.model(model_id)
        timings: dict[str, float] = {}
        started = time.perf_counter()
        square = face_square(photo)
        request = model_request(served, settings)
        if reference is not None:
            request.reference = square_input(face_square(reference), served.model.config.data.image_size)
        # The framed face's landmarks (the one the surgeon picked) in the square's pixels: a
        # family that reads them does not look for the face again.
        known = None if photo.landmarks is None else [photo.landmarks - np.array(photo.box[:2], dtype=np.float64)]
        timings["crop"] = time.perf_counter() - started
        with self._lock:
            started = time.perf_counter()
            try:
                simulated = translate_batch(served.model, [square], request, known)[0]
            except SvaiError:
                raise
            except Exception as error:  # noqa: BLE001 - any model failure is reported, not fatal
                log.exception("model %s failed", served.label)
                raise ModelFailed(f"the model {served.label} failed on this photo ({type(error).__name__}: "
                                  f"{error}); try again, or choose another model") from None
            timings["model"] = time.perf_counter() - started
        started = time.perf_counter()
        region = None
        if settings.composite:
            ticked = tuple(name for name, strength in settings.strength_of().items() if strength > 0)
            region = square_region(photo, ticked)
        patch = paste(photo, simulated, self.composite if settings.composite else None, region)
        timings["paste"] = time.perf_counter() - started
        return Simulation(uuid.uuid4().hex, photo, served, settings, patch, utc_now(), timings)


__all__ = ["Controls", "ModelFailed", "ServedModel", "Settings", "Simulation", "Simulator", "controls_of",
           "model_request", "parse_settings", "serve_models", "utc_now"]

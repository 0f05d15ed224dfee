"""The plug-in interface every model family implements.

A family describes *what* to train; the shared loop in `svai.train` decides *how*
(devices, precision, backward, optimiser steps, checkpoints). Families never call
`backward`, `.to(device)` or save anything.

Batches handed to a family are dicts of tensors already on the right device:

- ``before``: (B, 3, H, W) in [-1, 1]
- ``after``: (B, 3, H, W) in [-1, 1], the same subject after surgery (paired)
- ``after_unpaired``: (B, 3, H, W) in [-1, 1], an independently drawn "after" image,
  for families that learn from unpaired domains (``paired = False``)
- ``mask``: (B, 1, H, W) in [0, 1], where the procedures changed the face (zeros if unknown)
- ``procedures``: (B, P) strengths in [0, 1] over the run's procedure vocabulary
  (`ModelFamily.procedures`; 0 = not operated)

At inference every family answers a `Request`: the before images plus whatever else the
user asked for (procedure strengths, intensity, reference photos, a random generator,
sampler settings). Generate, the training sampler and the evaluation fill it alike; a family
declares the fields it reads in `uses`, and a user asking for any other field gets a
one-line error naming the option.
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, Iterator, Literal

import torch
from torch import nn

from svai.data.layout import PROCEDURES
from svai.errors import SvaiError
from svai.models.heads import OutputHead, change_at_size

Batch = dict[str, torch.Tensor]
Networks = dict[str, nn.Module]
LossResult = tuple[torch.Tensor, dict[str, float]]


@dataclass(frozen=True)
class Phase:
    """One optimiser step over some networks, and the loss that drives it.

    Each training step runs the family's phases in order. A phase whose `every` is k runs
    on steps where ``step % k == 0`` (StarGAN updates G once per 5 critic steps); the loop
    tells the loss which phases are due (`StepContext.due`). A phase that `shares` an earlier
    phase's optimiser steps that optimiser (its networks must be among that phase's) instead
    of owning one; its own lr, betas and optimizer are unused.

    While a phase's loss runs, only its `networks` compute gradients (`PhaseGradients`): the
    loop freezes every other trained network, so a generator's loss leaves nothing in the
    discriminator (see `ModelFamily.prepares` for the one exception).
    """

    name: str
    networks: tuple[str, ...]
    lr: float
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 0.0
    every: int = 1
    # Per-network learning rates that differ from `lr` (StarGAN v2's mapping network).
    lr_overrides: tuple[tuple[str, float], ...] = ()
    optimizer: Literal["adam", "adamw"] = "adam"
    shares: str | None = None


def check_phases(phases: list[Phase]) -> None:
    """Phase names are unique, and a shared optimiser belongs to an earlier phase that owns
    it and trains every network of the sharing phase."""
    seen: dict[str, Phase] = {}
    for phase in phases:
        if phase.name in seen:
            raise ValueError(f"phase {phase.name!r} is declared twice")
        if phase.every < 1:
            raise ValueError(f"phase {phase.name!r}: every must be at least 1; got {phase.every}")
        if phase.shares is not None:
            owner = seen.get(phase.shares)
            if owner is None or owner.shares is not None:
                raise ValueError(f"phase {phase.name!r} shares {phase.shares!r}, which is not an earlier phase owning an optimiser")
            missing = set(phase.networks) - set(owner.networks)
            if missing:
                raise ValueError(f"phase {phase.name!r} trains {sorted(missing)} outside the optimiser of {phase.shares!r}")
        seen[phase.name] = phase


class StepContext(dict):
    """Scratch space shared by the phases of one training step (emptied every step), plus
    what the loop tells the losses: `scaler`, the fp16 grad scaler or None, which gradient
    penalties need (`svai.models.penalties`), and `due`, the names of the phases that run
    this step (a phase that prepares a later one asks whether that one is due)."""

    def __init__(self, scaler: Any = None, due: Iterable[str] = ()) -> None:
        super().__init__()
        self.scaler = scaler
        self.due = frozenset(due)


class PhaseGradients:
    """The loop's switch of which networks compute gradients in each phase.

    Holds the parameters of each network some phase trains that required gradients when
    the run was set up (after `build` and `load_pretrained`): those the optimisers update.
    Parameters frozen then (a base model under LoRA) are never switched on.
    """

    def __init__(self, nets: Networks, phases: list[Phase], prepares: dict[str, str] | None = None) -> None:
        self.phases = {phase.name: phase for phase in phases}
        self.prepares = dict(prepares or {})
        names = [phase.name for phase in phases]
        for first, later in self.prepares.items():
            if first not in names or later not in names[names.index(first) + 1:]:
                raise ValueError(f"phase {first!r} prepares {later!r}, which is not a later phase")
        trained = dict.fromkeys(name for phase in phases for name in phase.networks)
        self.parameters = {name: [p for p in nets[name].parameters() if p.requires_grad] for name in trained}

    def enter(self, phase: Phase, due: Iterable[str]) -> None:
        """Gradients on for `phase`'s networks (and those of the phase it prepares, when that
        one is in `due`), off for every other trained network."""
        on = set(phase.networks)
        later = self.prepares.get(phase.name)
        if later is not None and later in set(due):
            on.update(self.phases[later].networks)
        for name, parameters in self.parameters.items():
            for parameter in parameters:
                parameter.requires_grad_(name in on)


@dataclass
class Request:
    """What is asked of a model besides the before image; every field left None is "not asked".

    - procedures: (B, P) procedure strengths in [0, 1], one column per procedure of the
      run's vocabulary (0 = not operated, 1 = full strength).
    - intensity: in [0, 1], how far the output moves from the before image (1 = fully).
    - reference: (B, 3, H, W) in [-1, 1], "after" photos whose style the output takes.
    - generator: the random generator of latent draws (`--seed` makes output repeatable).
    - steps, guidance, strength, prompt: sampler settings of families that sample.
    - landmarks: (B, 478, 2) float32, each before image's face landmarks in its pixels (x, y;
      continuous coordinates, a pixel's centre at +0.5), NaN rows where no face was found.
      Never set by the user: generate fills it from the dataset's stored landmarks or the face
      layer (`svai.models.face_input`) for families that read it.
    """

    procedures: torch.Tensor | None = None
    intensity: float | None = None
    reference: torch.Tensor | None = None
    generator: torch.Generator | None = None
    steps: int | None = None
    guidance: float | None = None
    strength: float | None = None
    prompt: str | None = None
    landmarks: torch.Tensor | None = None

    def checked_intensity(self) -> float | None:
        """The intensity as a float, None when not asked; SvaiError naming ``--intensity``
        unless it is in [0, 1]."""
        if self.intensity is None:
            return None
        value = float(self.intensity)
        if not 0.0 <= value <= 1.0:
            raise SvaiError(f"--intensity must be between 0 and 1; got {self.intensity}")
        return value

    def check(self) -> None:
        """SvaiError naming the option unless the intensity and the sampler settings asked for
        are in range."""
        self.checked_intensity()
        for option, value, low, high in (("--steps", self.steps, 1, 1000), ("--guidance", self.guidance, 0, 100),
                                         ("--strength", self.strength, 0, 1)):
            if value is not None and not low <= value <= high:
                raise SvaiError(f"{option} must be between {low} and {high}; got {value}")

    def given(self) -> list[str]:
        """Names of the fields that were asked for."""
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

    def only(self, fields: Iterable[str]) -> "Request":
        """A copy keeping just `fields`: what a caller filling the request from data (not from
        the user) hands a family that may not read all of it."""
        keep = set(fields)
        return Request(**{f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name in keep})


# The option a user sets each request field with; named in the error when a model ignores it.
# (`landmarks` has none: svai fills it.)
REQUEST_OPTIONS: dict[str, str] = {
    "procedures": "--procedures",
    "intensity": "--intensity",
    "reference": "--reference",
    "generator": "--seed",
    "steps": "--steps",
    "guidance": "--guidance",
    "strength": "--strength",
    "prompt": "--prompt",
}


class ModelFamily:
    """Base class of a model family. Subclasses set the class attributes and methods below;
    a family whose generator ends in an output head extends `GeneratorFamily`.

    A family instance holds only its options and image size; network weights live in the
    `Networks` dict built by `build`, so the loop can wrap them for devices and processes.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type] = type(None)
    paired: ClassVar[bool] = True           # learns from aligned before/after pairs
    uses: frozenset[str] = frozenset()   # the `Request` fields `translate` reads (an instance may add some)
    description: ClassVar[str] = ""
    # Networks of `build` that come pretrained and never train (a VGG feature extractor):
    # `load_pretrained` fills them, and checkpoints leave them out (`is_frozen`).
    frozen_networks: ClassVar[tuple[str, ...]] = ()
    # {phase: later phase} where the first phase's loss makes, graph and all, the images the
    # later one reuses (a discriminator phase runs the generator once for both): while the
    # first runs, the later one's networks keep gradients on, on steps where it is due.
    prepares: ClassVar[dict[str, str]] = {}
    # How the generator's last layer becomes the after image (`svai.models.heads`), for a family
    # whose generator ends in an output head; None otherwise.
    head: OutputHead | None = None

    def __init__(self, options: Any, image_size: int, procedures: tuple[str, ...] = PROCEDURES) -> None:
        """`procedures` is the run's vocabulary: the columns of `batch["procedures"]` and of
        `Request.procedures`, in order (the dataset's, recorded as `data.procedures`)."""
        if not dataclasses.is_dataclass(options) or not isinstance(options, self.Options):
            raise TypeError(f"{self.name} expects {self.Options.__name__}; got {type(options).__name__}")
        self.options = options
        self.image_size = image_size
        self.procedures = tuple(procedures)

    # -- building -----------------------------------------------------------------
    def build(self) -> Networks:
        """Create every network, initialised. Keys are stable names used in checkpoints.

        Besides trained networks this may hold state modules (an image pool, an EMA copy):
        everything returned is saved and restored with the run.
        """
        raise NotImplementedError

    def inference_networks(self) -> tuple[str, ...]:
        """The networks `translate` needs (generate loads only these)."""
        raise NotImplementedError

    # -- pretrained, frozen weights -------------------------------------------------------
    def is_frozen(self, network: str, key: str) -> bool:
        """Whether state-dict entry `key` of `network` is pretrained and frozen: never trained,
        never written into a checkpoint, always restored by `load_pretrained`. Default: every
        entry of the `frozen_networks`; a family freezing part of a network (a base model
        under LoRA adapters) overrides this."""
        return network in self.frozen_networks

    def load_pretrained(self, nets: Networks, dtype: torch.dtype = torch.float32) -> None:
        """Fill the frozen entries of those of `nets` that have any from the weights lookup
        (`svai.weights`), cast to `dtype` (the run's compute dtype), with gradients off.

        `nets` may be a subset of `build()`'s (generate loads only the inference networks).
        Called when training starts, before the first step (a missing file then fails at
        once, with the fix), on resume and at generation. Default: nothing is pretrained.
        """

    # -- training -----------------------------------------------------------------
    def fit(self, nets: Networks, data: Any) -> dict[str, float]:
        """Fit what has a closed form from the training split, before the first step.

        data: the training split (`svai.data.dataset.PairedImages`; `landmark_table()` gives
        the pairs' stored landmarks). Called once by the loop when a run starts (never on
        resume: the checkpoint holds the result), after `build` and `load_pretrained`; what it
        fits lives in the networks' buffers, so checkpoints keep it. Returns figures to log.
        Default: nothing to fit. A family whose whole training is its fit has no phases.
        """
        return {}

    def phases(self) -> list[Phase]:
        raise NotImplementedError

    def lr_factor(self, step: int, total_steps: int) -> float:
        """Learning-rate multiplier at `step` of `total_steps` (default: constant)."""
        return 1.0

    def loss(self, phase: str, nets: Networks, batch: Batch, ctx: StepContext, step: int) -> LossResult:
        """Loss of one phase: `(scalar loss, {"name": float})`.

        `ctx` is empty at the start of every step (of every micro-batch, under gradient
        accumulation) and is shared by that step's phases, so a generator output made in one
        phase can be reused by the next; `ctx.due` names the phases due this step. `nets` may
        hold DDP wrappers of the trained networks. The loop has switched gradients on for the
        phase's networks only (`PhaseGradients`): a loss never switches them itself.
        """
        raise NotImplementedError

    def after_step(self, nets: Networks, step: int) -> None:
        """Called once after the optimiser steps of a training step (EMA updates go here).

        `nets` are the networks themselves, never their DDP wrappers.
        """

    # -- inference ----------------------------------------------------------------
    def check_request(self, fields: Iterable[str]) -> None:
        """Refuse, in one line naming the option, a request field this family does not read.

        fields: the `Request` fields the user asked for (`request.given()`).
        """
        unused = [name for name in fields if name not in self.uses]
        if unused:
            option = REQUEST_OPTIONS.get(unused[0], unused[0])
            reads = ", ".join(REQUEST_OPTIONS.get(n, n) for n in sorted(self.uses)) or "no such option"
            raise SvaiError(f"{option}: {self.name} models do not use it (they take {reads}); leave it out")

    def intensity(self, request: Request | None) -> float | None:
        """The request's intensity α in [0, 1], checked; None when not asked (the default, 1)."""
        return request.checked_intensity() if request is not None else None

    @torch.no_grad()
    def translate(self, nets: Networks, before: torch.Tensor, request: Request | None = None) -> torch.Tensor:
        """before: (B, 3, H, W) in [-1, 1] -> predicted after, same shape and range."""
        raise NotImplementedError

    def changes_at_size(self) -> bool:
        """Whether `translate_at` has the family apply its change to each photo itself
        (`at_sizes`: an output head that changes the before photo, residual, masked or warp)
        rather than add the resized model-size change."""
        return False

    def moves_pixels(self) -> bool:
        """Whether the change resamples the photo's own pixels (a warp) at the photo's size, so
        applying it to a full-resolution photo keeps that photo sharp."""
        return False

    @torch.no_grad()
    def translate_at(self, nets: Networks, before: torch.Tensor, request: Request | None,
                     photos: list[torch.Tensor]) -> list[torch.Tensor]:
        """The after images at the photos' own sizes: the one way from the model's size to a
        photo's pixels, for generate, the Python API and the consultation app alike.

        before: (B, 3, S, S) in [-1, 1] at the model's size; photos[i]: (1, 3, H_i, W_i) in
        [-1, 1], the image before[i] was resized from -> [(1, 3, H_i, W_i) in [-1, 1]].
        Where `changes_at_size`, the head's change is applied to each photo itself
        (`at_sizes`); otherwise the model-size change, output minus before, is resized and
        added to the photo (`change_at_size`). Either way the photo keeps its own detail
        wherever the model changed nothing.
        """
        if self.intensity(request) == 0.0:
            # Intensity 0 asks for no change: every family returns the photo itself.
            return [photo.float().clone() for photo in photos]
        if self.changes_at_size():
            outs = self.at_sizes(nets, before, request, photos)
        else:
            out = self.translate(nets, before, request)
            outs = [change_at_size(out[i:i + 1], before[i:i + 1], photo) for i, photo in enumerate(photos)]
        return self.confine_to_procedures(outs, before, request, photos)

    def at_sizes(self, nets: Networks, before: torch.Tensor, request: Request | None,
                 photos: list[torch.Tensor]) -> list[torch.Tensor]:
        """The change applied to each photo at its own size (families that `changes_at_size`);
        arguments as `translate_at`."""
        raise NotImplementedError

    def reads_landmarks(self) -> bool:
        """Whether generation should give this family the photos' face landmarks
        (`Request.landmarks`): it reads them, or it takes procedures and so keeps its change
        to their regions (`confine_to_procedures`)."""
        return "landmarks" in self.uses or "procedures" in self.uses

    def confine_to_procedures(self, outs: list[torch.Tensor], before: torch.Tensor, request: Request | None,
                              photos: list[torch.Tensor]) -> list[torch.Tensor]:
        """Keep each photo's change inside the regions of the procedures it asks for: a family
        that takes procedures changes nothing measurable outside them (`svai.warp.confine`,
        regions from the face's landmarks in the request, given in before's pixels). Photos
        without a face, requests without procedures or landmarks are left as they are."""
        if "procedures" not in self.uses or request is None or request.procedures is None \
                or request.landmarks is None:
            return outs
        from svai.warp import confine, landmarks_found

        strengths = self.requested_procedures(request, before).cpu()
        landmarks = request.landmarks.detach().cpu().double().numpy()
        kept = []
        for index, (out, photo) in enumerate(zip(outs, photos)):
            ticked = [p for p, s in zip(self.procedures, strengths[index].tolist()) if s > 0]
            points = landmarks[index] * (photo.shape[-1] / before.shape[-1])
            kept.append(confine(photo, out, points, ticked) if ticked and landmarks_found(points) else out)
        return kept

    def requested_procedures(self, request: Request | None, before: torch.Tensor) -> torch.Tensor:
        """The request's procedure strengths for a procedure-conditioned family, checked:
        (B, P) or (1, P) in [0, 1] over `self.procedures` -> (B, P) float32 on before's device.
        None is a one-line error asking for --procedures."""
        if request is None or request.procedures is None:
            raise SvaiError(
                f"{self.name} models need --procedures: the procedures to simulate ({', '.join(self.procedures)}), "
                f"e.g. {'+'.join(self.procedures[:2])}"
            )
        labels, count = request.procedures, len(self.procedures)
        if labels.dim() != 2 or labels.shape[1] != count or labels.shape[0] not in (1, before.shape[0]):
            raise SvaiError(
                f"--procedures: expected ({before.shape[0]}, {count}) strengths over {', '.join(self.procedures)}; "
                f"got shape {tuple(labels.shape)}"
            )
        if not bool(((labels >= 0) & (labels <= 1)).all()):
            raise SvaiError(f"--procedures: strengths must be between 0 and 1; got {labels.tolist()}")
        return labels.to(device=before.device, dtype=torch.float32).expand(before.shape[0], -1)


class GeneratorFamily(ModelFamily):
    """A family whose generator draws from the before photo and ends in an output head
    (`svai.models.heads`, built from the family's `OutputOptions`): `translate` and the
    photo-size output both come from one `generator_output`, and the head applies the
    request's intensity.
    """

    head: OutputHead

    def __init__(self, options: Any, image_size: int, procedures: tuple[str, ...] = PROCEDURES) -> None:
        super().__init__(options, image_size, procedures)
        self.head = OutputHead(options)

    def generator_output(self, nets: Networks, before: torch.Tensor, request: Request | None) -> torch.Tensor:
        """The generator's raw output (B, `head.channels`, S, S) for before (B, 3, S, S) in
        [-1, 1], checked against what the generator accepts."""
        raise NotImplementedError

    def head_intensity(self, request: Request | None) -> float | None:
        """The intensity the head applies (None: 1): the request's, unless the family applies
        it inside its generator."""
        return self.intensity(request)

    @torch.no_grad()
    def translate(self, nets: Networks, before: torch.Tensor, request: Request | None = None) -> torch.Tensor:
        """before: (B, 3, S, S) in [-1, 1] -> after, same shape, in [-1, 1].

        ``request.intensity`` α in [0, 1] (default 1) scales the change (`OutputHead`): 0
        returns the before image. Runs the generator in whatever mode the caller set (eval
        uses batch norm's running statistics).
        """
        raw = self.generator_output(nets, before, request)
        return self.head(raw, before, self.head_intensity(request))[0]

    def changes_at_size(self) -> bool:
        return self.head.mode != "direct"

    def moves_pixels(self) -> bool:
        return self.head.mode == "warp"

    def at_sizes(self, nets: Networks, before: torch.Tensor, request: Request | None,
                 photos: list[torch.Tensor]) -> list[torch.Tensor]:
        """The head's change applied to each photo itself (`OutputHead.at_size`)."""
        raw, alpha = self.generator_output(nets, before, request), self.head_intensity(request)
        return [self.head.at_size(raw[i:i + 1], before[i:i + 1], photo, alpha) for i, photo in enumerate(photos)]


@contextmanager
def eval_mode(nets: Networks) -> Iterator[None]:
    """Put networks in eval mode for inference and restore each one's mode afterwards."""
    modes = {name: net.training for name, net in nets.items()}
    for net in nets.values():
        net.eval()
    try:
        yield
    finally:
        for name, net in nets.items():
            net.train(modes[name])




"""The Python API: simulate a photo with a trained run, prepare data, train and evaluate.

For notebooks and for software that embeds svai (a clinic's own viewer). Every function
calls the library code the matching command calls, so results are the same as the CLI's:
`Run.simulate` on a photo gives the pixels `svai generate` writes for it.

The names in `__all__` are the stable surface: they keep their meaning and their parameters
across versions (new parameters come as keyword arguments with defaults). Everything else in
svai may change. Mistakes in what is passed raise `SvaiError` (one line naming the problem).
`svai.load_run`, `svai.prepare`, `svai.evaluate` and `svai.Run` are these same objects;
training is `svai.api.train`, because `svai.train` is the training loop's module.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import numpy as np
from PIL import Image, ImageOps

from svai.data.options import PrepareOptions, SyntheticOptions
from svai.errors import SvaiError
from svai.metrics.options import EvaluateOptions
from svai.run import TrainOptions

# What `Run.simulate` accepts as a photo: a file, a Pillow image, or (H, W[, 3|4]) uint8 pixels.
PhotoLike = Union[str, Path, Image.Image, np.ndarray]
# Procedures: "nose+jaw" or "nose:0.5" as on the command line, ["nose", "jaw"], or {"nose": 0.5}.
ProceduresLike = Union[str, Sequence[str], Mapping[str, float]]

# The `Run.simulate` keyword that sets each request field a family may read.
_KEYWORDS = {"procedures": "procedures", "intensity": "intensity", "reference": "reference", "generator": "seed",
             "steps": "steps", "guidance": "guidance", "strength": "strength", "prompt": "prompt"}


def _pixels(photo: PhotoLike, what: str = "image") -> tuple[np.ndarray, Path | None]:
    """(H, W, 3) uint8 RGB and the file it came from (None for pixels in memory), decoded the
    way `svai generate` decodes files: EXIF orientation applied, transparency on white."""
    from svai.data.images import read_rgb, to_rgb_array

    if isinstance(photo, (str, Path)):
        return read_rgb(Path(photo)), Path(photo)
    if isinstance(photo, Image.Image):
        return to_rgb_array(ImageOps.exif_transpose(photo)), None
    if isinstance(photo, np.ndarray):
        if photo.dtype != np.uint8 or photo.ndim not in (2, 3) or (photo.ndim == 3 and photo.shape[2] not in (3, 4)):
            raise SvaiError(f"{what}: expected (H, W), (H, W, 3) or (H, W, 4) uint8 pixels; "
                            f"got {photo.dtype} {photo.shape}")
        return to_rgb_array(Image.fromarray(np.ascontiguousarray(photo))), None
    raise SvaiError(f"{what}: expected a file path, a PIL image or a numpy array; got {type(photo).__name__}")


def _procedure_text(procedures: ProceduresLike) -> str:
    if isinstance(procedures, str):
        return procedures
    if isinstance(procedures, Mapping):
        return "+".join(f"{name}:{strength}" for name, strength in procedures.items())
    return "+".join(str(name) for name in procedures)


class _GivenRegions:
    """Regions handed over in memory, {procedure: mask}, white (or True) = region; answers
    `find_with_source` as `svai.composite.RegionLookup` does for files."""

    def __init__(self, regions: Mapping[str, PhotoLike]) -> None:
        self.masks = {}
        for name, mask in regions.items():
            if isinstance(mask, np.ndarray) and mask.dtype == bool:
                self.masks[name] = mask
            else:
                self.masks[name] = _pixels(mask, f"regions[{name!r}]")[0].mean(axis=2) >= 128

    def find_with_source(self, file: Any, shape: tuple[int, int], chosen: tuple[str, ...] | None,
                         image: np.ndarray | None = None,
                         landmarks: np.ndarray | None = None) -> tuple[np.ndarray | None, str]:
        """The region of `chosen` from the masks given, else from the photo's own landmarks
        (the face layer, as `svai generate` does), else None (the change map)."""
        from svai.composite import landmark_region, union
        from svai.data.regions import fit_region
        from svai.generate import regions_finder

        names = tuple(chosen) if chosen else tuple(self.masks)
        if names and all(name in self.masks for name in names):
            return union((fit_region(self.masks[name], *shape) for name in names), shape), "regions"
        finder = regions_finder()
        if finder is not None and image is not None:
            region = landmark_region(finder, image, chosen, landmarks)
            if region is not None:
                return region, "landmark regions"
        return None, "change map"


class Run:
    """A trained run, loaded once (its inference networks on `device`); `simulate` any number
    of photos. Simulations run one at a time (they share the networks)."""

    def __init__(self, path: Path, model: Any) -> None:
        self.path = Path(path)
        self._model = model
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        """The model or preset the run was trained as (`svai models`)."""
        return self._model.config.name

    @property
    def family(self) -> str:
        return self._model.config.family

    @property
    def step(self) -> int:
        """The training step of the loaded checkpoint."""
        return self._model.step

    @property
    def image_size(self) -> int:
        """The size in pixels the model works at; photos of any size are accepted."""
        return self._model.config.data.image_size

    @property
    def procedures(self) -> tuple[str, ...]:
        """The procedures `simulate(procedures=...)` takes, in column order; () when the model
        has no procedure control."""
        family = self._model.family
        return tuple(family.procedures) if "procedures" in family.uses else ()

    @property
    def controls(self) -> tuple[str, ...]:
        """The `simulate` keywords this model reads (besides `composite` and `regions`)."""
        return tuple(sorted(_KEYWORDS[field] for field in self._model.family.uses))

    @property
    def composite_default(self) -> bool:
        """Whether `simulate` composites when `composite` is None (the run's generate.composite)."""
        return self._model.composite_default

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, model={self.name!r}, step={self.step})"

    def simulate(
        self,
        photo: PhotoLike,
        procedures: ProceduresLike | None = None,
        *,
        composite: bool | None = None,
        regions: Mapping[str, PhotoLike] | None = None,
        **controls: Any,
    ) -> Image.Image:
        """The simulated after photo, at the photo's own size, as a new RGB `PIL.Image`.

        - photo: a file path, a PIL image or (H, W, 3) uint8 pixels. A file inside a prepared
          dataset split (`DATA/test/before/x.png`) is treated exactly as `svai generate`
          treats it: its manifest labels and its regions count.
        - procedures: "nose+jaw", "nose:0.5", ["nose", "jaw"] or {"nose": 0.5}, over
          `self.procedures` (models with a procedure control).
        - composite: keep every pixel outside the procedures' region identical to the photo;
          None = the run's default (`self.composite_default`).
        - regions: {procedure: mask} drawn on this photo (white = region, any size) for the
          composite; without them the model's own change map is the region.
        - controls, by name: intensity (0..1, how strong the change is; 1 = as trained), and
          seed, reference, steps, guidance, strength, prompt as `svai generate`'s options, for
          the models that read them (`self.controls`).

        Raises `SvaiError` for a keyword this model does not read or a value out of range.
        """
        from svai.composite import CompositeOptions
        from svai.generate import (
            FACE_CROP_FACTOR, Generation, InputFolder, face_crop_finder, input_photo, simulate_photos,
        )

        model = self._model
        pixels, file = _pixels(photo, "photo")
        request = self._request(procedures, controls)
        if composite is None:
            composite = self.composite_default
        if regions is not None and not composite:
            raise SvaiError("regions steer a composite: pass composite=True")
        settings = Generation(1, request=request, composite=CompositeOptions() if composite else None)
        # A file is read as `svai generate` reads its folder (a dataset split's labels and
        # regions count); pixels in memory get a name for the lookups, nothing is read or written.
        folder = InputFolder.open(file.parent) if file is not None else InputFolder(Path("."))
        if composite and (regions is not None or file is None):
            folder.regions = _GivenRegions(regions or {})
        elif composite:
            folder.use_regions(None)
        inputs, _ = input_photo(file or Path("photo.png"), pixels, face_crop_finder(None), self.image_size)
        if inputs is None:
            raise SvaiError("no face found in the photo (the face layer looks for one in photos larger than "
                            f"{FACE_CROP_FACTOR * self.image_size} px): crop it to the face first")
        with self._lock:
            [result] = simulate_photos(model, [inputs], settings, folder)
        return Image.fromarray(result)

    def _request(self, procedures: ProceduresLike | None, controls: dict[str, Any]) -> Any:
        """The `svai.models.base.Request` of `simulate`'s keywords: `controls` are intensity,
        seed, reference and the sampler settings by name. A keyword that is not one, or that the
        model does not read, is an error naming it."""
        import torch

        from svai.generate import parse_procedures, square_input
        from svai.models.base import Request

        family = self._model.family
        known = sorted(set(_KEYWORDS.values()) - {"procedures"})
        unknown = sorted(set(controls) - set(known))
        if unknown:
            raise SvaiError(f"{unknown[0]}: not an option of simulate; use {', '.join(known)}")
        fields = dict(controls)
        seed, reference = fields.pop("seed", None), fields.pop("reference", None)
        request = Request(
            procedures=parse_procedures(_procedure_text(procedures), family.procedures) if procedures is not None
            else None,
            generator=torch.Generator().manual_seed(seed) if seed is not None else None, **fields)
        if reference is not None:
            request.reference = square_input(_pixels(reference, "reference")[0], self.image_size)
        unused = [field for field in request.given() if field not in family.uses]
        if unused:
            raise SvaiError(f"{_KEYWORDS[unused[0]]}: {self.name} models do not use it "
                            f"(they take {', '.join(self.controls) or 'no option'}); leave it out")
        return request


def load_run(run: str | Path, *, checkpoint: str | int = "latest", device: str | None = None) -> Run:
    """Load a run folder made by `svai train` (or `train`): its config and the weights of
    `checkpoint` ("latest" or a step), on `device` ("cpu", "cuda"; default: cuda when present)."""
    from svai.generate import load_model

    return Run(Path(run), load_model(Path(run), checkpoint, device))


@dataclass(frozen=True)
class Prepared:
    """A prepared dataset: its folder, pairs per split and how many inputs were skipped."""

    path: Path
    pairs: dict[str, int]
    skipped: int = 0


def prepare(
    source: str | Path, out: str | Path, *, options: PrepareOptions | SyntheticOptions | None = None, **settings: Any
) -> Prepared:
    """`svai prepare SOURCE OUT`: photos (a folder or a CSV of pairs) or "synthetic" faces into
    a prepared dataset. `options` holds the settings (`SyntheticOptions` for "synthetic",
    `PrepareOptions` for photos); `settings` are its fields by name, applied over `options`:
    size, seed, test_fraction, force, landmarks, and count (synthetic) or pairing, pairs_csv,
    order, labels, crop, align, workers, regions (photos; see docs/data.md). Size defaults to
    512 for photos and 128 for synthetic faces."""
    from svai.data.prepare import prepare_dataset, prepare_synthetic

    out = Path(out)
    if str(source) == "synthetic":
        synthetic = _settings(options or SyntheticOptions(), settings, "synthetic data takes only {known}")
        summary = prepare_synthetic(out, synthetic)
        if summary is None:
            raise SvaiError(f"prepare was stopped; call it again to finish {out}")
        return Prepared(out, dict(summary["pairs"]))
    photos = _settings(options or PrepareOptions(), settings, "not an option of prepare; use {known}")
    report = prepare_dataset(Path(source), out, photos)
    if report.interrupted:
        raise SvaiError(f"prepare was stopped; call it again to finish {out}")
    if report.total == 0:
        raise SvaiError(f"no pair could be prepared from {source} ({len(report.skipped)} files skipped)")
    return Prepared(out, dict(report.pairs), len(report.skipped))


def _settings(options: Any, settings: dict[str, Any], refusal: str) -> Any:
    """`options` (an options dataclass) with the fields `settings` names replaced; a name that
    is not one of its fields is refused with `refusal`, which may name the {known} fields."""
    known = sorted(f.name for f in fields(options) if f.name != "max_pixels")
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise SvaiError(f"{unknown[0]}: " + refusal.format(known=", ".join(known)))
    return replace(options, **settings)


@dataclass(frozen=True)
class Trained:
    """A finished (or stopped) training: the run folder, the step reached, the run's total,
    whether a stop request cut it short, and the test-split evaluation (None when the
    dataset has no test split, evaluation is off, or training was cut short)."""

    path: Path
    step: int
    total_steps: int
    interrupted: bool
    evaluation: dict | None


def train(model: str | None, data: str | Path | None, out: str | Path, **settings: Any) -> Trained:
    """`svai train`: train `model` (a name from `svai models`) on a prepared dataset into the run
    folder `out`, then evaluate the test split unless `train.evaluate` is off. `settings` are
    the fields of `TrainOptions` by name (steps, batch_size, image_size, mixed_precision, seed,
    config, sets, log_with, resume): `sets` are `--set key=value` overrides, `log_with` tracker
    names; `resume=True` continues `out` (model and data may then be None)."""
    from svai.checkpoint import find_checkpoint
    from svai.pipeline import evaluate_run
    from svai.run import only_evaluation_left, run_privacy, writing
    from svai.train import open_run

    options = _settings(TrainOptions(model, data, out), settings, "not an option of train; use {known}")
    config, out = options.resolve(), options.out
    with writing(out, run_privacy(config)):
        if options.resume and only_evaluation_left(out, config):
            # A resumed run already at its last step whose evaluation was cut short: only that is left.
            step, interrupted = find_checkpoint(out).step, False
        else:
            result = open_run(config, out, options.resume, options.call("svai.api.train")).run()
            step, interrupted = result.step, result.interrupted
        evaluation = evaluate_run(out) if config.train.evaluate and not interrupted else None
    return Trained(out, step, config.train.steps, interrupted, evaluation)


def evaluate(
    pred: str | Path, target: str | Path, *, options: EvaluateOptions | None = None, json: str | Path | None = None,
    **settings: Any,
) -> dict:
    """`svai evaluate`: the metrics of the images in `pred` against `target` (paired by relative
    path without extension), with the do-nothing `baseline` row when given; the same dict the
    CLI writes with `--json` (written to `json` when given). `settings` are the fields of
    `EvaluateOptions` by name (metrics, baseline, masks, before, name, device, batch_size,
    lpips_net, fid_dims, weights_dir, use_cache), applied over `options`. See docs/metrics.md."""
    from svai.metrics.evaluate import evaluate_folders, write_json

    options = _settings(options or EvaluateOptions(), settings, "not an option of evaluate; use {known}")
    result = evaluate_folders(Path(pred), Path(target), options)
    if json is not None:
        write_json(result, Path(json))
    return result


__all__ = [
    "EvaluateOptions", "PhotoLike", "PrepareOptions", "Prepared", "ProceduresLike", "Run", "SyntheticOptions",
    "TrainOptions", "Trained", "evaluate", "load_run", "prepare", "train",
]

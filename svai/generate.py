"""Inference: run a trained model over a folder of photos.

Every image under the input folder becomes a PNG at the same relative path in the output
folder, at the input's own size. Non-square photos are padded to a square by repeating
their border, resized to the model's size, translated, resized back and cropped, so the
face is never squashed.

With a composite (`Generation.composite`) each output is blended back into its input, at the
input's full resolution, inside the feathered region of the chosen procedures
(`svai.composite`): every pixel outside it is the input's, byte for byte.
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from svai.checkpoint import find_checkpoint, load_networks
from svai.composite import CompositeOptions, RegionLookup, composite
from svai.config import RunConfig, load_run_config, resolve
from svai.data.dataset import procedure_vector
from svai.data.images import MAX_SQUARE_PIXELS, Listing, no_images, read_rgb, scan_images
from svai.data.layout import PROCEDURE_SEPARATOR, PROCEDURES, REGIONS_DIR, SPLITS, parse_strengths, read_manifest
from svai.data.regions import index_regions
from svai.errors import SvaiError
from svai.image_ops import resize, to_tensor, to_uint8
from svai.io import Privacy, check_output_folder, write_png
from svai.models.base import ModelFamily, Networks, Request, eval_mode
from svai.models.registry import build_on_meta, make_family

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    config: RunConfig
    family: ModelFamily
    nets: Networks
    step: int
    device: torch.device

    @property
    def composite_default(self) -> bool:
        """Whether a simulation composites when not told (the run's generate.composite)."""
        return bool(self.config.generate.composite)


@dataclass
class GenerateReport:
    written: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    # With a composite: how many images each region came from ("regions", "change map").
    composited: dict[str, int] = field(default_factory=dict)
    # (input, note) for inputs written with something to know (several faces).
    notes: list[tuple[Path, str]] = field(default_factory=list)


def load_model(run_dir: Path, checkpoint: str | int = "latest", device: str | torch.device | None = None) -> LoadedModel:
    """Build a run's model from its `config.yaml` and load the inference networks' weights."""
    config = resolve(base=load_run_config(run_dir))
    ref = find_checkpoint(run_dir, checkpoint)
    family = make_family(config)
    skeleton = build_on_meta(family)
    names = family.inference_networks()
    # Only the networks needed for inference are materialised; discriminators stay on meta.
    torch_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    nets = {name: skeleton[name].to_empty(device="cpu") for name in names}
    load_networks(ref.path, nets, names, frozen=family.is_frozen)
    family.load_pretrained(nets)
    for net in nets.values():
        net.to(torch_device).eval()
    return LoadedModel(config, family, nets, ref.step, torch_device)


def parse_procedures(text: str | None, vocabulary: tuple[str, ...] = PROCEDURES) -> torch.Tensor | None:
    """"eyes+nose" (or "eyes,nose"; "nose:0.5" for half strength) -> (P,) strengths over
    `vocabulary`; None -> None. An unknown name is an error listing the vocabulary."""
    if not text:
        return None
    try:
        strengths = parse_strengths(text.replace(",", PROCEDURE_SEPARATOR), vocabulary)
    except SvaiError as error:
        raise SvaiError(f"--procedures: {error}") from None
    return procedure_vector(strengths, vocabulary)


def pad_to_square(image: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """(B, C, H, W) -> (B, C, S, S) with S = max(H, W), border repeated; returns the padding."""
    height, width = image.shape[-2:]
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    padding = (left, side - width - left, top, side - height - top)
    if side == height == width:
        return image, padding
    return F.pad(image, padding, mode="replicate"), padding


def pad_array_to_square(image: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """`pad_to_square` for an (H, W, 3) uint8 photo -> (S, S, 3) uint8 and the padding
    (left, right, top, bottom)."""
    height, width = image.shape[:2]
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    padding = (left, side - width - left, top, side - height - top)
    if side == height == width:
        return image, padding
    return np.pad(image, ((top, padding[3]), (left, padding[1]), (0, 0)), mode="edge"), padding


def batch_request(request: Request, count: int, device: torch.device) -> Request:
    """The request for a batch of `count` images: per-batch tensors moved to `device`, and a
    single row of procedure strengths (1, P) repeated for every image."""
    procedures = request.procedures
    if procedures is not None:
        procedures = procedures.to(device)
        if procedures.dim() == 1 or procedures.shape[0] == 1:
            procedures = procedures.reshape(1, -1).expand(count, -1)
    reference = request.reference.to(device) if request.reference is not None else None
    return replace(request, procedures=procedures, reference=reference)


def translate_batch(model: LoadedModel, images: list[np.ndarray], request: Request | None = None,
                    landmarks: list[np.ndarray | None] | None = None) -> list[np.ndarray]:
    """Translate photos of any size: each is padded square and resized to the model's size;
    the family then gives the after image at the padded photo's own size
    (`ModelFamily.translate_at`: the change applied to the photo itself where the model
    changes the before photo, else its output resized), which is cropped back.
    images: (H, W, 3) uint8 -> same.

    For a family that reads face landmarks, `landmarks[i]` gives image i's (478, 2) points in
    its own pixels when known (a dataset's stored ones); the others are found by the face
    layer on the photo at its full resolution. The request carries them in the model input's
    pixels (`Request.landmarks`)."""
    size = model.config.data.image_size
    photos, inputs, layouts = [], [], []
    for image in images:
        # Padded as uint8 (the same border replication as `pad_to_square`, a quarter of the bytes).
        square, padding = pad_array_to_square(image)
        tensor = to_tensor(square)[None]
        layouts.append((image.shape[0], image.shape[1], padding))
        photos.append(tensor.to(model.device))
        inputs.append(resize(tensor, size))
    before = torch.cat(inputs).to(model.device)
    asked = batch_request(request or Request(), len(images), model.device)
    if model.family.reads_landmarks() and asked.landmarks is None:
        asked = replace(asked, landmarks=input_landmarks(images, layouts, size, landmarks).to(model.device))
    with torch.no_grad(), eval_mode(model.nets):
        fakes = model.family.translate_at(model.nets, before, asked, photos)
    outputs = []
    for fake, (height, width, (left, _, top, _)) in zip(fakes, layouts):
        outputs.append(to_uint8(fake.float().cpu()[..., top:top + height, left:left + width])[0])
    return outputs


def input_landmarks(images: list[np.ndarray], layouts: list[tuple[int, int, tuple[int, int, int, int]]], size: int,
                    known: list[np.ndarray | None] | None) -> torch.Tensor:
    """Each photo's landmarks in the model input's pixels: (B, 478, 2), NaN where no face.

    known[i]: image i's landmarks in its own pixels, or None to look for them with the face
    layer; layouts: (height, width, padding) of `translate_batch`'s square padding."""
    from svai.models.face_input import find_landmarks, landmark_rows

    rows = []
    for index, (image, (height, width, (left, _, top, _))) in enumerate(zip(images, layouts)):
        points = known[index] if known is not None else None
        if points is None:
            points = find_landmarks(image)
        if points is not None:
            points = (np.asarray(points, np.float64) + [left, top]) * (size / max(height, width))
        rows.append(points)
    return landmark_rows(rows)


def dataset_landmarks(input_dir: Path) -> dict[str, np.ndarray] | None:
    """Per-image before landmarks (in the image's pixels) when `input_dir` is a split of a
    prepared dataset that stores them (`svai.face.store`), else None."""
    found = dataset_split(input_dir)
    if found is None:
        return None
    from svai.face.store import landmarks_path, read_landmarks

    if not landmarks_path(*found).is_file():
        return None
    stored = read_landmarks(*found)
    return {pair_id: before for pair_id, (before, _) in stored.rows.items() if before is not None}


def dataset_procedures(input_dir: Path, vocabulary: tuple[str, ...] = PROCEDURES) -> dict[str, torch.Tensor] | None:
    """Per-image procedure strengths when `input_dir` is a split of a prepared dataset.

    `DATA/test/before` has its manifest two levels up; each image id maps to the (P,) row of
    its labelled procedures' strengths over `vocabulary`. None for any other folder.
    """
    found = dataset_split(input_dir)
    if found is None:
        return None
    root, split = found
    return {record.id: procedure_vector(record.strength_of(), vocabulary)
            for record in read_manifest(root) if record.split == split}


def dataset_split(input_dir: Path) -> tuple[Path, str] | None:
    """(dataset root, split) when `input_dir` is `DATA/{split}/before` of a prepared dataset, else None."""
    folder = Path(input_dir).resolve()
    root = folder.parent.parent
    if folder.parent.name not in SPLITS or not (root / "manifest.csv").is_file():
        return None
    return root, folder.parent.name


def chosen_procedures(strengths: torch.Tensor | None, vocabulary: tuple[str, ...]) -> tuple[str, ...] | None:
    """The procedures a request asks for: those with strength > 0 in a (P,) or (1, P) row;
    None when it gives none."""
    if strengths is None:
        return None
    row = strengths.reshape(-1, len(vocabulary))[0]
    names = tuple(name for name, value in zip(vocabulary, row.tolist()) if value > 0)
    return names or None


def region_lookup(input_dir: Path, regions: Path | None) -> RegionLookup:
    """Where composite regions come from: the dataset split's own regions, then `regions`,
    then each photo's landmarks when the face layer can run (else one warning saying why)."""
    found = dataset_split(input_dir)
    own = found[0] / found[1] / REGIONS_DIR if found else None
    dataset = index_regions(own, "regions folder") if own is not None and own.is_dir() else None
    folder = index_regions(regions, "--regions") if regions is not None else None
    return RegionLookup(input_dir, dataset, folder, regions_finder())


def regions_finder():  # type: ignore[no-untyped-def]
    """The face finder that draws composite regions from a photo's landmarks, or None (and one
    warning saying why) when the face layer cannot run."""
    from svai import face

    if face.finder.problem() is None:
        return face.finder.shared_finder()
    face.finder.warn_missing_once(log, "composite regions come from --regions or the change map")
    return None


def output_path(input_dir: Path, output_dir: Path, file: Path) -> Path:
    return (Path(output_dir) / file.relative_to(input_dir)).with_suffix(".png")


@dataclass
class Generation:
    """How to generate, besides which model and folders.

    - batch_size: images per forward pass.
    - request: what every image asks of the model (`svai.models.base.Request`); procedure
      strengths given here apply to every image.
    - references: reference "after" photos (reference-guided models). Input `x.jpg` takes
      the reference with the same stem when there is one, else the references in turn.
    - composite: blend each output into its input inside the feathered region of the chosen
      procedures (`svai.composite`); None writes the model's output as it is.
    - regions: a folder of regions `<procedure>/<relative path>.png` for inputs that are not a
      dataset split (or lack regions there); see `svai.data.regions`.
    """

    batch_size: int = 8
    request: Request = field(default_factory=Request)
    references: list[Path] | None = None
    composite: CompositeOptions | None = None
    regions: Path | None = None
    # Photos larger than FACE_CROP_FACTOR x the model's size: run the model on the largest
    # face's square (the face layer) and paste the result back; every pixel outside the square
    # stays the photo's. None: when the face layer can run; a photo without a face is skipped.
    face_crop: bool | None = None


FACE_CROP_FACTOR = 2


def face_square_of(image: np.ndarray, finder) -> tuple[tuple[int, int, int, int] | None, int]:  # type: ignore[no-untyped-def]
    """The integer face square of the largest face, moved inside the photo (as `svai serve`
    frames a photo), or None when the photo has no face; and how many faces it has."""
    from svai.face.mesh import square_inside

    faces = finder.find(image)
    if not faces:
        return None, 0
    return square_inside(faces[0].square, image.shape[1], image.shape[0]), len(faces)


def _face_finder(wanted: bool | None):  # type: ignore[no-untyped-def]
    """The face finder for face-square generation, or None when it is not wanted or cannot run."""
    if wanted is False:
        return None
    from svai import face

    why = face.finder.problem()
    if why is None:
        return face.finder.shared_finder()
    if wanted:
        raise SvaiError(f"--face-crop: {why}")
    face.finder.warn_missing_once(log, "large photos are given to the model whole")
    return None


def reference_for(references: list[Path], index: int, file: Path) -> Path:
    """The reference photo of the `index`-th input `file`: same stem first, else in turn."""
    for reference in references:
        if reference.stem == file.stem:
            return reference
    return references[index % len(references)]


def square_input(pixels: np.ndarray, size: int) -> torch.Tensor:
    """A photo's (H, W, 3) uint8 pixels as (1, 3, size, size) in [-1, 1]: padded square by its
    border, then resized (a reference photo as a model takes it)."""
    return resize(pad_to_square(to_tensor(pixels)[None])[0], size)


def generation_inputs(input_dir: Path, settings: Generation | None = None) -> dict[str, Path]:
    """Everything generation reads, by the option that names it: the input folder, the
    dataset it is a split of, the reference photos and the regions. No output may land in any."""
    inputs = {"--input": Path(input_dir)}
    found = dataset_split(input_dir)
    if found is not None:
        inputs["the dataset"] = found[0]
    if settings is not None:
        references = settings.references or []
        if references:
            # One photo, or the folder they were listed from.
            inputs["--reference"] = references[0] if len(references) == 1 else Path(
                os.path.commonpath([str(p) for p in references]))
        if settings.regions is not None:
            inputs["--regions"] = Path(settings.regions)
    return inputs


@dataclass
class InputFolder:
    """What generation reads about the photos besides their pixels, from the folder they come
    from: each image's procedure strengths (a dataset split's manifest, for a model that reads
    procedures and a request that names none) and where a composite's region comes from.

    - labels: image id -> (P,) strengths, or None.
    - wanted: the procedures the request asks for (their region is the composite's).
    - lookup: where regions are found (`RegionLookup`, or any object with its `find_with_source`); None
      without a composite.
    - labelled: image id -> its labelled procedures, whose region is used when `wanted` is None.
    """

    labels: dict[str, torch.Tensor] | None = None
    wanted: tuple[str, ...] | None = None
    lookup: RegionLookup | None = None
    labelled: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # For a family that reads landmarks: a dataset split's stored before landmarks by image id.
    landmarks: dict[str, np.ndarray] | None = None

    @classmethod
    def read(cls, model: LoadedModel, input_dir: Path, settings: Generation) -> "InputFolder":
        request = settings.request
        folder = cls()
        if "procedures" in model.family.uses and request.procedures is None:
            folder.labels = dataset_procedures(input_dir, model.family.procedures)
        # A family that reads landmarks takes a dataset split's stored ones (else the face layer's).
        if model.family.reads_landmarks():
            folder.landmarks = dataset_landmarks(input_dir)
        if settings.composite is not None:
            # The region of the procedures asked for, else of each image's labels in the manifest.
            folder.wanted = chosen_procedures(request.procedures, model.family.procedures)
            folder.lookup = region_lookup(input_dir, settings.regions)
            found = dataset_split(input_dir)
            if folder.wanted is None and found is not None:
                folder.labelled = {r.id: r.procedures for r in read_manifest(found[0]) if r.split == found[1]}
        elif settings.regions is not None:
            raise SvaiError("--regions steers a composite: add --composite")
        return folder


def simulate_photos(
    model: LoadedModel,
    photos: list[tuple[Path, np.ndarray]],
    settings: Generation,
    folder: InputFolder,
    start: int = 0,
    composited: dict[str, int] | None = None,
    squares: dict[Path, tuple[int, int, int, int]] | None = None,
    skipped: list[tuple[Path, str]] | None = None,
) -> list[np.ndarray | None]:
    """The after image of each (file, (H, W, 3) uint8 pixels) as `svai generate` makes it:
    the request with each image's labels, its reference (`start` is the index of the first
    photo among all inputs), the model (on the photo's face square where `squares` names one,
    pasted back), then the composite. `composited` counts where each composite's region came
    from ("regions", "landmark regions", "change map"). A photo that does not fit in memory
    even alone is None, and listed in `skipped` (without it, the memory error is raised)."""
    squares = squares or {}
    request = settings.request
    if folder.labels is not None:
        unlabelled = procedure_vector({}, model.family.procedures)
        request = replace(request, procedures=torch.stack([folder.labels.get(file.stem, unlabelled)
                                                            for file, _ in photos]))
    if settings.references:
        chosen = [reference_for(settings.references, start + i, file) for i, (file, _) in enumerate(photos)]
        request = replace(request, reference=torch.cat([square_input(read_rgb(r), model.config.data.image_size) for r in chosen]))
    views = [(file, _model_view(file, image, squares)) for file, image in photos]
    known = None
    if folder.landmarks is not None:
        known = [None if file in squares else folder.landmarks.get(file.stem) for file, _ in photos]
    predictions = _translate_each(model, views, request, skipped, known)
    predictions = [_paste_square(image, prediction, squares[file]) if file in squares and prediction is not None
                   else prediction for (file, image), prediction in zip(photos, predictions)]
    if folder.lookup is None or settings.composite is None:
        return predictions
    out: list[np.ndarray | None] = []
    for (file, image), prediction in zip(photos, predictions):
        if prediction is None:
            out.append(None)
            continue
        chosen = folder.wanted or folder.labelled.get(file.stem)
        region, source = folder.lookup.find_with_source(file, image.shape[:2], chosen, image)
        if composited is not None:
            composited[source] = composited.get(source, 0) + 1
        out.append(composite(image, prediction, region, settings.composite)[0])
    return out


def generate_folder(
    model: LoadedModel,
    input_dir: Path,
    output_dir: Path,
    settings: Generation | None = None,
    progress: Callable[[int], None] | None = None,
    listing: Listing | None = None,
) -> GenerateReport:
    """Translate every image under `input_dir` into `output_dir`; unusable files are skipped.

    `listing` is the input folder's `scan_images` when the caller already has it; every file it
    passed over is reported as skipped, with the reason prepare gives it. A model that reads
    procedure strengths, given none in the request, takes each image's own labels from the
    dataset's manifest when `input_dir` is a split of a prepared dataset. Each output is no
    more readable than its input photo (`svai.io.Privacy`).
    """
    settings = settings or Generation()
    if settings.batch_size < 1:
        raise SvaiError(f"--batch-size must be at least 1; got {settings.batch_size}")
    check_output_folder(generation_inputs(input_dir, settings), output_dir)
    listing = scan_images(input_dir) if listing is None else listing
    if not listing.images:
        raise no_images(Path(input_dir), listing)
    files = listing.images
    folder = InputFolder.read(model, input_dir, settings)
    report = GenerateReport()
    report.skipped.extend((p.path, f"{p.reason}: {p.detail}") for p in listing.passed_over)
    seen: dict[Path, Path] = {}
    queue: list[tuple[Path, np.ndarray]] = []
    squares: dict[Path, tuple[int, int, int, int]] = {}
    finder = _face_finder(settings.face_crop)
    crop_above = FACE_CROP_FACTOR * model.config.data.image_size

    def flush() -> None:
        # Photos of different sizes batch fine: each is padded and resized to the model size.
        if not queue:
            return
        predictions = simulate_photos(model, queue, settings, folder, len(report.written), report.composited, squares,
                                      report.skipped)
        for (file, _), prediction in zip(queue, predictions):
            if prediction is None:
                continue
            target = output_path(input_dir, output_dir, file)
            try:
                write_png(target, prediction, Privacy.of(file, input_dir))
            except OSError as error:
                if error.errno not in _NAME_ERRNOS:
                    raise  # a full disk or a lost permission stops the run: every later file would fail too
                report.skipped.append((file, f"cannot write {target.name}: {os.strerror(error.errno)}"))
                continue
            report.written.append(target)
        if progress is not None:
            progress(len(queue))
        queue.clear()

    for file in files:
        target = output_path(input_dir, output_dir, file)
        if target in seen:
            report.skipped.append((file, f"same output name as {seen[target].relative_to(input_dir)}"))
            if progress is not None:
                progress(1)
            continue
        seen[target] = file
        try:
            # Bounded before decoding: the photo is padded to a square of its long side.
            image = read_rgb(file, max_pixels=MAX_SQUARE_PIXELS, square=True)
        except SvaiError as error:
            report.skipped.append((file, str(error).removeprefix(f"{file}: ")))
            if progress is not None:
                progress(1)
            continue
        if finder is not None and max(image.shape[:2]) > crop_above:
            square, count = face_square_of(image, finder)
            if count > 1:
                report.notes.append((file, f"{count} faces found; the largest was simulated"))
            if square is None:
                report.skipped.append((file, "no face found (the face layer looks for one in photos larger than "
                                             f"{crop_above} px): crop it by hand, or use --no-face-crop"))
                if progress is not None:
                    progress(1)
                continue
            squares[file] = square
        queue.append((file, image))
        if len(queue) >= settings.batch_size:
            flush()
    flush()
    return report


def _model_view(file: Path, image: np.ndarray, squares: dict[Path, tuple[int, int, int, int]]) -> np.ndarray:
    """What the model is given: the face square when the photo has one, else the photo."""
    if file not in squares:
        return image
    x0, y0, x1, y1 = squares[file]
    return np.ascontiguousarray(image[y0:y1, x0:x1])


def _paste_square(image: np.ndarray, square: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The photo with its face square replaced by the model's result for it."""
    x0, y0, x1, y1 = box
    out = image.copy()
    out[y0:y1, x0:x1] = square
    return out



# Errors of one output's name (too long, not encodable here): that file is skipped, the rest written.
_NAME_ERRNOS = {errno.ENAMETOOLONG, errno.EILSEQ, errno.EINVAL}


def _out_of_memory(error: BaseException) -> bool:
    return isinstance(error, MemoryError) or (
        isinstance(error, RuntimeError) and ("out of memory" in str(error) or "can't allocate memory" in str(error)))


def _translate_each(
    model: LoadedModel, queue: list[tuple[Path, np.ndarray]], request: Request,
    skipped: list[tuple[Path, str]] | None, landmarks: list[np.ndarray | None] | None = None,
) -> list[np.ndarray | None]:
    """The batch's predictions; when the batch does not fit in memory, each photo alone, and
    a photo that does not fit even alone is listed in `skipped` (None) so the others are still
    written; without `skipped` the memory error is raised."""
    images = [image for _, image in queue]
    try:
        return translate_batch(model, images, request, landmarks)
    except (MemoryError, RuntimeError) as error:
        if skipped is None or not _out_of_memory(error):
            raise
        if len(queue) == 1:
            skipped.append((queue[0][0], "not enough memory to translate it"))
            return [None]
    outputs: list[np.ndarray | None] = []
    for index, (file, image) in enumerate(queue):
        single = _one_of(request, index, len(queue))
        try:
            outputs.append(translate_batch(model, [image], single, None if landmarks is None else [landmarks[index]])[0])
        except (MemoryError, RuntimeError) as error:
            if not _out_of_memory(error):
                raise
            skipped.append((file, "not enough memory to translate it"))
            outputs.append(None)
    return outputs


def _one_of(request: Request, index: int, count: int) -> Request:
    """The request of the `index`-th photo of a batch of `count` (its row of per-photo tensors)."""
    def row(value: torch.Tensor | None) -> torch.Tensor | None:
        if value is None or value.dim() == 0 or value.shape[0] != count:
            return value
        return value[index:index + 1]

    return replace(request, procedures=row(request.procedures), reference=row(request.reference))


__all__ = ["LoadedModel", "GenerateReport", "Generation", "InputFolder", "load_model", "generate_folder",
           "parse_procedures", "simulate_photos"]

"""Inference: run a trained model over a folder of photos.

Every image under the input folder becomes a PNG at the same relative path in the output
folder, at the input's own size. Non-square photos are padded to a square by repeating
their border and resized to the model's size; the model's change is applied to the padded
photo at its own size (`ModelFamily.translate_at`), which is cropped back, so the face is
never squashed and keeps its own detail wherever the model changed nothing. The input folder
is read once (`InputFolder`: its photos, the dataset split it may be, its regions).

With a composite (`Generation.composite`) each output is blended back into its input, at the
input's full resolution, inside the feathered region of the chosen procedures
(`svai.composite`): every pixel outside it is the input's, byte for byte.
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from svai.checkpoint import find_checkpoint, load_networks
from svai.composite import CompositeOptions, RegionLookup, composite
from svai.config import RunConfig
from svai.run import saved_config
from svai.data.dataset import procedure_vector
from svai.data.images import MAX_SQUARE_PIXELS, Listing, no_images, read_rgb, scan_images
from svai.data.layout import (
    PROCEDURE_SEPARATOR, PROCEDURES, REGIONS_DIR, SPLITS, PairRecord, parse_strengths, read_manifest,
)
from svai.data.regions import index_regions
from svai.devices import check_device
from svai.errors import SvaiError
from svai.image_ops import resize, to_tensor, to_uint8
from svai.io import Privacy, check_output_folder, check_writable, write_png
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
    """Build a run's model from its `config.yaml` and load the inference networks' weights onto
    `device` (cpu, cuda or cuda:N, checked before anything loads; default: cuda when available)."""
    if device is not None:
        check_device(device)
    config = saved_config(run_dir)
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


def pad_array_to_square(image: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """An (H, W, 3) uint8 photo padded square by repeating its border -> (S, S, 3) uint8 with
    S = max(H, W), and the padding (left, right, top, bottom)."""
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
        # Padded as uint8: a quarter of the bytes of a float copy.
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


def chosen_procedures(strengths: torch.Tensor | None, vocabulary: tuple[str, ...]) -> tuple[str, ...] | None:
    """The procedures a request asks for: those with strength > 0 in a (P,) or (1, P) row;
    None when it gives none."""
    if strengths is None:
        return None
    row = strengths.reshape(-1, len(vocabulary))[0]
    names = tuple(name for name, value in zip(vocabulary, row.tolist()) if value > 0)
    return names or None


def regions_finder():  # type: ignore[no-untyped-def]
    """The face finder that draws composite regions from a photo's landmarks, or None (and one
    warning saying why) when the face layer cannot run."""
    from svai import face

    return face.finder.usable_finder(log, "composite regions come from --regions or the change map")


def output_path(input_dir: Path, output_dir: Path, file: Path) -> Path:
    return (Path(output_dir) / file.relative_to(input_dir)).with_suffix(".png")


@dataclass
class Generation:
    """How to generate, besides which model and folders.

    - batch_size: images per forward pass, 1 to `MAX_BATCH_SIZE`.
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

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise SvaiError(f"--batch-size must be between 1 and {MAX_BATCH_SIZE}; got {self.batch_size}")
        self.request.check()
        if self.regions is not None and self.composite is None:
            raise SvaiError("--regions steers a composite: add --composite")


MAX_BATCH_SIZE = 4096


def generation_reads(references: list[Path] | None, regions: Path | None) -> dict[str, Path]:
    """The files generation reads besides the input folder, by the option that names them:
    the reference photos (`Generation.references`) and the regions (`Generation.regions`)."""
    reads = {}
    if references:
        # One photo, or the folder they were listed from.
        reads["--reference"] = references[0] if len(references) == 1 else Path(
            os.path.commonpath([str(p) for p in references]))
    if regions is not None:
        reads["--regions"] = Path(regions)
    return reads


FACE_CROP_FACTOR = 2


@dataclass
class InputPhoto:
    """One input photo: its file (a name for the lookups when it came from memory), its
    (H, W, 3) uint8 pixels and, when the model is run on its largest face only, that face's
    square (x0, y0, x1, y1) and its (478, 2) landmarks in the photo's pixels (found once, used
    again for the composite's regions)."""

    file: Path
    pixels: np.ndarray
    square: tuple[int, int, int, int] | None = None
    landmarks: np.ndarray | None = None

    def model_view(self) -> np.ndarray:
        """What the model is given: the face square when the photo has one, else the photo."""
        if self.square is None:
            return self.pixels
        x0, y0, x1, y1 = self.square
        return np.ascontiguousarray(self.pixels[y0:y1, x0:x1])

    def with_view(self, simulated: np.ndarray) -> np.ndarray:
        """The photo with its model view replaced by the model's result for it."""
        if self.square is None:
            return simulated
        x0, y0, x1, y1 = self.square
        out = self.pixels.copy()
        out[y0:y1, x0:x1] = simulated
        return out


def input_photo(file: Path, pixels: np.ndarray, finder, size: int) -> tuple[InputPhoto | None, int]:  # type: ignore[no-untyped-def]
    """The photo as generation runs it, and how many faces were looked for and found (0 when
    none was looked for): with a face `finder`, a photo over FACE_CROP_FACTOR x the model's
    `size` is run on its largest face's square (as `svai serve` frames a photo), None when it
    has no face; any other photo whole."""
    if finder is None or max(pixels.shape[:2]) <= FACE_CROP_FACTOR * size:
        return InputPhoto(file, pixels), 0
    from svai.face.mesh import square_inside

    faces = finder.find(pixels)
    if not faces:
        return None, 0
    square = square_inside(faces[0].square, pixels.shape[1], pixels.shape[0])
    return InputPhoto(file, pixels, square, faces[0].landmarks), len(faces)


def face_crop_finder(wanted: bool | None):  # type: ignore[no-untyped-def]
    """The face finder for face-square generation, or None when it is not wanted or cannot run."""
    if wanted is False:
        return None
    from svai import face

    why = face.finder.problem() if wanted else None
    if why is not None:
        raise SvaiError(f"--face-crop: {why}")
    return face.finder.usable_finder(log, "large photos are given to the model whole")


def reference_for(references: list[Path], index: int, file: Path) -> Path:
    """The reference photo of the `index`-th input `file`: same stem first, else in turn."""
    for reference in references:
        if reference.stem == file.stem:
            return reference
    return references[index % len(references)]


def square_input(pixels: np.ndarray, size: int) -> torch.Tensor:
    """A photo's (H, W, 3) uint8 pixels as (1, 3, size, size) in [-1, 1]: padded square by its
    border, then resized (a reference photo as a model takes it)."""
    return resize(to_tensor(pad_array_to_square(pixels)[0])[None], size)


@dataclass
class InputFolder:
    """A folder of input photos, understood once: its photos (`listing`), whether it is a split
    of a prepared dataset (`DATA/{split}/before`, its manifest two levels up), that split's
    manifest rows and stored landmarks, and where a composite's regions come from. Generation,
    its composite and the Python API read the folder through it.

    - path: the folder, as given.
    - split: (dataset root, split name), or None for a folder that is not a dataset split.
    - records: the split's manifest rows by image id (empty for another folder).
    - regions: where composite regions are found (`RegionLookup`, or any object with its
      `find_with_source`); set by `use_regions` for a composite.
    - output: the output folder `check_output` accepted, None before.
    """

    path: Path
    split: tuple[Path, str] | None = None
    records: dict[str, PairRecord] = field(default_factory=dict)
    regions: Any = None
    output: Path | None = None

    @classmethod
    def open(cls, path: Path) -> "InputFolder":
        folder = Path(path).resolve()
        root, split = folder.parent.parent, folder.parent.name
        if split not in SPLITS or not (root / "manifest.csv").is_file():
            return cls(Path(path))
        return cls(Path(path), (root, split), {r.id: r for r in read_manifest(root) if r.split == split})

    def inputs(self) -> dict[str, Path]:
        """What generation reads of the folder, by the option that names it: the folder and the
        dataset it is a split of."""
        return {"--input": self.path, **({"the dataset": self.split[0]} if self.split else {})}

    @cached_property
    def listing(self) -> Listing:
        """The folder's images, and the files it passed over (`scan_images`)."""
        return scan_images(self.path)

    def check_output(self, output_dir: Path, reads: dict[str, Path]) -> None:
        """Refuse an `output_dir` that overlaps the folder, its dataset or `reads` (the other
        files generation reads, `generation_reads`), in one line naming the option."""
        check_output_folder({**self.inputs(), **reads}, output_dir)
        self.output = Path(output_dir)

    def strengths(self, image_id: str, vocabulary: tuple[str, ...]) -> torch.Tensor:
        """Image `image_id`'s labelled procedure strengths (P,) over `vocabulary` (zeros unlabelled)."""
        record = self.records.get(image_id)
        return procedure_vector(record.strength_of() if record is not None else {}, vocabulary)

    def labelled(self, image_id: str) -> tuple[str, ...] | None:
        """The procedures the manifest labels image `image_id` with; None when it has no row."""
        record = self.records.get(image_id)
        return record.procedures if record is not None else None

    @cached_property
    def landmarks(self) -> dict[str, np.ndarray] | None:
        """The split's stored before landmarks (`svai.face.store`, in each image's pixels) by
        image id; None when it stores none."""
        if self.split is None:
            return None
        from svai.face.store import landmarks_path, read_landmarks

        if not landmarks_path(*self.split).is_file():
            return None
        stored = read_landmarks(*self.split)
        return {pair_id: before for pair_id, (before, _) in stored.rows.items() if before is not None}

    def use_regions(self, regions: Path | None) -> None:
        """Find composite regions in the split's own `regions` folder, then in `regions` (the
        `--regions` folder), then in each photo's landmarks when the face layer can run (else
        one warning saying why)."""
        own = self.split[0] / self.split[1] / REGIONS_DIR if self.split else None
        dataset = index_regions(own, "regions folder") if own is not None and own.is_dir() else None
        given = index_regions(regions, "--regions") if regions is not None else None
        self.regions = RegionLookup(self.path, dataset, given, regions_finder())


def photos_request(model: LoadedModel, photos: list[InputPhoto], settings: Generation, folder: InputFolder,
                   start: int = 0) -> Request:
    """The request of a batch of photos: `settings.request`, with each image's manifest labels
    (a model that reads procedures, a request that names none, a dataset split) and its
    reference (`start`: the index of the first photo among all inputs)."""
    request, family = settings.request, model.family
    if "procedures" in family.uses and request.procedures is None and folder.split is not None:
        request = replace(request, procedures=torch.stack([folder.strengths(p.file.stem, family.procedures)
                                                            for p in photos]))
    if settings.references:
        chosen = [reference_for(settings.references, start + i, p.file) for i, p in enumerate(photos)]
        size = model.config.data.image_size
        request = replace(request, reference=torch.cat([square_input(read_rgb(r), size) for r in chosen]))
    return request


def simulate_photos(model: LoadedModel, photos: list[InputPhoto], settings: Generation, folder: InputFolder,
                    report: GenerateReport | None = None) -> list[np.ndarray | None]:
    """The after image of each photo as `svai generate` makes it: the request with each
    image's labels and reference (`photos_request`), the model on its model view (pasted back
    into the photo), then the composite (regions from `folder.regions`). With a `report`,
    references continue from the photos it has written, composites count where each region
    came from, and a photo that does not fit in memory even alone is None and listed as
    skipped (without one, the memory error is raised)."""
    request = photos_request(model, photos, settings, folder, len(report.written) if report is not None else 0)
    known = None
    if model.family.reads_landmarks() and folder.landmarks is not None:
        known = [None if p.square is not None else folder.landmarks.get(p.file.stem) for p in photos]
    views = [(p.file, p.model_view()) for p in photos]
    predictions = _translate_each(model, views, request, report.skipped if report is not None else None, known)
    predictions = [None if prediction is None else photo.with_view(prediction)
                   for photo, prediction in zip(photos, predictions)]
    if settings.composite is None or folder.regions is None:
        return predictions
    wanted = chosen_procedures(settings.request.procedures, model.family.procedures)
    out: list[np.ndarray | None] = []
    for photo, prediction in zip(photos, predictions):
        if prediction is None:
            out.append(None)
            continue
        chosen = wanted or folder.labelled(photo.file.stem)
        region, source = folder.regions.find_with_source(photo.file, photo.pixels.shape[:2], chosen, photo.pixels,
                                                         photo.landmarks)
        if report is not None:
            report.composited[source] = report.composited.get(source, 0) + 1
        out.append(composite(photo.pixels, prediction, region, settings.composite)[0])
    return out


def generate_folder(
    model: LoadedModel,
    input_dir: Path,
    output_dir: Path,
    settings: Generation | None = None,
    progress: Callable[[int], None] | None = None,
    folder: InputFolder | None = None,
) -> GenerateReport:
    """Translate every image under `input_dir` into `output_dir`; unusable files are skipped.

    `folder` is `input_dir` opened (`InputFolder.open`) when the caller already has it, with
    its listing and its check of `output_dir`. Every file the listing passed over is reported
    as skipped, with the reason prepare gives it. A model that reads
    procedure strengths, given none in the request, takes each image's own labels from the
    dataset's manifest when `input_dir` is a split of a prepared dataset. Each output is no
    more readable than its input photo (`svai.io.Privacy`). No output may land in anything
    generation reads; the output folder is created.
    """
    settings = settings or Generation()
    folder = folder or InputFolder.open(input_dir)
    if folder.output != Path(output_dir):
        folder.check_output(output_dir, generation_reads(settings.references, settings.regions))
    listing = folder.listing
    if not listing.images:
        raise no_images(Path(input_dir), listing)
    if settings.composite is not None:
        folder.use_regions(settings.regions)
    check_writable(output_dir, privacy=Privacy.of(input_dir))
    batches = _Batches(model, folder, Path(output_dir), settings, progress)
    batches.report.skipped.extend((p.path, f"{p.reason}: {p.detail}") for p in listing.passed_over)
    for file in listing.images:
        batches.add(file)
    batches.flush()
    return batches.report


class _Batches:
    """`generate_folder`'s work: photos read one by one, simulated a batch at a time, written."""

    def __init__(self, model: LoadedModel, folder: InputFolder, output_dir: Path, settings: Generation,
                 progress: Callable[[int], None] | None) -> None:
        self.model, self.folder, self.output_dir, self.settings = model, folder, output_dir, settings
        self.progress = progress or (lambda count: None)
        self.report = GenerateReport()
        self.queue: list[InputPhoto] = []
        self.seen: dict[Path, Path] = {}
        self.finder = face_crop_finder(settings.face_crop)

    def add(self, file: Path) -> None:
        photo = self._read(file)
        if photo is None:
            self.progress(1)
            return
        self.queue.append(photo)
        if len(self.queue) >= self.settings.batch_size:
            self.flush()

    def _read(self, file: Path) -> InputPhoto | None:
        """The input photo of `file`, or None when it is skipped (the reason in the report)."""
        target = output_path(self.folder.path, self.output_dir, file)
        if target in self.seen:
            return self._skip(file, f"same output name as {self.seen[target].relative_to(self.folder.path)}")
        self.seen[target] = file
        try:
            # Bounded before decoding: the photo is padded to a square of its long side.
            image = read_rgb(file, max_pixels=MAX_SQUARE_PIXELS, square=True)
        except SvaiError as error:
            return self._skip(file, str(error).removeprefix(f"{file}: "))
        size = self.model.config.data.image_size
        photo, faces = input_photo(file, image, self.finder, size)
        if faces > 1:
            self.report.notes.append((file, f"{faces} faces found; the largest was simulated"))
        if photo is None:
            return self._skip(file, "no face found (the face layer looks for one in photos larger than "
                                    f"{FACE_CROP_FACTOR * size} px): crop it by hand, or use --no-face-crop")
        return photo

    def _skip(self, file: Path, reason: str) -> None:
        self.report.skipped.append((file, reason))

    def flush(self) -> None:
        # Photos of different sizes batch fine: each is padded and resized to the model size.
        if not self.queue:
            return
        predictions = simulate_photos(self.model, self.queue, self.settings, self.folder, self.report)
        for photo, prediction in zip(self.queue, predictions):
            if prediction is not None:
                self._write(photo.file, prediction)
        self.progress(len(self.queue))
        self.queue.clear()

    def _write(self, file: Path, prediction: np.ndarray) -> None:
        target = output_path(self.folder.path, self.output_dir, file)
        try:
            write_png(target, prediction, Privacy.of(file, self.folder.path))
        except OSError as error:
            if error.errno not in _NAME_ERRNOS:
                raise  # a full disk or a lost permission stops the run: every later file would fail too
            self.report.skipped.append((file, f"cannot write {target.name}: {os.strerror(error.errno)}"))
            return
        self.report.written.append(target)


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


__all__ = ["LoadedModel", "GenerateReport", "Generation", "InputFolder", "InputPhoto", "load_model", "generate_folder",
           "parse_procedures", "simulate_photos"]

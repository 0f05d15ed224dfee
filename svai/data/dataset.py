"""Training data: a prepared split as tensors, and a step-indexed, resumable batch order."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, TypeVar

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from svai.data.images import read_rgb
from svai.data.layout import PROCEDURES, PairRecord, read_manifest
from svai.data.layout import vocabulary as dataset_vocabulary
from svai.errors import SvaiError
from svai.image_ops import resize, to_signed

log = logging.getLogger(__name__)
T = TypeVar("T")


class BadFile(SvaiError):
    """A dataset file that is missing or cannot be decoded; the message names it."""


def procedure_vector(strengths: Mapping[str, float], vocabulary: tuple[str, ...] = PROCEDURES) -> torch.Tensor:
    """{procedure: strength in [0, 1]} -> (P,) float over `vocabulary` (0 where not operated)."""
    return torch.tensor([float(strengths.get(p, 0.0)) for p in vocabulary])


class PairedImages(Dataset):
    """One split of a prepared dataset (see `svai.data.layout`).

    Items are keyed by `(i, j)`: pair `i` gives `before`, `after`, `mask`, `procedures`;
    `j >= 0` adds `after_unpaired`, the "after" image of pair `j` (for unpaired families).
    Tensors: before/after (3, S, S) in [-1, 1], mask (1, S, S) in [0, 1], procedures (P,)
    the strength in [0, 1] of each procedure of `vocabulary` (the dataset's own by default).
    """

    def __init__(self, root: Path, split: str, image_size: int, cache: bool = True,
                 vocabulary: tuple[str, ...] | None = None, on_bad_file: str = "skip") -> None:
        self.root = Path(root)
        # "skip": a pair whose file cannot be read is replaced by the next readable pair, with
        # one warning naming the file; "error": the first such file stops training.
        self.on_bad_file = on_bad_file
        self._bad: set[int] = set()
        self.split = split
        self.image_size = image_size
        manifest = read_manifest(self.root)
        self.vocabulary = vocabulary or dataset_vocabulary(manifest)
        outside = sorted({p for r in manifest for p in r.procedures} - set(self.vocabulary))
        if outside:
            raise SvaiError(f"{self.root}: procedure {outside[0]!r} is not among the run's procedures "
                            f"({', '.join(self.vocabulary)}); train a new run on this dataset")
        records = [r for r in manifest if r.split == split]
        if not records:
            raise SvaiError(f"{self.root}: the {split} split has no pairs (see manifest.csv)")
        self.records: list[PairRecord] = records
        self._cache: dict[tuple[str, str], torch.Tensor] | None = {} if cache else None
        self._landmarks = _split_landmarks(self.root, split)
        self._sizes: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, kind: str, record: PairRecord) -> torch.Tensor | None:
        key = (kind, record.id)
        if self._cache is not None and key in self._cache:
            return self._cache[key]
        path = self.root / self.split / kind / f"{record.id}.png"
        if not path.is_file():
            if kind == "masks":
                tensor = None
            else:
                raise BadFile(f"{path} is missing: the dataset at {self.root} is incomplete; prepare it again")
        else:
            try:
                # The decoder prepare uses: 16-bit scaled (never clipped), EXIF, alpha, bounds.
                array = read_rgb(path)
            except SvaiError as error:
                raise BadFile(f"{path} cannot be read ({str(error).removeprefix(f'{path}: ')}): "
                              "replace it or prepare the dataset again") from None
            # A file replaced by one of another shape is cut to its centre square, as prepare
            # frames photos, rather than squashed.
            height, width = array.shape[:2]
            side = min(height, width)
            top, left = (height - side) // 2, (width - side) // 2
            array = array[top:top + side, left:left + side]
            tensor = torch.from_numpy(np.ascontiguousarray(array))
            tensor = tensor[None, ..., 0] if kind == "masks" else tensor.permute(2, 0, 1)
            if tuple(tensor.shape[-2:]) != (self.image_size, self.image_size):
                resized = resize(tensor[None].float(), self.image_size)[0]
                tensor = resized.round().clamp(0, 255).to(torch.uint8)
        if self._cache is not None:
            self._cache[key] = tensor
        return tensor

    # -- landmarks ------------------------------------------------------------------------
    def _landmark_rows(self, record: PairRecord) -> tuple[np.ndarray, np.ndarray]:
        """(before, after) landmarks of a pair at `image_size`, (478, 2) float32; NaN where
        none were found. Stored landmarks are in the PNG's pixels: scaled by size / PNG size."""
        before, after = self._landmarks.rows.get(record.id, (None, None))
        scale = self.image_size / self._png_size(record)
        rows = []
        for points in (before, after):
            rows.append(np.full((478, 2), np.nan, np.float32) if points is None
                        else (np.asarray(points, np.float64) * scale).astype(np.float32))
        return rows[0], rows[1]

    def _png_size(self, record: PairRecord) -> int:
        if record.id not in self._sizes:
            path = self.root / self.split / "before" / f"{record.id}.png"
            try:
                with Image.open(path) as image:
                    self._sizes[record.id] = image.size[0]
            except (OSError, ValueError):
                self._sizes[record.id] = self.image_size
        return self._sizes[record.id]

    def landmark_table(self) -> LandmarkTable | None:
        """Every pair's landmarks where both photos have a face, or None when the split has no
        landmarks file (`svai prepare` stores one when the face layer is installed)."""
        if self._landmarks is None:
            return None
        ids, before, after, procedures = [], [], [], []
        for record in self.records:
            b, a = self._landmark_rows(record)
            if np.isfinite(b).all() and np.isfinite(a).all():
                ids.append(record.id)
                before.append(b.astype(np.float64))
                after.append(a.astype(np.float64))
                procedures.append(procedure_vector(record.strength_of(), self.vocabulary).numpy())
        count = len(self.vocabulary)
        return LandmarkTable(ids, np.asarray(before).reshape(-1, 478, 2), np.asarray(after).reshape(-1, 478, 2),
                             np.asarray(procedures, np.float64).reshape(-1, count))

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, torch.Tensor | str]:
        i, j = key if isinstance(key, tuple) else (key, -1)
        # A pair that cannot be read is replaced by the next readable one, so batches keep
        # their size and the data order stays a function of the step (exact resume).
        return self._readable(i, lambda index: self._item(index, j))

    def _readable(self, i: int, read: Callable[[int], T]) -> T:
        """`read(index)` for pair `i`, or for the next pair that can be read (skip mode)."""
        for offset in range(len(self.records)):
            index = (i + offset) % len(self.records)
            if index in self._bad:
                continue
            try:
                return read(index)
            except BadFile as error:
                if self.on_bad_file == "error":
                    raise
                self._bad.add(index)
                log.warning("skipping pair %s: %s", self.records[index].id, error)
        raise SvaiError(f"{self.root}: no pair of the {self.split} split can be read; prepare the dataset again")

    def _item(self, i: int, j: int) -> dict[str, torch.Tensor | str]:
        record = self.records[i]
        size = self.image_size
        item: dict[str, torch.Tensor | str] = {
            "id": record.id,
            "before": to_signed(self._load("before", record)),
            "after": to_signed(self._load("after", record)),
            "procedures": procedure_vector(record.strength_of(), self.vocabulary),
        }
        mask = self._load("masks", record)
        item["mask"] = mask.float().div(255.0) if mask is not None else torch.zeros(1, size, size)
        if self._landmarks is not None:
            item["landmarks"] = torch.from_numpy(self._landmark_rows(record)[0])
        if j >= 0:
            item["after_unpaired"] = self._readable(j, lambda index: to_signed(self._load("after", self.records[index])))
        return item


@dataclass(eq=False)
class StepBatches:
    """Batch indices as a pure function of the training step, so a resumed run sees the same data.

    The data order is an endless stream of epochs, each a seeded permutation of the
    dataset. Step `s` takes the global batch at positions `[s*B*W, (s+1)*B*W)` and process
    `rank` takes its slice of `B`. Unpaired families get a second, independent stream for
    their "after" images, as an unaligned dataset draws them.
    """

    size: int
    batch_size: int
    start_step: int
    total_steps: int
    seed: int
    unpaired: bool = False
    rank: int = 0
    world_size: int = 1
    _permutations: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict, init=False, repr=False)

    def _permutation(self, stream: int, epoch: int) -> torch.Tensor:
        key = (stream, epoch)
        if key not in self._permutations:
            if len(self._permutations) > 8:
                self._permutations.clear()
            generator = torch.Generator().manual_seed(hash_seed(self.seed, stream, epoch))
            self._permutations[key] = torch.randperm(self.size, generator=generator)
        return self._permutations[key]

    def _index(self, stream: int, position: int) -> int:
        epoch, offset = divmod(position, self.size)
        return int(self._permutation(stream, epoch)[offset])

    def batch(self, step: int) -> list[tuple[int, int]]:
        first = (step * self.world_size + self.rank) * self.batch_size
        positions = range(first, first + self.batch_size)
        return [(self._index(0, p), self._index(1, p) if self.unpaired else -1) for p in positions]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start_step, self.total_steps):
            yield self.batch(step)

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step)


def hash_seed(*parts: int) -> int:
    """Mix integers into one 63-bit seed (splitmix64), so nearby seeds give unrelated streams."""
    state = 0x9E3779B97F4A7C15
    for part in parts:
        state = (state ^ (part & 0xFFFFFFFFFFFFFFFF)) & 0xFFFFFFFFFFFFFFFF
        state = (state + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        state = z ^ (z >> 31)
    return state & 0x7FFFFFFFFFFFFFFF


def _split_landmarks(root: Path, split: str):  # type: ignore[no-untyped-def]
    """The split's stored landmarks (`svai.face.store`), or None when it has none."""
    from svai.face.store import landmarks_path, read_landmarks

    if not landmarks_path(root, split).is_file():
        return None
    found = read_landmarks(root, split)
    return found if found.rows else None


@dataclass
class LandmarkTable:
    """The stored landmarks of every pair of a split that has them on both photos, at the
    dataset's image size: ids (N,), before and after (N, 478, 2) float64 pixels (continuous
    coordinates), procedures (N, P) strengths over the split's vocabulary."""

    ids: list[str]
    before: np.ndarray
    after: np.ndarray
    procedures: np.ndarray


def collate(items: list[dict[str, torch.Tensor | str]]) -> dict[str, torch.Tensor | list[str]]:
    batch: dict[str, torch.Tensor | list[str]] = {"id": [str(item["id"]) for item in items]}
    for key in items[0]:
        if key != "id":
            batch[key] = torch.stack([item[key] for item in items])  # type: ignore[misc]
    return batch

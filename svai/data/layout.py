"""The prepared dataset layout shared by synthetic and real data.

```
OUT/{train,test}/{before,after}/<id>.png     one pair per <id>
OUT/{train,test}/masks/<id>.png              optional: where the procedures changed the face
OUT/{train,test}/regions/<procedure>/<id>.png optional: where that procedure can change the face
OUT/manifest.csv                             one row per pair (MANIFEST_COLUMNS)
OUT/prepare.json                             settings, counts, svai version
```

Masks and regions are 8-bit grey PNGs of the pair's size, 255 inside and 0 outside. A mask
is derived from the before and the after image, so it knows the answer: evaluation measures
inside and outside of it (training may weight losses by it), and generation never reads it.
A region is drawn from the before photo alone (the anatomy a procedure works on: eyes, nose,
lower face), so it is known before surgery and may steer a composite (`svai generate
--composite`). A pair may have a region for any procedure, whether or not it had that one;
synthetic data writes one for every procedure of PROCEDURES.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from svai import __version__
from svai.errors import SvaiError
from svai.io import OwnFiles, Privacy, png_bytes, write_atomic

# The default procedure vocabulary. A dataset whose labels name more procedures (through
# `--labels`, e.g. lips or facelift) extends it: see `vocabulary`.
PROCEDURES: tuple[str, ...] = ("eyes", "nose", "jaw")
SPLITS: tuple[str, ...] = ("train", "test")
MANIFEST_COLUMNS: tuple[str, ...] = (
    "id", "split", "subject", "procedures",
    "source_before", "source_after",
    "sha256_before", "sha256_after", "sha256_mask",
)
REGIONS_DIR = "regions"
PROCEDURE_SEPARATOR = "+"
STRENGTH_SEPARATOR = ":"
_PROCEDURE_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
_PAIR_ID = re.compile(r"^\w[\w-]*$")


def check_procedure_name(name: str) -> str:
    """A procedure name: lower-case letters, digits, '-' and '_', starting with a letter."""
    if not _PROCEDURE_NAME.match(name):
        raise SvaiError(f"procedure name {name!r}: use lower-case letters, digits, '-' or '_' (e.g. eyes, lips)")
    return name


def order_procedures(names: Iterable[str]) -> tuple[str, ...]:
    """Distinct names in the vocabulary's order: the defaults first, then the others sorted."""
    unique = set(names)
    return tuple(p for p in PROCEDURES if p in unique) + tuple(sorted(unique - set(PROCEDURES)))


def vocabulary(records: Iterable["PairRecord"]) -> tuple[str, ...]:
    """The procedures a dataset can condition on: the defaults plus every labelled one."""
    return order_procedures([*PROCEDURES, *(p for r in records for p in r.procedures)])


def _strength_text(value: float) -> str:
    return f"{value:.4f}".rstrip("0").rstrip(".")


def format_procedures(procedures: Iterable[str], strengths: Iterable[float] = ()) -> str:
    """("eyes", "jaw") -> "eyes+jaw"; with strengths (0.5, 1) -> "eyes:0.5+jaw:1"; () -> ""."""
    names = tuple(procedures)
    values = dict(zip(names, strengths))
    ordered = order_procedures(names)
    if not values:
        return PROCEDURE_SEPARATOR.join(ordered)
    return PROCEDURE_SEPARATOR.join(f"{p}{STRENGTH_SEPARATOR}{_strength_text(values[p])}" for p in ordered)


def parse_strengths(text: str, known: tuple[str, ...] | None = None) -> dict[str, float]:
    """"nose:0.62+jaw" -> {"nose": 0.62, "jaw": 1.0}: each procedure with its strength in
    [0, 1], 1 when none is written. With `known`, another name is an error listing them."""
    strengths: dict[str, float] = {}
    for part in (p.strip() for p in text.split(PROCEDURE_SEPARATOR)):
        if not part:
            continue
        name, sep, raw = (x.strip() for x in part.partition(STRENGTH_SEPARATOR))
        if known is not None and name not in known:
            raise SvaiError(f"unknown procedure {name!r}: use {', '.join(known)}")
        check_procedure_name(name)
        try:
            value = float(raw) if sep else 1.0
        except ValueError:
            raise SvaiError(f"procedure {name!r}: strength {raw!r} is not a number") from None
        if not 0.0 <= value <= 1.0:
            raise SvaiError(f"procedure {name!r}: strength must be in [0, 1]; got {raw}")
        strengths[name] = value
    return strengths


def region_path(root: Path, split: str, procedure: str, pair_id: str) -> Path:
    """Where a pair's region of one procedure lives: `root/split/regions/procedure/id.png`."""
    return Path(root) / split / REGIONS_DIR / procedure / f"{pair_id}.png"


@dataclass
class PairRecord:
    """One row of manifest.csv."""

    id: str
    split: str
    subject: str
    procedures: tuple[str, ...] = ()
    source_before: str = ""
    source_after: str = ""
    sha256_before: str = ""
    sha256_after: str = ""
    sha256_mask: str = ""
    # One strength in [0, 1] per procedure, same order; empty = each at full strength (real
    # photos). Written into the procedures column as "nose:0.62+jaw:0.3".
    strengths: tuple[float, ...] = ()

    def row(self) -> dict[str, str]:
        values = {name: getattr(self, name) for name in MANIFEST_COLUMNS}
        values["procedures"] = format_procedures(self.procedures, self.strengths)
        return values

    def strength_of(self) -> dict[str, float]:
        """Procedure -> strength (1 for each when the manifest gives none)."""
        return dict(zip(self.procedures, self.strengths or (1.0,) * len(self.procedures)))


@dataclass
class DatasetWriter:
    """Writes pairs into the prepared layout; `close()` writes manifest.csv and prepare.json.

    `privacy`: the mode every file gets (that of the photos it comes from; `svai.io.Privacy`).
    `own`: the dataset's record of svai's own files, which every write is added to (saved
    every few seconds and at `close()`); None when the caller records them itself.
    """

    root: Path
    records: list[PairRecord] = field(default_factory=list)
    privacy: Privacy | None = None
    own: OwnFiles | None = None

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self._saved = time.monotonic()

    def _written(self, *paths: Path, last: bool = False) -> None:
        if self.own is None:
            return
        self.own.note_with_folders(*paths)
        if last or time.monotonic() - self._saved > 2.0:
            self.own.save()
            self._saved = time.monotonic()

    def add(
        self,
        record: PairRecord,
        before: np.ndarray,
        after: np.ndarray,
        mask: np.ndarray | None = None,
        regions: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Write one pair. before/after: (H, W, 3) uint8; mask: (H, W) uint8 (255 = changed);
        regions: procedure -> (H, W) uint8 (255 = where that procedure can change the face),
        written to `regions/<procedure>/<id>.png`."""
        if record.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}; got {record.split!r}")
        folder = self.root / record.split
        written = []
        for procedure, region in (regions or {}).items():
            check_procedure_name(procedure)
            if region.shape != before.shape[:2] or region.dtype != np.uint8:
                raise ValueError(f"region {procedure!r} of {record.id}: expected {before.shape[:2]} uint8; "
                                 f"got {region.shape} {region.dtype}")
            written.append(region_path(self.root, record.split, procedure, record.id))
            write_atomic(written[-1], png_bytes(region), self.privacy)
        for kind, image in (("before", before), ("after", after), ("masks", mask)):
            if image is None:
                continue
            data = png_bytes(image)
            written.append(folder / kind / f"{record.id}.png")
            write_atomic(written[-1], data, self.privacy)
            digest = hashlib.sha256(data).hexdigest()
            setattr(record, {"before": "sha256_before", "after": "sha256_after",
                             "masks": "sha256_mask"}[kind], digest)
        self.records.append(record)
        self._written(*written)

    def close(self, settings: dict, extra: dict | None = None) -> dict:
        """Write manifest.csv (sorted by split, id) and prepare.json; return the summary."""
        records = sorted(self.records, key=lambda r: (r.split, r.id))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for record in records:
            writer.writerow(record.row())
        write_atomic(self.root / "manifest.csv", buffer.getvalue().encode(), self.privacy)
        counts = {split: sum(r.split == split for r in records) for split in SPLITS}
        subjects = {split: len({r.subject for r in records if r.split == split}) for split in SPLITS}
        summary = {
            "svai_version": __version__,
            "settings": settings,
            "pairs": counts,
            "subjects": subjects,
            "procedures": {p: sum(p in r.procedures for r in records) for p in vocabulary(records)},
            **(extra or {}),
        }
        write_atomic(self.root / "prepare.json", (json.dumps(summary, indent=2) + "\n").encode(), self.privacy)
        self._written(self.root / "manifest.csv", self.root / "prepare.json", last=True)
        return summary


def read_manifest(root: Path) -> list[PairRecord]:
    """Read OUT/manifest.csv; a missing or malformed manifest is an error naming the file."""
    path = Path(root) / "manifest.csv"
    if not path.is_file():
        raise SvaiError(
            f"{path} not found: {root} is not a prepared dataset "
            "(make one with `svai prepare synthetic OUT` or `svai prepare SOURCE OUT`)"
        )
    try:
        # utf-8-sig: a byte-order mark (Excel's "CSV UTF-8") is not part of the first column's name.
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise SvaiError(f"{path}: not UTF-8 text (byte {error.start} is {error.object[error.start]:#04x}); "
                        "save it as UTF-8 or prepare the dataset again") from None
    try:
        return _records(path, text)
    except csv.Error as error:  # a field over the csv module's size limit, a stray quote
        raise SvaiError(f"{path}: not a readable CSV ({error}); prepare the dataset again") from None


def _records(path: Path, text: str) -> list[PairRecord]:
    with io.StringIO(text, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in ("id", "split", "subject", "procedures") if c not in (reader.fieldnames or [])]
        if missing:
            raise SvaiError(f"{path}: missing column {missing[0]!r}")
        records = []
        for line, row in enumerate(reader, start=2):
            values = {name: row.get(name, "") or "" for name in MANIFEST_COLUMNS}
            if not _PAIR_ID.match(values["id"]):
                # Ids become file names under the dataset: nothing that could leave it.
                raise SvaiError(f"{path} line {line}: pair id {values['id']!r} is not a plain name "
                                "(letters, digits, '-', '_'); prepare the dataset again")
            try:
                strengths = parse_strengths(values["procedures"])
            except SvaiError as error:
                raise SvaiError(f"{path} line {line}: {error}") from None
            values["procedures"] = tuple(strengths)
            explicit = STRENGTH_SEPARATOR in row.get("procedures", "")
            records.append(PairRecord(**values, strengths=tuple(strengths.values()) if explicit else ()))
    return records


def split_subjects(subjects: list[str] | set[str], test_fraction: float, seed: int) -> set[str]:
    """Choose the test subjects: a deterministic function of the subject set, fraction and seed.

    Splitting by subject (never by photo) keeps every photo of one person on one side, so
    a test score never rewards memorising a face seen in training. At least one subject goes
    to test when `test_fraction > 0` and there are two or more subjects.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise SvaiError(f"--test-fraction must be in [0, 1); got {test_fraction}")
    ordered = sorted(set(subjects))
    if not ordered or test_fraction == 0.0:
        return set()
    # Rank subjects by a seeded hash so adding a subject never moves the others.
    def rank(subject: str) -> str:
        return hashlib.sha256(f"{seed}:{subject}".encode()).hexdigest()

    count = round(len(ordered) * test_fraction)
    count = min(max(count, 1 if len(ordered) > 1 else 0), len(ordered) - 1)
    return set(sorted(ordered, key=rank)[:count])

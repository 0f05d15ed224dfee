"""The prepared dataset layout shared by synthetic and real data.

```
OUT/{train,test}/{before,after}/<id>.png     one pair per <id>
OUT/{train,test}/masks/<id>.png              optional: where the procedures changed the face
OUT/manifest.csv                             one row per pair (MANIFEST_COLUMNS)
OUT/prepare.json                             settings, counts, svai version
```
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from svai import __version__
from svai.errors import SvaiError
from svai.io import png_bytes, write_atomic

PROCEDURES: tuple[str, ...] = ("eyes", "nose", "jaw")
SPLITS: tuple[str, ...] = ("train", "test")
MANIFEST_COLUMNS: tuple[str, ...] = (
    "id", "split", "subject", "procedures",
    "source_before", "source_after",
    "sha256_before", "sha256_after", "sha256_mask",
)
PROCEDURE_SEPARATOR = "+"


def format_procedures(procedures: tuple[str, ...] | list[str]) -> str:
    """("eyes", "jaw") -> "eyes+jaw"; the empty tuple -> ""."""
    return PROCEDURE_SEPARATOR.join(p for p in PROCEDURES if p in procedures)


def parse_procedures(text: str) -> tuple[str, ...]:
    """"eyes+jaw" -> ("eyes", "jaw"); unknown names are an error naming them."""
    names = tuple(p.strip() for p in text.split(PROCEDURE_SEPARATOR) if p.strip())
    unknown = [n for n in names if n not in PROCEDURES]
    if unknown:
        raise SvaiError(f"unknown procedure {unknown[0]!r}: use {', '.join(PROCEDURES)}")
    return names


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

    def row(self) -> dict[str, str]:
        values = {name: getattr(self, name) for name in MANIFEST_COLUMNS}
        values["procedures"] = format_procedures(self.procedures)
        return values


@dataclass
class DatasetWriter:
    """Writes pairs into the prepared layout; `close()` writes manifest.csv and prepare.json."""

    root: Path
    records: list[PairRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    def add(
        self,
        record: PairRecord,
        before: np.ndarray,
        after: np.ndarray,
        mask: np.ndarray | None = None,
    ) -> None:
        """Write one pair. before/after: (H, W, 3) uint8; mask: (H, W) uint8 (255 = changed)."""
        if record.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}; got {record.split!r}")
        folder = self.root / record.split
        for kind, image in (("before", before), ("after", after), ("masks", mask)):
            if image is None:
                continue
            data = png_bytes(image)
            write_atomic(folder / kind / f"{record.id}.png", data)
            digest = hashlib.sha256(data).hexdigest()
            setattr(record, {"before": "sha256_before", "after": "sha256_after",
                             "masks": "sha256_mask"}[kind], digest)
        self.records.append(record)

    def close(self, settings: dict, extra: dict | None = None) -> dict:
        """Write manifest.csv (sorted by split, id) and prepare.json; return the summary."""
        records = sorted(self.records, key=lambda r: (r.split, r.id))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for record in records:
            writer.writerow(record.row())
        write_atomic(self.root / "manifest.csv", buffer.getvalue().encode())
        counts = {split: sum(r.split == split for r in records) for split in SPLITS}
        subjects = {split: len({r.subject for r in records if r.split == split}) for split in SPLITS}
        summary = {
            "svai_version": __version__,
            "settings": settings,
            "pairs": counts,
            "subjects": subjects,
            "procedures": {p: sum(p in r.procedures for r in records) for p in PROCEDURES},
            **(extra or {}),
        }
        write_atomic(self.root / "prepare.json", (json.dumps(summary, indent=2) + "\n").encode())
        return summary


def read_manifest(root: Path) -> list[PairRecord]:
    """Read OUT/manifest.csv; a missing or malformed manifest is an error naming the file."""
    path = Path(root) / "manifest.csv"
    if not path.is_file():
        raise SvaiError(
            f"{path} not found: {root} is not a prepared dataset "
            "(make one with `svai prepare synthetic OUT` or `svai prepare SOURCE OUT`)"
        )
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in ("id", "split", "subject", "procedures") if c not in (reader.fieldnames or [])]
        if missing:
            raise SvaiError(f"{path}: missing column {missing[0]!r}")
        records = []
        for row in reader:
            values = {name: row.get(name, "") or "" for name in MANIFEST_COLUMNS}
            values["procedures"] = parse_procedures(values["procedures"])
            records.append(PairRecord(**values))
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

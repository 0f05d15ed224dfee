"""The landmarks of a prepared dataset: one file per split, written by `svai prepare`.

`DATA/{split}/landmarks.npz` holds, row for row:
    ids      (N,) str         pair ids, sorted
    before   (N, 478, 2) f32  the before photo's landmarks in its pixels (x, y); NaN: no face
    after    (N, 478, 2) f32  the after photo's, likewise
    sha256   (N, 2) str       the before and after PNGs' digests the rows were computed from

Models and metrics read them (`read_landmarks`) instead of running the networks again. A
re-run of prepare computes rows only for photos whose digest changed. For real photos the
same pass draws each pair's procedure regions from the before landmarks into
`DATA/{split}/regions/<procedure>/<id>.png`, unless the user gave region files for it.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from PIL import Image

from svai.data.images import read_rgb
from svai.data.layout import PROCEDURES, SPLITS, PairRecord, region_path
from svai.face import mesh
from svai.io import png_bytes, write_atomic

LANDMARKS_FILE = "landmarks.npz"
_MISSING = np.full((mesh.POINTS, 2), np.nan, dtype=np.float32)


def landmarks_path(root: Path, split: str) -> Path:
    return Path(root) / split / LANDMARKS_FILE


@dataclass
class SplitLandmarks:
    """One split's landmarks by pair id: id -> (before or None, after or None)."""

    rows: dict[str, tuple[np.ndarray | None, np.ndarray | None]] = field(default_factory=dict)
    digests: dict[str, tuple[str, str]] = field(default_factory=dict)

    def before(self, pair_id: str) -> np.ndarray | None:
        return self.rows.get(pair_id, (None, None))[0]

    def after(self, pair_id: str) -> np.ndarray | None:
        return self.rows.get(pair_id, (None, None))[1]

    def found(self) -> int:
        """Pairs with landmarks on both photos."""
        return sum(b is not None and a is not None for b, a in self.rows.values())


def _or_none(points: np.ndarray) -> np.ndarray | None:
    return None if np.isnan(points).any() else points.astype(np.float64)


def read_landmarks(root: Path, split: str) -> SplitLandmarks:
    """The split's landmarks; an absent or unreadable file gives an empty `SplitLandmarks`."""
    path = landmarks_path(root, split)
    try:
        with np.load(path, allow_pickle=False) as data:
            ids, before, after, sha = (data[k] for k in ("ids", "before", "after", "sha256"))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        return SplitLandmarks()
    result = SplitLandmarks()
    for index, pair_id in enumerate(ids.tolist()):
        result.rows[pair_id] = (_or_none(before[index]), _or_none(after[index]))
        result.digests[pair_id] = (str(sha[index][0]), str(sha[index][1]))
    return result


def write_landmarks(root: Path, split: str, landmarks: SplitLandmarks, privacy=None) -> None:  # type: ignore[no-untyped-def]
    """Write a split's file atomically (rows sorted by id)."""
    ids = sorted(landmarks.rows)

    def stack(side: int) -> np.ndarray:
        rows = [landmarks.rows[i][side] for i in ids]
        return np.stack([_MISSING if r is None else np.asarray(r, np.float32) for r in rows]) if rows \
            else np.zeros((0, mesh.POINTS, 2), np.float32)

    buffer = io.BytesIO()
    np.savez(buffer, ids=np.array(ids, dtype=str), before=stack(0), after=stack(1),
             sha256=np.array([landmarks.digests.get(i, ("", "")) for i in ids], dtype=str).reshape(-1, 2))
    write_atomic(landmarks_path(root, split), buffer.getvalue(), privacy)


@dataclass
class LandmarkReport:
    """What a landmarks pass found: pairs with both photos' landmarks, and the ids without."""

    found: int = 0
    missing: list[str] = field(default_factory=list)
    regions: int = 0
    written: list[Path] = field(default_factory=list)  # every file the pass wrote

    def summary(self) -> dict:
        return {"found": self.found, "missing": sorted(self.missing), "regions_drawn": self.regions}


def landmark_dataset(
    root: Path,
    records: Iterable[PairRecord],
    finder,  # type: ignore[no-untyped-def]
    *,
    user_regions: dict[str, list[str]] | None = None,
    progress: Callable[[int], None] | None = None,
    privacy=None,  # type: ignore[no-untyped-def]
) -> LandmarkReport:
    """Compute (or reuse) every pair's landmarks and write each split's file.

    finder: a `svai.face.FaceFinder`. With `user_regions` (None: no regions), each pair's
    procedure regions (the default procedures and those of its labels that the mesh knows)
    are drawn from its before landmarks, except the procedures `user_regions[id]` lists (the
    user gave those).
    Files are written with `privacy` (`svai.io.Privacy`: landmarks are as personal as the
    photos they come from) and listed in the report's `written`.
    """
    root = Path(root)
    records = sorted(records, key=lambda r: (r.split, r.id))
    report = LandmarkReport()
    done = 0
    for split in SPLITS:
        old = read_landmarks(root, split)
        new = SplitLandmarks()
        for record in (r for r in records if r.split == split):
            digests = (record.sha256_before, record.sha256_after)
            if all(digests) and old.digests.get(record.id) == digests:
                new.rows[record.id] = old.rows[record.id]
            else:
                new.rows[record.id] = tuple(  # type: ignore[assignment]
                    _first_face(finder, root / split / kind / f"{record.id}.png") for kind in ("before", "after"))
            new.digests[record.id] = digests
            before, after = new.rows[record.id]
            if before is None or after is None:
                report.missing.append(record.id)
            else:
                report.found += 1
            if user_regions is not None and before is not None:
                drawn = _draw_regions(root, record, before, user_regions.get(record.id, ()), privacy)
                report.regions += len(drawn)
                report.written += drawn
            done += 1
            if progress is not None:
                progress(done)
        if new.rows or landmarks_path(root, split).exists():
            write_landmarks(root, split, new, privacy)
            report.written.append(landmarks_path(root, split))
    return report


def _first_face(finder, path: Path) -> np.ndarray | None:  # type: ignore[no-untyped-def]
    faces = finder.find(read_rgb(path))
    return faces[0].landmarks if faces else None


def _draw_regions(root: Path, record: PairRecord, before: np.ndarray, given: Iterable[str],
                  privacy=None) -> list[Path]:  # type: ignore[no-untyped-def]
    """Write a pair's landmark regions but those in `given`; the files written."""
    with Image.open(root / record.split / "before" / f"{record.id}.png") as image:
        width, height = image.size
    wanted = [p for p in dict.fromkeys((*PROCEDURES, *record.procedures)) if p in mesh.REGION_SHAPES and p not in given]
    paths = [region_path(root, record.split, procedure, record.id) for procedure in wanted]
    for procedure, path in zip(wanted, paths):
        write_atomic(path, png_bytes(mesh.region_mask(before, procedure, width, height)), privacy)
    return paths

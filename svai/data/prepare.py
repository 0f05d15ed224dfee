"""`svai prepare SOURCE OUT`: turn a photo collection into the prepared layout, incrementally.

The run, in order: check OUT, find pairs (`svai.data.pairing`), split subjects, decide per
pair whether its outputs from an earlier run still hold (same source files by size and
mtime, same image settings), process the rest in worker processes, then write
manifest.csv, prepare.json, skipped.csv and the state file `prepare-state.json`.

Nothing under SOURCE is ever opened for writing. OUT holds only what this module writes;
the state file is written last, so a run that stops half-way is simply redone next time.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import multiprocessing
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from svai.data.align import CROPS, Box, carry_box, face_box, register_pair, render, square_box
from svai.data.images import MAX_PIXELS, ImageProblem, draft_size, load_rgb_image, probe
from svai.data.layout import SPLITS, DatasetWriter, PairRecord, split_subjects
from svai.io import write_atomic
from svai.data.pairing import ORDERS, PAIRING_MODES, Pair, Skip, find_pairs, load_label_aliases
from svai.errors import SvaiError

log = logging.getLogger(__name__)

STATE_FILE = "prepare-state.json"
SKIPPED_FILE = "skipped.csv"
STATE_VERSION = 1
_OWN_FILES = ("manifest.csv", "prepare.json", SKIPPED_FILE, STATE_FILE)
_KINDS = ("before", "after", "masks")

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class PrepareOptions:
    """Settings of `svai prepare` for real photos (see docs/data.md)."""

    size: int = 512
    pairing: str = "auto"
    pairs_csv: Path | None = None
    order: str = "before-after"
    labels: Path | None = None
    crop: str = "center"
    align: bool = False
    workers: int | None = None
    seed: int = 0
    test_fraction: float = 0.1
    force: bool = False
    max_pixels: int = MAX_PIXELS

    def image_settings(self) -> dict:
        """The settings that change output pixels: a change reprocesses every pair.

        `order` is not among them: it only concerns composites, whose fingerprint holds it.
        """
        return {"size": self.size, "crop": self.crop, "align": self.align}


@dataclass
class PrepareReport:
    """What a run did. `written` pairs were (re)processed, `kept` reused from an earlier run."""

    out: Path
    written: int
    kept: int
    removed: int
    pairs: dict[str, int]
    skipped: list[Skip]
    summary: dict = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.pairs.values())

    def skipped_by_reason(self) -> dict[str, int]:
        return dict(sorted(Counter(s.reason for s in self.skipped).items()))


@dataclass(frozen=True)
class _Job:
    pair: Pair
    split: str
    out: Path
    root: Path
    size: int
    crop: str
    align: bool
    max_pixels: int


@dataclass
class _Outcome:
    id: str
    record: PairRecord | None = None
    skips: list[Skip] = field(default_factory=list)
    face_found: bool | None = None
    alignment: dict | None = None


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


# ------------------------------------------------------------------------------- one pair (worker)

def _display(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _decode_target(width: float, height: float, size: int, crop: str) -> int:
    """Short side (in source pixels) the decoder must keep so the output is not upsampled."""
    if crop == "none":
        return max(1, int(np.ceil(size * min(width, height) / max(width, height))))
    if crop == "face":
        return 2 * size  # the face box is at least half the short side
    return size


def _load_side(path: Path, halves: int, job: _Job) -> Image.Image:
    """Check a file's header, then decode it at the smallest scale that still serves `size`."""
    info = probe(path, job.max_pixels)
    width = info.width / halves
    if min(width, info.height) < job.size / 4:
        raise ImageProblem(path, "too small",
                           f"{int(width)}x{info.height} is under a quarter of --size {job.size}")
    target = _decode_target(width, info.height, job.size, job.crop)
    want = draft_size(int(width), info.height, target)
    return load_rgb_image(path, (want[0] * halves, want[1]), job.max_pixels)


def _frame_pair(job: _Job) -> tuple[np.ndarray, np.ndarray, bool | None]:
    """Decode both photos and cut the same square out of each: (before, after, face_found)."""
    pair = job.pair
    if pair.composite:
        image = _load_side(pair.before, 2, job)
        half = image.width / 2
        left: Box = (0.0, 0.0, half, float(image.height))
        right: Box = (half, 0.0, float(image.width), float(image.height))
        before_image = after_image = image
        before_region, after_region = (right, left) if pair.swap else (left, right)
    else:
        before_image = _load_side(pair.before, 1, job)
        after_image = _load_side(pair.after, 1, job)
        before_region = (0.0, 0.0, float(before_image.width), float(before_image.height))
        after_region = (0.0, 0.0, float(after_image.width), float(after_image.height))
    found: bool | None = None
    box = None
    if job.crop == "face":
        box = face_box(before_image, before_region)
        found = box is not None
    if box is None:
        box = square_box(before_region, "none" if job.crop == "none" else "center")
    after_box = carry_box(box, before_region, after_region)
    return render(before_image, box, job.size), render(after_image, after_box, job.size), found


def process_pair(job: _Job) -> _Outcome:
    """Decode, frame, optionally align and write one pair; every input problem becomes a skip."""
    pair = job.pair
    outcome = _Outcome(pair.id)
    try:
        before, after, outcome.face_found = _frame_pair(job)
    except ImageProblem as problem:
        outcome.skips.append(Skip(_display(problem.path, job.root), problem.reason, problem.detail))
        return outcome
    if job.align:
        after, alignment = register_pair(before, after)
        outcome.alignment = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(alignment).items()}
        if not alignment.ok:
            outcome.skips.append(Skip(_display(pair.after, job.root), "alignment failed", alignment.why))
            return outcome
    record = PairRecord(
        id=pair.id, split=job.split, subject=pair.subject, procedures=pair.procedures,
        source_before=_display(pair.before, job.root), source_after=_display(pair.after, job.root),
    )
    DatasetWriter(job.out).add(record, before, after)
    outcome.record = record
    return outcome


# ---------------------------------------------------------------------------------- the whole run

def _is_inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def _fingerprint(pair: Pair, settings: dict) -> str:
    """What the outputs of a pair depend on: its files (path, size, mtime) and the image settings."""
    files = []
    for path in pair.files:
        try:
            stat = path.stat()
            files.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
        except OSError:
            files.append([str(path), -1, -1])
    text = json.dumps([settings, pair.composite, pair.swap, files], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _read_state(out: Path, source_key: str, force: bool) -> dict | None:
    """The previous run's state, or None for a fresh start; refuses an OUT that is not ours."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise SvaiError(f"{out} is a file: give a folder for OUT")
    if not any(out.iterdir()):
        return None
    state_path, prepare_json = out / STATE_FILE, out / "prepare.json"
    if not prepare_json.is_file():
        raise SvaiError(f"{out} is not empty and was not made by `svai prepare`: choose an empty or new folder")
    state = None
    if state_path.is_file():
        try:
            state = json.loads(state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            state = None
    same_source = isinstance(state, dict) and state.get("version") == STATE_VERSION and state.get("source") == source_key
    if force:
        return None
    if not same_source:
        made_from = state.get("source") if isinstance(state, dict) else "another source (or synthetic data)"
        raise SvaiError(
            f"{out} holds a dataset prepared from {made_from}: add --force to rebuild it from this source, "
            "or choose another folder"
        )
    return state


def _move_outputs(out: Path, pair_id: str, old: str, new: str) -> None:
    for kind in _KINDS:
        src = out / old / kind / f"{pair_id}.png"
        if src.is_file():
            (out / new / kind).mkdir(parents=True, exist_ok=True)
            os.replace(src, out / new / kind / f"{pair_id}.png")


def _sweep(out: Path, expected: set[tuple[str, str]]) -> None:
    """Delete outputs of pairs no longer in the dataset (and temp files of an interrupted run)."""
    for split in SPLITS:
        for kind in _KINDS:
            folder = out / split / kind
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                stale_temp = path.name.startswith(".") and ".tmp" in path.name
                if stale_temp or (path.suffix == ".png" and (split, path.stem) not in expected):
                    path.unlink()


def _write_skipped(out: Path, skipped: list[Skip]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file", "reason", "detail"])
    for skip in skipped:
        writer.writerow([skip.file, skip.reason, skip.detail])
    write_atomic(out / SKIPPED_FILE, buffer.getvalue().encode("utf-8"))


def _run_jobs(jobs: list[_Job], workers: int, progress: Progress | None) -> list[_Outcome]:
    """Process jobs inline (one worker) or in a process pool; results sorted by pair id."""
    outcomes: list[_Outcome] = []
    total = len(jobs)
    if progress:
        progress(0, total)
    if workers <= 1 or total <= 1:
        for done, job in enumerate(jobs, start=1):
            outcomes.append(process_pair(job))
            if progress:
                progress(done, total)
    else:
        # A fresh interpreter per worker (not fork): the parent may hold torch's thread pools.
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        context = multiprocessing.get_context(method)
        try:
            with ProcessPoolExecutor(max_workers=min(workers, total), mp_context=context) as pool:
                futures = [pool.submit(process_pair, job) for job in jobs]
                for done, future in enumerate(as_completed(futures), start=1):
                    outcomes.append(future.result())
                    if progress:
                        progress(done, total)
        except BrokenProcessPool:
            raise SvaiError(
                "a worker process died (most likely out of memory): run again with fewer --workers"
            ) from None
    return sorted(outcomes, key=lambda o: o.id)


def _check_options(options: PrepareOptions) -> None:
    if not 16 <= options.size <= 8192:
        raise SvaiError(f"--size must be between 16 and 8192 pixels; got {options.size}")
    if options.crop not in CROPS:
        raise SvaiError(f"--crop must be one of {', '.join(CROPS)}; got {options.crop!r}")
    if options.pairing not in PAIRING_MODES:
        raise SvaiError(f"--pairing must be one of {', '.join(PAIRING_MODES)}; got {options.pairing!r}")
    if options.order not in ORDERS:
        raise SvaiError(f"--order must be one of {', '.join(ORDERS)}; got {options.order!r}")
    if options.workers is not None and options.workers < 1:
        raise SvaiError(f"--workers must be at least 1; got {options.workers}")
    if not 0.0 <= options.test_fraction < 1.0:
        raise SvaiError(f"--test-fraction must be in [0, 1); got {options.test_fraction}")


def prepare_dataset(
    source: Path,
    out: Path,
    options: PrepareOptions | None = None,
    progress: Progress | None = None,
) -> PrepareReport:
    """Prepare `source` (a photo folder or a CSV of pairs) into `out`; see the module docstring.

    Returns the report even when no pair could be written (the caller decides that this is
    an error); raises `SvaiError` for problems with the arguments or with OUT itself.
    """
    options = options or PrepareOptions()
    _check_options(options)
    source, out = Path(source), Path(out)
    if not source.exists():
        raise SvaiError(f"{source} does not exist: give a folder of photos or a CSV of pairs")
    root = source if source.is_dir() else source.parent
    if source.is_dir() and _is_inside(out, source):
        raise SvaiError(f"OUT {out} is inside SOURCE {source}: choose an output folder outside the photos")
    if source.is_dir() and _is_inside(source, out):
        raise SvaiError(f"SOURCE {source} is inside OUT {out}: choose an output folder that does not hold the photos")
    source_key = str(source.resolve())
    state = _read_state(out, source_key, options.force) or {}

    aliases = load_label_aliases(options.labels)
    found = find_pairs(source, options.pairing, pairs_csv=options.pairs_csv, order=options.order, aliases=aliases)
    if not found.pairs and not found.skipped:
        raise SvaiError(f"{source} holds no image files")
    inside_out = [p for pair in found.pairs for p in pair.files if _is_inside(p, out)]
    if inside_out:
        raise SvaiError(f"{inside_out[0]} lies inside OUT {out}: keep source photos outside the output folder")

    settings = options.image_settings()
    old_pairs: dict = state.get("pairs", {}) if state.get("image_settings") == settings else {}
    old_failures: dict = state.get("failures", {}) if state.get("image_settings") == settings else {}

    jobs: list[_Job] = []
    records: list[PairRecord] = []
    new_state: dict[str, dict] = {}
    failures: dict[str, list] = {}
    skipped = list(found.skipped)
    face_found: Counter[str] = Counter()
    alignments: dict[str, dict] = {}
    fingerprints: dict[str, str] = {}
    for pair in found.pairs:
        fingerprint = _fingerprint(pair, settings)
        fingerprints[pair.id] = fingerprint
        old = old_pairs.get(pair.id)
        if old and old.get("fingerprint") == fingerprint and all(
            (out / old["split"] / kind / f"{pair.id}.png").is_file() for kind in ("before", "after")
        ):
            records.append(PairRecord(
                id=pair.id, split=old["split"], subject=pair.subject, procedures=pair.procedures,
                source_before=_display(pair.before, root), source_after=_display(pair.after, root),
                sha256_before=old["sha256_before"], sha256_after=old["sha256_after"],
            ))
            new_state[pair.id] = dict(old)
            continue
        if fingerprint in old_failures:
            failures[fingerprint] = old_failures[fingerprint]
            skipped.extend(Skip(*row) for row in old_failures[fingerprint])
            continue
        # Written where it most likely belongs; moved once the split of the good pairs is known.
        split = old["split"] if old else "train"
        jobs.append(_Job(pair, split, out, root, options.size, options.crop, options.align, options.max_pixels))

    out.mkdir(parents=True, exist_ok=True)
    workers = options.workers or default_workers()
    log.info("%d pairs found, %d to process with %d workers", len(found.pairs), len(jobs), workers)
    for outcome in _run_jobs(jobs, workers, progress):
        fingerprint = fingerprints[outcome.id]
        if outcome.record is None:
            skipped.extend(outcome.skips)
            failures[fingerprint] = [[s.file, s.reason, s.detail] for s in outcome.skips]
            continue
        record = outcome.record
        records.append(record)
        new_state[record.id] = {
            "fingerprint": fingerprint, "split": record.split,
            "sha256_before": record.sha256_before, "sha256_after": record.sha256_after,
            "face_found": outcome.face_found, "alignment": outcome.alignment,
        }
    # Split the subjects of the pairs actually written, so --test-fraction holds for them.
    test_subjects = split_subjects({r.subject for r in records}, options.test_fraction, options.seed)
    for record in records:
        split = "test" if record.subject in test_subjects else "train"
        if split != record.split:
            _move_outputs(out, record.id, record.split, split)
            record.split = split
        new_state[record.id]["split"] = split
    for pair_id, entry in new_state.items():
        if entry.get("face_found") is not None:
            face_found["found" if entry["face_found"] else "centre fallback"] += 1
        if entry.get("alignment"):
            alignments[pair_id] = {"error_before": entry["alignment"]["error_before"],
                                   "error_after": entry["alignment"]["error_after"]}

    _sweep(out, {(r.split, r.id) for r in records})
    removed = len(set(state.get("pairs", {})) - {r.id for r in records})
    skipped.sort(key=lambda s: (s.file, s.reason))
    writer = DatasetWriter(out)
    writer.records = records
    run_settings = {
        "kind": "photos", "source": source_key, **settings, "order": options.order, "pairing": options.pairing,
        "pairs_csv": str(options.pairs_csv) if options.pairs_csv else None,
        "labels": str(options.labels) if options.labels else None,
        "seed": options.seed, "test_fraction": options.test_fraction,
    }
    extra: dict = {"skipped": dict(sorted(Counter(s.reason for s in skipped).items()))}
    if options.crop == "face":
        extra["face_crop"] = dict(face_found)
    if options.align:
        errors = [a["error_after"] for a in alignments.values()]
        extra["alignment"] = {
            "error_units": "mean absolute difference, 8-bit grey levels, at 96 px",
            "median_error_after": float(np.median(errors)) if errors else None,
            "pairs": dict(sorted(alignments.items())),
        }
    summary = writer.close(run_settings, extra)
    _write_skipped(out, skipped)
    state_out = {"version": STATE_VERSION, "source": source_key, "image_settings": settings,
                 "pairs": dict(sorted(new_state.items())), "failures": failures}
    write_atomic(out / STATE_FILE, (json.dumps(state_out, indent=1) + "\n").encode())
    processed = {job.pair.id for job in jobs}
    written = sum(r.id in processed for r in records)
    counts = {split: sum(r.split == split for r in records) for split in SPLITS}
    return PrepareReport(out, written=written, kept=len(records) - written, removed=removed,
                         pairs=counts, skipped=skipped, summary=summary)

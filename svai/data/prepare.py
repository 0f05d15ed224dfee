"""`svai prepare SOURCE OUT`: turn a photo collection into the prepared layout, incrementally.

The run, in order: check OUT, find pairs (`svai.data.pairing`), split subjects, decide per
pair whether its outputs from an earlier run still hold (same source files by size and
mtime, same image settings), process the rest in worker processes, then write
manifest.csv, prepare.json, skipped.csv and the state file `prepare-state.json`.

Nothing under SOURCE is ever opened for writing. OUT holds only what this module writes.
The state file is written first (marked unfinished, so the next run knows OUT is its own),
every few seconds while pairs are processed, and last (marked complete). A run that stops
for any reason — Ctrl-C, SIGTERM, SIGKILL, a full disk — is finished by running the same
command again, which reuses every pair the state records; `--force` rebuilds instead.
Ctrl-C and SIGTERM stop within a second or two: workers are ended, what is done is
recorded, and the report says the run was interrupted.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import multiprocessing
import os
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from svai import face
from svai.data.align import CROPS, Box, carry_box, face_box, register_pair, render, square_box
from svai.data.images import ImageProblem, draft_size, load_rgb_image, probe
from svai.data.layout import REGIONS_DIR, SPLITS, DatasetWriter, PairRecord, read_manifest, split_subjects
from svai.data.options import PrepareOptions, SyntheticOptions
from svai.data.pairing import (
    ORDERS, PAIRING_MODES, Pair, PairingResult, Skip, find_pairs, load_label_aliases, share_subjects,
)
from svai.data.regions import fit_region, index_regions, read_region, region_key
from svai.errors import SvaiError
from svai.io import (
    OPEN, OWN_FILES, OwnFiles, Privacy, check_output_folder, make_folder, read_json_object, remove_stale_temporaries,
    write_atomic,
)
from svai.runlock import LOCK_FILE, RunLock
from svai.signals import stop_signals, worker_setup
from svai.workers import available_cpus, max_workers

log = logging.getLogger(__name__)

STATE_FILE = "prepare-state.json"
SKIPPED_FILE = "skipped.csv"
STATE_VERSION = 1
_OWN_FILES = ("manifest.csv", "prepare.json", SKIPPED_FILE, STATE_FILE)
_KINDS = ("before", "after", "masks")
# How often the state is saved while pairs are processed: what a SIGKILL can cost at most.
SAVE_EVERY_S = 5.0

Progress = Callable[[int, int], None]


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
    interrupted: bool = False
    processed: int = 0
    to_process: int = 0

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
    # (procedure, file) of each region given for this pair, drawn on the before photo.
    regions: tuple[tuple[str, Path], ...] = ()


@dataclass
class _Outcome:
    id: str
    record: PairRecord | None = None
    skips: list[Skip] = field(default_factory=list)
    face_found: bool | None = None
    alignment: dict | None = None
    regions: list[str] = field(default_factory=list)


def default_workers() -> int:
    return available_cpus()


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


def _frame_pair(job: _Job) -> tuple[np.ndarray, np.ndarray, bool | None, dict[str, np.ndarray]]:
    """Decode both photos and cut the same square out of each: (before, after, face_found,
    regions), the regions framed like the before photo."""
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
        box = _face_square(before_image, before_region, pair.before)
        found = box is not None
    if box is None:
        box = square_box(before_region, "none" if job.crop == "none" else "center")
    after_box = carry_box(box, before_region, after_region)
    regions = {name: _frame_region(path, before_image.size, before_region, box, job.size)
               for name, path in job.regions}
    return render(before_image, box, job.size), render(after_image, after_box, job.size), found, regions


def _face_square(image: Image.Image, region: Box, path: Path) -> Box | None:
    """The face square of the largest face in `region` of the before photo (landmarks), or
    without the face layer the skin-colour box (None: centre crop). No face is a skip."""
    finder = face.finder.usable_finder(log)
    if finder is None:
        return face_box(image, region)
    x0, y0, x1, y1 = (round(v) for v in region)
    faces = finder.find(np.asarray(image.crop((x0, y0, x1, y1))))
    if not faces:
        raise ImageProblem(path, "no face", "the face finder found no face: crop it by hand or use --crop center")
    sx0, sy0, sx1, sy1 = faces[0].square
    return (sx0 + x0, sy0 + y0, sx1 + x0, sy1 + y0)


def _frame_region(path: Path, decoded: tuple[int, int], photo: Box, box: Box, size: int) -> np.ndarray:
    """A region drawn on the before photo, cut and resized like it: (size, size) uint8 0/255.

    `decoded` is the decoded image's (width, height) and `photo` the before photo's box in it
    (one half of a composite).
    """
    try:
        region = read_region(path)
    except SvaiError as error:
        raise ImageProblem(path, "unreadable", str(error).removeprefix(f"{path}: ")) from None
    x0, y0, x1, y1 = photo
    width, height = round(x1 - x0), round(y1 - y0)
    # Drawn black on white so render()'s white padding (--crop none) falls outside the region.
    canvas = Image.new("L", decoded, 255)
    canvas.paste(Image.fromarray(np.where(fit_region(region, height, width), 0, 255).astype(np.uint8)),
                 (round(x0), round(y0)))
    framed = render(canvas.convert("RGB"), box, size)[..., 0]
    return np.where(framed < 128, 255, 0).astype(np.uint8)


def _partner_skips(job: _Job, bad: Path, reason: str) -> list[Skip]:
    """The other file of a pair skipped because of `bad`, so skipped.csv accounts for every file."""
    pair = job.pair
    if pair.composite:
        return []
    partners = [p for p in (pair.before, pair.after) if p != bad]
    return [Skip(_display(p, job.root), "partner skipped", f"its pair {_display(bad, job.root)}: {reason}")
            for p in partners]


def process_pair(job: _Job) -> _Outcome:
    """Decode, frame, optionally align and write one pair; every input problem becomes a skip."""
    pair = job.pair
    outcome = _Outcome(pair.id)
    try:
        before, after, outcome.face_found, regions = _frame_pair(job)
    except ImageProblem as problem:
        outcome.skips.append(Skip(_display(problem.path, job.root), problem.reason, problem.detail))
        outcome.skips.extend(_partner_skips(job, problem.path, problem.reason))
        return outcome
    if job.align:
        after, alignment = register_pair(before, after)
        outcome.alignment = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(alignment).items()}
        if not alignment.ok:
            outcome.skips.append(Skip(_display(pair.after, job.root), "alignment failed", alignment.why))
            outcome.skips.extend(_partner_skips(job, pair.after, "alignment failed"))
            return outcome
    record = PairRecord(
        id=pair.id, split=job.split, subject=pair.subject, procedures=pair.procedures,
        source_before=_display(pair.before, job.root), source_after=_display(pair.after, job.root),
    )
    # No more readable than the photos (and region drawings) the pair comes from.
    privacy = OPEN
    for path in (*pair.files, *(path for _, path in job.regions)):
        privacy &= Privacy.of(path, job.root)
    DatasetWriter(job.out, privacy=privacy).add(record, before, after, regions=regions)
    outcome.record = record
    outcome.regions = sorted(regions)
    return outcome


# ---------------------------------------------------------------------------------- the whole run

def _is_inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def _pair_digest(pair: Pair, settings: dict, regions: tuple[tuple[str, Path], ...] = ()) -> str:
    """What the outputs of a pair depend on: its files (path, size, mtime), its region files
    and the image settings."""
    files = []
    for path in [*pair.files, *(path for _, path in regions)]:
        try:
            stat = path.stat()
            files.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
        except OSError:
            files.append([str(path), -1, -1])
    parts = [settings, pair.composite, pair.swap, files]
    if regions:  # without regions the text stays what earlier versions hashed
        parts.append([name for name, _ in regions])
    text = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _read_state(out: Path, source_key: str, force: bool) -> dict | None:
    """The previous run's state, or None for a fresh start; refuses an OUT that is not ours."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise SvaiError(f"{out} is a file: give a folder for OUT")
    if not any(p.name not in (LOCK_FILE, OWN_FILES) for p in out.iterdir()):
        return None
    state_path, prepare_json = out / STATE_FILE, out / "prepare.json"
    state = read_json_object(state_path)
    # The state file is written before any image, so an unfinished run is recognised too.
    if not prepare_json.is_file() and not (isinstance(state, dict) and state.get("version") == STATE_VERSION):
        raise SvaiError(f"{out} is not empty and was not made by `svai prepare`: choose an empty or new folder")
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


@dataclass
class _Out:
    """OUT as one run writes it: the folder, the privacy of what goes in it (that of SOURCE)
    and the record of the files svai wrote there (`svai.io.OwnFiles`), saved with the state."""

    root: Path
    privacy: Privacy
    own: OwnFiles

    def write(self, name: str, data: bytes) -> None:
        write_atomic(self.root / name, data, self.privacy)
        self.own.note(self.root / name)


def _write_state(out: _Out, source_key: str, settings: dict, pairs: dict[str, dict],
                 failures: dict[str, list], complete: bool) -> None:
    state = {"version": STATE_VERSION, "source": source_key, "image_settings": settings, "complete": complete,
             "pairs": dict(sorted(pairs.items())), "failures": dict(sorted(failures.items()))}
    out.write(STATE_FILE, (json.dumps(state, indent=1) + "\n").encode())
    out.own.save()


def _pair_outputs(out: Path, split: str, pair_id: str) -> list[Path]:
    """The files one pair has in OUT under one split: before, after, mask and regions."""
    files = [out / split / kind / f"{pair_id}.png" for kind in _KINDS]
    return [p for p in files if p.is_file()] + sorted((out / split / REGIONS_DIR).glob(f"*/{pair_id}.png"))


def _move_outputs(out: _Out, pair_id: str, old: str, new: str) -> None:
    for src in _pair_outputs(out.root, old, pair_id):
        if not out.own.owns(src):
            continue  # not svai's: left where it is (the pair's own file is written anew)
        target = out.root / new / src.relative_to(out.root / old)
        make_folder(target.parent, out.privacy)
        os.replace(src, target)
        out.own.moved(src, target)
        out.own.note_with_folders(target)


def _adopt_layout(out: _Out) -> None:
    """Record, once, the files of an OUT that `svai prepare` made before it kept a record of
    its own files (its state file proves OUT is prepare's): the PNGs of the dataset layout
    and the files prepare names. Nothing else in OUT is ever taken for svai's."""
    files = [out.root / name for name in _OWN_FILES]
    for split in SPLITS:
        folders = [out.root / split / kind for kind in _KINDS]
        regions = out.root / split / REGIONS_DIR
        folders += sorted(p for p in regions.iterdir() if p.is_dir()) if regions.is_dir() else []
        files += [p for folder in folders if folder.is_dir() and not folder.is_symlink()
                  for p in folder.iterdir() if p.suffix == ".png"]
    out.own.note_with_folders(*(p for p in files if p.is_file() and not p.is_symlink()))


def _sweep(out: _Out, expected: set[tuple[str, str]]) -> None:
    """Delete outputs of pairs no longer in the dataset (and temp files of an interrupted run):
    only files the record proves svai wrote; anything else in OUT stays."""
    for split in SPLITS:
        regions = out.root / split / REGIONS_DIR
        folders = [out.root / split / kind for kind in _KINDS]
        folders += sorted(p for p in regions.iterdir() if p.is_dir()) if regions.is_dir() else []
        for folder in folders:
            if not folder.is_dir() or folder.is_symlink():
                continue
            remove_stale_temporaries(folder)
            for path in sorted(folder.iterdir()):
                if path.suffix == ".png" and (split, path.stem) not in expected:
                    out.own.remove(path)


def _write_skipped(out: _Out, skipped: list[Skip]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file", "reason", "detail"])
    for skip in skipped:
        writer.writerow([skip.file, skip.reason, skip.detail])
    out.write(SKIPPED_FILE, buffer.getvalue().encode("utf-8"))


def _run_jobs(
    jobs: list[_Job],
    workers: int,
    progress: Progress | None,
    accept: Callable[[_Outcome], None],
    stop: Callable[[], bool],
) -> bool:
    """Process jobs inline (one worker) or in a process pool, handing each outcome to `accept`.

    Returns True when `stop()` asked to stop before every job was done: pending jobs are
    cancelled and the workers ended, so nothing keeps running after the return.
    """
    total = len(jobs)
    if progress:
        progress(0, total)
    if workers <= 1 or total <= 1:
        for done, job in enumerate(jobs, start=1):
            if stop():
                return True
            accept(process_pair(job))
            if progress:
                progress(done, total)
        return False
    # A fresh interpreter per worker (not fork): the parent may hold torch's thread pools.
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    pool = ProcessPoolExecutor(max_workers=min(workers, total), mp_context=context,
                               initializer=worker_setup, initargs=(os.getpid(),))
    try:
        pending: set[Future] = {pool.submit(process_pair, job) for job in jobs}
        done = 0
        while pending:
            # A short wait, so a stop request is seen within a fraction of a second.
            finished, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
            for future in finished:
                accept(future.result())
                done += 1
                if progress:
                    progress(done, total)
            if pending and stop():
                return True
        return False
    except BrokenProcessPool:
        raise SvaiError("a worker process died (most likely out of memory): run again with fewer --workers") from None
    finally:
        _end_pool(pool)


def _end_pool(pool: ProcessPoolExecutor) -> None:
    """Shut the pool down without waiting for queued jobs, ending workers still busy."""
    # The executor has no public way to end running workers; its process table is the only handle.
    handles = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in handles:
        if process.is_alive():
            process.terminate()
    for process in handles:
        process.join(timeout=5)
        if process.is_alive():
            process.kill()


def _check_options(options: PrepareOptions) -> None:
    if not 16 <= options.size <= 8192:
        raise SvaiError(f"--size must be between 16 and 8192 pixels; got {options.size}")
    if options.crop not in CROPS:
        raise SvaiError(f"--crop must be one of {', '.join(CROPS)}; got {options.crop!r}")
    if options.pairing not in PAIRING_MODES:
        raise SvaiError(f"--pairing must be one of {', '.join(PAIRING_MODES)}; got {options.pairing!r}")
    if options.order not in ORDERS:
        raise SvaiError(f"--order must be one of {', '.join(ORDERS)}; got {options.order!r}")
    if options.workers is not None and not 1 <= options.workers <= max_workers():
        raise SvaiError(f"--workers must be between 1 and {max_workers()} (the CPUs this machine gives svai, "
                        f"or 8); got {options.workers}")
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
    if source.is_dir() and _is_inside(out, source):
        raise SvaiError(f"OUT {out} is inside SOURCE {source}: choose an output folder outside the photos")
    if source.is_dir() and _is_inside(source, out):
        raise SvaiError(f"SOURCE {source} is inside OUT {out}: choose an output folder that does not hold the photos")
    if out.exists() and not out.is_dir():
        raise SvaiError(f"{out} is a file: give a folder for OUT")
    if options.regions is not None and _is_inside(options.regions, out):
        raise SvaiError(f"--regions {options.regions} is inside OUT {out}: copy the regions elsewhere first")
    # Everything prepare reads; OUT may overlap none of it, nor hold a link to anywhere.
    reads = {"SOURCE": source, "--pairs": options.pairs_csv,
             "--labels": options.labels, "--regions": options.regions}
    check_output_folder({name: path for name, path in reads.items() if path is not None}, out, "OUT")
    with RunLock(out, "prepared dataset", privacy=Privacy.of(source)):
        return _prepare_locked(source, out, options, progress)


@dataclass
class _Run:
    """One run's growing record: the pairs it keeps or writes, what failed and why, and the
    state file that holds them (saved now and then, so a stopped run is resumed)."""

    target: _Out
    source_key: str
    settings: dict  # the image settings (`PrepareOptions.image_settings`)
    jobs: list[_Job] = field(default_factory=list)
    records: list[PairRecord] = field(default_factory=list)
    new_state: dict[str, dict] = field(default_factory=dict)
    failures: dict[str, list] = field(default_factory=dict)
    skipped: list[Skip] = field(default_factory=list)
    fingerprints: dict[str, str] = field(default_factory=dict)
    processed: int = 0
    written_now: int = 0
    last_save: float = field(default_factory=time.monotonic)

    def save(self, complete: bool = False) -> None:
        _write_state(self.target, self.source_key, self.settings, self.new_state, self.failures, complete)

    def plan(self, pairs: list[Pair], root: Path, state: dict, options: PrepareOptions) -> None:
        """Keep each pair whose outputs from an earlier run still hold, repeat each earlier
        failure of the same files, and make a job of every other pair."""
        out, settings = self.target.root, self.settings
        old_pairs: dict = state.get("pairs", {}) if state.get("image_settings") == settings else {}
        old_failures: dict = state.get("failures", {}) if state.get("image_settings") == settings else {}
        region_index = index_regions(options.regions) if options.regions is not None else {}
        for pair in pairs:
            key = region_key(pair.id)
            regions = tuple((name, files[key]) for name, files in region_index.items() if key in files)
            fingerprint = _pair_digest(pair, settings, regions)
            self.fingerprints[pair.id] = fingerprint
            old = old_pairs.get(pair.id)
            if old and old.get("fingerprint") == fingerprint and all(
                (out / old["split"] / kind / f"{pair.id}.png").is_file() for kind in ("before", "after")
            ):
                self.records.append(PairRecord(
                    id=pair.id, split=old["split"], subject=pair.subject, procedures=pair.procedures,
                    source_before=_display(pair.before, root), source_after=_display(pair.after, root),
                    sha256_before=old["sha256_before"], sha256_after=old["sha256_after"],
                ))
                self.new_state[pair.id] = dict(old)
                continue
            if fingerprint in old_failures:
                self.failures[fingerprint] = old_failures[fingerprint]
                self.skipped.extend(Skip(*row) for row in old_failures[fingerprint])
                continue
            # Written where it most likely belongs; moved once the split of the good pairs is known.
            split = old["split"] if old else "train"
            self.jobs.append(_Job(pair, split, out, root, options.size, options.crop, options.align,
                                  options.max_pixels, regions))

    def open(self) -> None:
        """Make OUT's folders and record the files the jobs will write, then save the state:
        written before any image, it marks OUT as ours, so a stopped run is resumed, not refused."""
        target, out = self.target, self.target.root
        made_before = (out / STATE_FILE).is_file() or (out / "prepare.json").is_file()
        if made_before and not target.own.path.exists():
            _adopt_layout(target)  # _read_state has checked that OUT is prepare's
        for split in SPLITS:
            for kind in ("before", "after"):
                make_folder(out / split / kind, target.privacy)  # workers then write into folders of SOURCE's privacy
                target.own.note_with_folders(out / split / kind)
        # The workers' files are recorded before they are written (saved with the state below).
        for job in self.jobs:
            target.own.plan(*(out / job.split / kind / f"{job.pair.id}.png" for kind in ("before", "after")),
                            *(out / job.split / REGIONS_DIR / name / f"{job.pair.id}.png" for name, _ in job.regions))
        self.save()

    def accept(self, outcome: _Outcome) -> None:
        """Record one processed pair (or why it failed); save the state every few seconds."""
        out = self.target.root
        self.processed += 1
        self.written_now += outcome.record is not None
        fingerprint = self.fingerprints[outcome.id]
        if outcome.record is None:
            self.skipped.extend(outcome.skips)
            self.failures[fingerprint] = [[s.file, s.reason, s.detail] for s in outcome.skips]
        else:
            record = outcome.record
            self.records.append(record)
            self.target.own.note_with_folders(*_pair_outputs(out, record.split, record.id))
            # A region gone from --regions since the last run must not outlive it.
            for stale in (out / record.split / REGIONS_DIR).glob(f"*/{record.id}.png"):
                if stale.parent.name not in outcome.regions:
                    self.target.own.remove(stale)
            self.new_state[record.id] = {
                "fingerprint": fingerprint, "split": record.split,
                "sha256_before": record.sha256_before, "sha256_after": record.sha256_after,
                "face_found": outcome.face_found, "alignment": outcome.alignment,
                "regions": outcome.regions,
            }
        if time.monotonic() - self.last_save > SAVE_EVERY_S:
            self.save()
            self.last_save = time.monotonic()

    def split(self, options: PrepareOptions) -> None:
        """Split the subjects of the pairs actually written, so --test-fraction holds for them,
        and move each pair whose split changed."""
        self.records.sort(key=lambda r: r.id)
        test_subjects = split_subjects({r.subject for r in self.records}, options.test_fraction, options.seed)
        for record in self.records:
            split = "test" if record.subject in test_subjects else "train"
            if split != record.split:
                _move_outputs(self.target, record.id, record.split, split)
                record.split = split
            self.new_state[record.id]["split"] = split

    def counts(self) -> dict[str, int]:
        return {split: sum(r.split == split for r in self.records) for split in SPLITS}


def _find(source: Path, out: Path, options: PrepareOptions) -> PairingResult:
    """The pairs of SOURCE and the files passed over, checked: some image, none inside OUT."""
    aliases = load_label_aliases(options.labels)
    found = find_pairs(source, options.pairing, pairs_csv=options.pairs_csv, order=options.order, aliases=aliases)
    if not found.pairs and not found.skipped:
        raise SvaiError(f"{source} holds no image files")
    # The same photo in two pairs (a hard link, a copy) keeps both on one side of the split.
    found.pairs = share_subjects(found.pairs)
    inside_out = [p for pair in found.pairs for p in pair.files if _is_inside(p, out)]
    if inside_out:
        raise SvaiError(f"{inside_out[0]} lies inside OUT {out}: keep source photos outside the output folder")
    return found


def _prepare_locked(source: Path, out: Path, options: PrepareOptions, progress: Progress | None) -> PrepareReport:
    """`prepare_dataset` once OUT is locked for this run."""
    root = source if source.is_dir() else source.parent
    source_key = str(source.resolve())
    state = _read_state(out, source_key, options.force) or {}
    run = _Run(_Out(out, Privacy.of(source), OwnFiles(out)), source_key, options.image_settings())
    found = _find(source, out, options)
    run.skipped = list(found.skipped)
    run.plan(found.pairs, root, state, options)
    run.open()
    workers = options.workers or default_workers()
    log.info("%d pairs found, %d to process with %d workers", len(found.pairs), len(run.jobs), workers)
    run.last_save = time.monotonic()
    try:
        with stop_signals() as signals:
            stopped = _run_jobs(run.jobs, workers, progress, run.accept, stop=lambda: signals["signal"] is not None)
    except BaseException:
        # Whatever stopped the run (a full disk, a crash in a worker), keep what is done.
        try:
            run.save()
        except OSError:
            pass
        raise
    if stopped:
        run.save()
        return PrepareReport(out, written=run.written_now, kept=len(run.records) - run.written_now, removed=0,
                             pairs=run.counts(), skipped=run.skipped, interrupted=True, processed=run.processed,
                             to_process=len(run.jobs))
    run.split(options)
    return _finish(run, state, options, progress)


def _finish(run: _Run, state: dict, options: PrepareOptions, progress: Progress | None) -> PrepareReport:
    """Sweep outputs of pairs gone, write the manifest, prepare.json, skipped.csv, the
    landmarks and the completed state; the report of the run."""
    target, out, records, skipped = run.target, run.target.root, run.records, run.skipped
    face_found: Counter[str] = Counter()
    alignments: dict[str, dict] = {}
    for pair_id, entry in run.new_state.items():
        if entry.get("face_found") is not None:
            face_found["found" if entry["face_found"] else "centre fallback"] += 1
        if entry.get("alignment"):
            alignments[pair_id] = {"error_before": entry["alignment"]["error_before"],
                                   "error_after": entry["alignment"]["error_after"]}

    _sweep(target, {(r.split, r.id) for r in records})
    removed = len(set(state.get("pairs", {})) - {r.id for r in records})
    skipped.sort(key=lambda s: (s.file, s.reason))
    writer = DatasetWriter(out, privacy=target.privacy, own=target.own)
    writer.records = records
    run_settings = {
        "kind": "photos", "source": run.source_key, **run.settings, "order": options.order,
        "pairing": options.pairing, "pairs_csv": str(options.pairs_csv) if options.pairs_csv else None,
        "labels": str(options.labels) if options.labels else None,
        "regions": str(options.regions.resolve()) if options.regions else None,
        "seed": options.seed, "test_fraction": options.test_fraction,
    }
    extra: dict = {"skipped": dict(sorted(Counter(s.reason for s in skipped).items()))}
    if options.regions is not None:
        extra["regions"] = dict(sorted(Counter(n for e in run.new_state.values() for n in e.get("regions", [])).items()))
    if options.crop == "face":
        extra["face_crop"] = dict(face_found)
    if options.align:
        errors = [a["error_after"] for a in alignments.values()]
        extra["alignment"] = {
            "error_units": "mean absolute difference, 8-bit grey levels, at 96 px",
            "median_error_after": float(np.median(errors)) if errors else None,
            "pairs": dict(sorted(alignments.items())),
        }
    marks = _add_landmarks(target, records, options.landmarks, progress,
                           user_regions={i: e.get("regions", []) for i, e in run.new_state.items()})
    if marks is not None:
        extra["landmarks"] = marks
    summary = writer.close(run_settings, extra)
    _write_skipped(target, skipped)
    run.save(complete=True)
    processed_ids = {job.pair.id for job in run.jobs}
    written = sum(r.id in processed_ids for r in records)
    return PrepareReport(out, written=written, kept=len(records) - written, removed=removed,
                         pairs=run.counts(), skipped=skipped, summary=summary,
                         processed=len(run.jobs), to_process=len(run.jobs))


def _add_landmarks(target: _Out, records: list[PairRecord], wanted: bool | None, progress: Progress | None,
                   user_regions: dict[str, list[str]] | None = None) -> dict | None:
    """Store every pair's landmarks in OUT, with the photos' privacy, recorded in OUT's record
    of svai's files; the summary for prepare.json, or None when not wanted. For real photos,
    `user_regions` lists the procedures --regions gave each pair, and the other regions are
    drawn from the landmarks; None (synthetic data draws its own regions): none are drawn.

    wanted None: when the face layer can run (else one warning saying why); True: the face
    layer must run (else a one-line error); False: never."""
    if wanted is False:
        return None
    why = face.finder.problem()
    if why is not None:
        if wanted:
            raise SvaiError(f"--landmarks: {why}")
        face.finder.warn_missing_once(log, "no landmarks stored (add them later by running prepare again)")
        return None
    from svai.face.store import landmark_dataset

    total = len(records)
    report = landmark_dataset(target.root, records, face.finder.shared_finder(), user_regions=user_regions,
                              privacy=target.privacy,
                              progress=None if progress is None else lambda done: progress(done, total))
    target.own.note_with_folders(*report.written)
    target.own.save()
    if report.missing:
        log.warning("no face found in %d of %d pairs (listed in prepare.json under landmarks.missing): "
                    "their landmarks and landmark regions are left out", len(report.missing), total)
    return report.summary()


class PrepareStopped(Exception):
    """Raised inside a drawing loop when Ctrl-C or SIGTERM asked it to stop."""


def _is_synthetic(out: Path) -> bool:
    """Whether OUT holds synthetic data svai drew, finished (prepare.json) or not (state file)."""
    state = read_json_object(out / STATE_FILE)
    if state is not None and state.get("source") == "synthetic":
        return True
    summary = read_json_object(out / "prepare.json")
    return summary is not None and (summary.get("settings") or {}).get("source") == "synthetic"


def _clear_own_outputs(out: Path) -> None:
    """Remove what svai prepare wrote in OUT, as its record of its own files proves (never
    anything else)."""
    own = OwnFiles(out)
    if not own.path.exists():
        _adopt_layout(_Out(out, OPEN, own))  # drawn before svai kept a record of its own files
    for split in SPLITS:
        for kind in (*_KINDS, REGIONS_DIR):
            remove_stale_temporaries(out / split / kind)
        own.remove_under(out / split)
    for name in _OWN_FILES:
        own.remove(out / name)
    own.save()


def prepare_synthetic(
    out: Path, options: SyntheticOptions | None = None, progress: Callable[[int], None] | None = None
) -> dict | None:
    """Draw the synthetic dataset into `out` under its lock; return the summary, or None when
    Ctrl-C or SIGTERM stopped it (running the same command again then starts it over).

    OUT must be empty, absent, or an unfinished synthetic draw; `options.force` also rebuilds
    a finished one. Drawing is deterministic, so starting over gives the same dataset.
    """
    options = options or SyntheticOptions()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SvaiError(f"{out} is a file: give a folder for OUT")
    created = not out.exists()
    try:
        with RunLock(out, "prepared dataset"):
            summary = _draw_synthetic(out, options, progress)
            if summary is not None:
                marks = _add_landmarks(_Out(out, OPEN, OwnFiles(out)), read_manifest(out), options.landmarks,
                                       None if progress is None else lambda done, total: progress(done))
                if marks is not None:
                    summary["landmarks"] = marks
                    write_atomic(out / "prepare.json", (json.dumps(summary, indent=2) + "\n").encode())
            return summary
    except SvaiError:
        if created:
            # A folder this run made for a draw that was refused (bad --size …) goes again.
            _clear_own_outputs(out)
            try:
                out.rmdir()
            except OSError:
                pass
        raise


def _draw_synthetic(out: Path, options: SyntheticOptions, progress: Callable[[int], None] | None) -> dict | None:
    from svai.data.synthetic import write_synthetic_dataset

    if any(p.name not in (LOCK_FILE, OWN_FILES) for p in out.iterdir()):
        unfinished = not (out / "prepare.json").is_file()
        if not _is_synthetic(out) or not (unfinished or options.force):
            hint = " or add --force to draw it again" if _is_synthetic(out) else ""
            raise SvaiError(f"{out} is not empty: choose a new output folder{hint}")
        _clear_own_outputs(out)
    # Marks OUT as an unfinished draw until prepare.json exists.
    marker = {"version": STATE_VERSION, "source": "synthetic", "complete": False}
    write_atomic(out / STATE_FILE, (json.dumps(marker) + "\n").encode())
    own = OwnFiles(out)
    own.note(out / STATE_FILE)
    own.save()
    with stop_signals() as signals:
        def step(done: int) -> None:
            if signals["signal"] is not None:
                raise PrepareStopped
            if progress is not None:
                progress(done)

        try:
            summary = write_synthetic_dataset(out, count=options.count, size=options.size, seed=options.seed,
                                              test_fraction=options.test_fraction, progress=step)
        except PrepareStopped:
            return None
    own = OwnFiles(out)
    own.remove(out / STATE_FILE)
    own.save()
    return summary

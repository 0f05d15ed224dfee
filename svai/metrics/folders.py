"""The folders of one evaluation: the targets, the masks, and each candidate measured against
the targets (the model's output, and the do-nothing baseline when there is one), indexed by id."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from svai.errors import SvaiError
from svai.metrics.identity import region_mask_files
from svai.metrics.options import PAIRED_METRICS
from svai.metrics.pairing import Pairing, index_folder, pair_ids

logger = logging.getLogger(__name__)


@dataclass
class Candidate:
    """One folder measured against the targets: the model's output or the do-nothing baseline."""

    role: str
    name: str
    root: Path
    files: dict[str, Path]
    pairing: Pairing
    values: dict[str, dict[str, float]] = field(default_factory=dict)  # metric -> id -> value
    features: dict[str, np.ndarray] = field(default_factory=dict)  # id -> (dims,)
    logits: dict[str, np.ndarray] = field(default_factory=dict)  # id -> (1008,)
    skipped: dict[str, str] = field(default_factory=dict)  # file -> reason
    evaluated: set[str] = field(default_factory=set)  # ids with paired values
    without_mask: set[str] = field(default_factory=set)

    def record(self, metric: str, key: str, value: float) -> None:
        self.values.setdefault(metric, {})[key] = value


@dataclass(frozen=True)
class Folders:
    """The resolved folders of one evaluation and their files, indexed by id."""

    target: Path
    target_files: dict[str, Path]
    masks: Path | None  # None: no region metrics
    mask_files: dict[str, Path]
    before: Path | None  # recorded for grids, never read here
    candidates: list[Candidate]  # the model first, then the baseline when there is one
    passed_over: dict[str, str] = field(default_factory=dict)  # target and mask files not read as images


def mask_source(folders: "Folders") -> str | None:
    """What the changed region of `_changed`/`_kept` is: "change masks" (a masks folder) or
    "procedure regions" (a dataset's regions, from the before landmarks or given)."""
    if folders.masks is None:
        return None
    return "procedure regions" if any(isinstance(v, tuple) for v in folders.mask_files.values()) else "change masks"


def index_folders(
    pred: Path, target: Path, masks: Path | None, baseline: Path | None, before: Path | None, name: str | None
) -> Folders:
    """Resolve and index the folders; `masks` None looks for `target/../masks`."""
    pred, target = Path(pred).resolve(), Path(target).resolve()
    # Files a folder holds that are not read as images are reported, never passed over silently.
    passed_pred: dict[str, str] = {}
    passed: dict[str, str] = {}
    pred_files = index_folder(pred, passed_pred)
    target_files = index_folder(target, passed)
    mask_files: dict[str, Path] = {}
    if masks is None:
        guess = target.parent / "masks"
        if guess.is_dir() and guess not in (pred, target):
            try:
                mask_files, masks = index_folder(guess), guess
            except SvaiError as error:
                # A guess, not a request: an empty or odd folder just means no region metrics.
                logger.warning("not using %s for region metrics: %s", guess, error)
        if masks is None:
            # No change masks: a dataset's procedure regions (drawn from the before landmarks).
            masks, mask_files = region_mask_files(target)  # type: ignore[assignment]
    else:
        masks = Path(masks).resolve()
        if not masks.is_dir():
            raise SvaiError(f"--masks {masks} is not a folder: give the folder of masks (255 = changed region)")
        mask_files = index_folder(masks, passed)
    if baseline is not None:
        baseline = Path(baseline).resolve()
        before = before if before is not None else baseline
    before = Path(before).resolve() if before is not None else None

    candidates = [Candidate("model", name or pred.name, pred, pred_files, pair_ids(pred_files, target_files, pred, target),
                             skipped=passed_pred)]
    if baseline is not None:
        passed_baseline: dict[str, str] = {}
        baseline_files = index_folder(baseline, passed_baseline)
        candidates.append(
            Candidate("baseline", "baseline", baseline, baseline_files, pair_ids(baseline_files, target_files, baseline, target),
                       skipped=passed_baseline)
        )
    return Folders(target, target_files, masks, mask_files, before, candidates, passed)


def check_pairs(folders: Folders, requested: list[str]) -> None:
    """Paired metrics need pairs: a folder with no namesake in the targets is a user error."""
    if not any(metric in PAIRED_METRICS for metric in requested):
        return
    for candidate in folders.candidates:
        if not candidate.pairing.ids:
            raise SvaiError(
                f"no image in {candidate.root} has a namesake in {folders.target} (pairs match by relative path without "
                "extension): rename the files, or ask only for set metrics with --metrics fid,kid,is"
            )

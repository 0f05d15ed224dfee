"""Face-layer measures for evaluate: the identity score and procedure regions as masks.

- identity: SFace cosine between a prediction and the before photo (is it still the
  patient?); identity_target: between the prediction and the true after photo. Faces are
  aligned on the before photo's landmarks (a dataset's stored `landmarks.npz`, else the face
  layer run on the before photo); the target uses its own landmarks when the dataset has them.
- Region masks: on a prepared dataset without change masks, a pair's changed region is the
  union of its procedures' regions (`DATA/{split}/regions/<procedure>/<id>.png`, which
  `svai prepare` draws from the before photo's landmarks where the user gave none).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from svai.data.images import read_rgb
from svai.errors import SvaiError

IDENTITY_METRICS: tuple[str, ...] = ("identity", "identity_target")


def region_mask_files(target: Path) -> tuple[Path | None, dict[str, tuple[Path, ...]]]:
    """(regions folder, id -> its procedures' region files) for a dataset split's targets
    (`DATA/{split}/after`), or (None, {}) when the split has no regions folder."""
    from svai.data.layout import REGIONS_DIR, read_manifest

    folder = target.parent / REGIONS_DIR
    if not folder.is_dir():
        return None, {}
    by_id: dict[str, list[Path]] = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        for path in sorted(sub.glob("*.png")):
            by_id.setdefault(path.stem, []).append(path)
    try:
        labels = {r.id: set(r.procedures) for r in read_manifest(target.parent.parent) if r.split == target.parent.name}
    except SvaiError:
        labels = {}
    chosen = {}
    for key, paths in by_id.items():
        own = [p for p in paths if p.parent.name in labels.get(key, ())]
        chosen[key] = tuple(own or paths)
    return folder, chosen


def union_mask(paths: tuple[Path, ...]) -> np.ndarray:
    """The union of region images as an (H, W, 3) uint8 mask image (255 inside)."""
    masks = [read_rgb(path)[..., 0] >= 128 for path in paths]
    union = np.logical_or.reduce(masks) if len({m.shape for m in masks}) == 1 else masks[0]
    return np.repeat((union * 255).astype(np.uint8)[..., None], 3, axis=2)


class IdentityMeter:
    """Scores predictions against the before (and after) photos of each id."""

    def __init__(self, before: Path, target: Path, weights_dir: Path | None) -> None:
        from svai.face.finder import problem
        from svai.face.identity import IdentityScorer
        from svai.face.store import read_landmarks
        from svai.metrics.pairing import index_folder

        why = problem(weights_dir)
        if why is not None:
            raise SvaiError(why)
        self.scorer = IdentityScorer(weights_dir)
        self.before_files = index_folder(before)
        stored = read_landmarks(target.parent.parent, target.parent.name)
        self.stored = stored.rows
        self._weights_dir = weights_dir
        self._cache: dict[str, tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]] = {}

    def _landmarks(self, rgb: np.ndarray) -> np.ndarray | None:
        from svai.face.finder import shared_finder

        faces = shared_finder(self._weights_dir).find(rgb)
        return faces[0].landmarks if faces else None

    def _reference(self, key: str, target: np.ndarray):  # type: ignore[no-untyped-def]
        """(before landmarks, before embedding, target embedding) of an id, cached."""
        if key not in self._cache:
            path = self.before_files.get(key)
            before_points, after_points = self.stored.get(key, (None, None))
            before_emb = target_emb = None
            if path is not None:
                before = read_rgb(path)
                if before_points is None:
                    before_points = self._landmarks(before)
                if before_points is not None and before.shape == target.shape:
                    before_emb = self.scorer.embed(before, before_points)
                    target_emb = self.scorer.embed(target, after_points if after_points is not None else before_points)
            self._cache[key] = (before_points, before_emb, target_emb)
        return self._cache[key]

    def measure(self, key: str, prediction: np.ndarray, target: np.ndarray) -> dict[str, float]:
        """identity and identity_target of one prediction; {} when the before photo is
        missing, differs in size, or has no face."""
        points, before_emb, target_emb = self._reference(key, target)
        if points is None or before_emb is None or prediction.shape != target.shape:
            return {}
        emb = self.scorer.embed(prediction, points)
        from svai.face.identity import cosine

        return {"identity": cosine(emb, before_emb), "identity_target": cosine(emb, target_emb)}

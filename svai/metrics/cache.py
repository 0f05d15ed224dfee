"""Cache of a target folder's Inception features, so a second evaluation skips that pass.

The key hashes everything the features depend on: each target file's absolute path, size
and modification time, the sha256 of the Inception weights, and the settings (feature
dimension, format version). Editing, adding or removing a target image, or changing the
weights, gives a new key; stale entries are never read, only left behind (delete the folder
to reclaim the space). The features themselves are stored (float64, N x dims), not only
their mean and covariance, because KID needs them; results are bit-identical with and
without the cache.

Location: `$SVAI_CACHE_DIR`, else `~/.cache/svai`, in `target-features/<key>.npz`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from svai.io import atomic_open

logger = logging.getLogger(__name__)

CACHE_DIR_ENV = "SVAI_CACHE_DIR"
CACHE_FORMAT = 1


def cache_root() -> Path:
    """`$SVAI_CACHE_DIR` when set, else `~/.cache/svai`."""
    configured = os.getenv(CACHE_DIR_ENV, "")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "svai"


def target_key(files: list[Path], weights_sha256: str, settings: dict) -> str:
    """Hex sha256 naming the cache entry of these files under these weights and settings.

    A file that cannot be stat'ed gives a key that never matches (it is then skipped anyway).
    """
    listing = []
    for path in sorted(Path(f).resolve() for f in files):
        try:
            stat = path.stat()
            listing.append([str(path), stat.st_size, stat.st_mtime_ns])
        except OSError:
            listing.append([str(path), -1, -1])
    payload = json.dumps(
        {"format": CACHE_FORMAT, "files": listing, "weights": weights_sha256, "settings": settings},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass
class CachedFeatures:
    """What a cache entry holds: features of the readable targets and the skipped ones."""

    features: np.ndarray  # (N, dims) float64, in sorted id order
    ids: list[str]
    skipped: list[dict] = field(default_factory=list)


def _entry(key: str) -> Path:
    return cache_root() / "target-features" / f"{key}.npz"


def load(key: str) -> CachedFeatures | None:
    """The entry for `key`, or None when absent or unreadable (then it is recomputed)."""
    path = _entry(key)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(bytes(data["meta"]).decode())
            features = np.asarray(data["features"], dtype=np.float64)
        if features.ndim != 2 or features.shape[0] != len(meta["ids"]):
            raise ValueError("features and ids disagree")
        return CachedFeatures(features=features, ids=list(meta["ids"]), skipped=list(meta["skipped"]))
    except (OSError, ValueError, KeyError, EOFError, RecursionError, zipfile.BadZipFile) as error:
        # A truncated or damaged entry is computed again, and the new one replaces it.
        logger.warning("ignoring unreadable cache entry %s (%s)", path, error)
        return None


def save(key: str, entry: CachedFeatures) -> Path | None:
    """Store an entry atomically (temporary file, then rename). Returns its path, or None
    when the cache folder is not writable: caching is an optimisation, never a failure."""
    path = _entry(key)
    meta = json.dumps({"ids": entry.ids, "skipped": entry.skipped}).encode()
    try:
        with atomic_open(path) as handle:
            np.savez(handle, features=np.asarray(entry.features, dtype=np.float64), meta=np.frombuffer(meta, dtype=np.uint8))
    except OSError as error:
        logger.warning("could not write the feature cache %s (%s)", path, error)
        return None
    return path

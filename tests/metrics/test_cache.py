"""The target-feature cache: keys follow the files, weights and settings; entries round-trip."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from svai.metrics import cache


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    paths = []
    for i in range(3):
        path = tmp_path / "t" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"x" * (i + 1))
        paths.append(path)
    return paths


def test_key_changes_with_content_time_weights_and_settings(files: list[Path]) -> None:
    key = cache.target_key(files, "w", {"fid_dims": 2048})
    assert cache.target_key(list(reversed(files)), "w", {"fid_dims": 2048}) == key  # order does not matter
    assert cache.target_key(files, "other", {"fid_dims": 2048}) != key
    assert cache.target_key(files, "w", {"fid_dims": 64}) != key
    assert cache.target_key(files[:2], "w", {"fid_dims": 2048}) != key
    stat = files[0].stat()
    os.utime(files[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert cache.target_key(files, "w", {"fid_dims": 2048}) != key


def test_round_trip_under_svai_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SVAI_CACHE_DIR", str(tmp_path / "cache"))
    features = np.random.default_rng(0).normal(size=(4, 8))
    entry = cache.CachedFeatures(features=features, ids=["a", "b", "c", "d"], skipped=[{"file": "x", "reason": "bad"}])
    path = cache.save("k", entry)
    assert path is not None and path.parent.parent == tmp_path / "cache"
    loaded = cache.load("k")
    assert loaded is not None
    np.testing.assert_array_equal(loaded.features, features)  # bit-identical
    assert loaded.ids == entry.ids and loaded.skipped == entry.skipped
    assert cache.load("missing") is None


def test_corrupt_entry_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SVAI_CACHE_DIR", str(tmp_path))
    (tmp_path / "target-features").mkdir()
    (tmp_path / "target-features" / "k.npz").write_bytes(b"not a zip")
    assert cache.load("k") is None


def test_unwritable_cache_is_not_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("SVAI_CACHE_DIR", str(blocker))  # a file, so the folder cannot be made
    assert cache.save("k", cache.CachedFeatures(features=np.zeros((1, 2)), ids=["a"])) is None


def test_a_truncated_entry_is_computed_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SVAI_CACHE_DIR", str(tmp_path))
    entry = cache.CachedFeatures(features=np.ones((3, 4)), ids=["a", "b", "c"])
    path = cache.save("k", entry)
    assert path is not None
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a copy that stopped half-way
    assert cache.load("k") is None
    cache.save("k", entry)
    assert cache.load("k") is not None

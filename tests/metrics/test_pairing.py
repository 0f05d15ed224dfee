"""Pairing by relative path without extension."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from svai.errors import SvaiError
from svai.metrics.pairing import index_folder, pair_ids


def write(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)


def test_pairs_across_extensions_and_subfolders(tmp_path: Path) -> None:
    pred, target = tmp_path / "pred", tmp_path / "target"
    for name in ("a.png", "sub/b.png", "only_pred.png"):
        write(pred / name)
    for name in ("a.jpg", "sub/b.webp", "sub/only_target.png", "b.png"):
        write(target / name)
    p, t = index_folder(pred), index_folder(target)
    pairing = pair_ids(p, t, pred, target)
    assert pairing.ids == ["a", "sub/b"]
    assert pairing.pred_only == ["only_pred.png"]
    assert pairing.target_only == ["b.png", "sub/only_target.png"]


def test_two_files_with_one_id_are_an_error(tmp_path: Path) -> None:
    write(tmp_path / "x.png")
    write(tmp_path / "x.jpg")
    with pytest.raises(SvaiError, match="share the id 'x'"):
        index_folder(tmp_path)


def test_missing_and_empty_folders_are_errors(tmp_path: Path) -> None:
    with pytest.raises(SvaiError, match="does not exist"):
        index_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SvaiError, match="holds no images"):
        index_folder(tmp_path / "empty")

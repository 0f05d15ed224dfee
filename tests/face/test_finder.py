"""The real face networks on real photos (scikit-image's) and on the built-in drawn faces."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from svai.data.synthetic import generate_pairs
from svai.errors import SvaiError
from svai.face import FaceFinder, mesh
from svai.face.identity import SAME_PERSON, IdentityScorer


def jpeg(rgb: np.ndarray, quality: int = 70) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def test_astronaut_one_face_framed_around_the_whole_mesh(face_finder, astronaut) -> None:
    faces = face_finder.find(astronaut)
    assert len(faces) == 1
    face = faces[0]
    points = face.landmarks
    assert points.shape == (478, 2)
    x0, y0, x1, y1 = face.square
    assert x0 <= points[:, 0].min() and points[:, 0].max() <= x1
    assert y0 <= points[:, 1].min() and points[:, 1].max() <= y1
    assert (x1 - x0) <= 2.5 * np.ptp(points[:, 0])
    # The landmarks sit inside the detector's box region (the face, not the orange suit).
    bx0, by0, bx1, by1 = face.box
    assert bx0 - 20 <= points[mesh.NOSE_TIP, 0] <= bx1 + 20 and by0 <= points[mesh.NOSE_TIP, 1] <= by1


def test_regions_cover_their_anatomy(face_finder, astronaut) -> None:
    face = face_finder.find(astronaut)[0]
    height, width = astronaut.shape[:2]
    masks = face.region_masks(width, height, mesh.REGION_PROCEDURES)

    def inside(procedure: str, index: int) -> bool:
        x, y = face.landmarks[index]
        return bool(masks[procedure][int(round(y)), int(round(x))])

    assert inside("nose", mesh.NOSE_TIP) and inside("eyes", mesh.RIGHT_IRIS) and inside("eyes", mesh.LEFT_IRIS)
    assert inside("lips", 13) and inside("jaw", 152) and inside("chin", 152)
    assert not inside("nose", mesh.RIGHT_IRIS) and not inside("eyes", mesh.NOSE_TIP)
    # A region is a small part of the face, not the photo.
    assert all(0 < m.mean() / 255 < 0.1 for m in masks.values())


def test_objects_and_plain_colours_have_no_face(face_finder) -> None:
    assert face_finder.find(data.coffee()) == []
    assert face_finder.find(data.chelsea()) == []
    assert face_finder.find(np.full((240, 320, 3), (230, 120, 40), np.uint8)) == []


def test_two_faces_are_both_reported_largest_first(face_finder, astronaut) -> None:
    camera = np.repeat(data.camera()[..., None], 3, axis=2)
    faces = face_finder.find(np.concatenate([astronaut, camera], axis=1))
    assert len(faces) == 2
    assert faces[0].area > faces[1].area
    assert faces[0].square[2] < 512 < faces[1].square[0] + 100


def test_large_photo_found_at_its_own_scale(face_finder, astronaut) -> None:
    big = np.asarray(Image.fromarray(astronaut).resize((2048, 2048), Image.Resampling.BICUBIC))
    small_face, big_face = face_finder.find(astronaut)[0], face_finder.find(big)[0]
    assert big_face.landmarks / 4 == pytest.approx(small_face.landmarks, abs=4.0)


def test_built_in_faces_get_landmarks(face_finder) -> None:
    pairs = list(generate_pairs(60, 128, seed=3))
    found = sum(bool(face_finder.find(pair.before)) for pair in pairs)
    assert found / len(pairs) >= 0.97


def test_identity_same_person_and_others(face_weights, face_finder, astronaut) -> None:
    scorer = IdentityScorer(face_weights)
    points = face_finder.find(astronaut)[0].landmarks
    assert scorer.similarity(astronaut, jpeg(astronaut), points) > 0.97
    darker = (astronaut * 0.6).astype(np.uint8)
    assert scorer.similarity(astronaut, darker, points) > 0.9
    camera = np.repeat(data.camera()[..., None], 3, axis=2)
    other = face_finder.find(camera)[0].landmarks
    assert scorer.similarity(astronaut, camera, points, other) < SAME_PERSON
    embedding = scorer.embed(astronaut, points)
    assert embedding.shape == (128,) and np.linalg.norm(embedding) == pytest.approx(1.0)


def test_missing_and_damaged_weights_are_one_line_errors(face_weights, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("SVAI_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    folder = tmp_path / "w"
    folder.mkdir()
    for name in ("face_detection_yunet_2023mar_int8bq.onnx", "face_landmarker.task"):
        shutil.copy(face_weights / name, folder / name)
    with pytest.raises(SvaiError, match="face_recognition_sface_2021dec_int8bq.onnx.*svai weights fetch face-identity"):
        IdentityScorer(folder)
    (folder / "face_landmarker.task").write_bytes(b"not a model")
    with pytest.raises(SvaiError, match=r"face_landmarker.task: not the published .*svai weights fetch face-landmarker"):
        FaceFinder(folder)

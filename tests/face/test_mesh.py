"""Geometry on landmarks: hulls, regions, the face square, the five alignment points."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import ConvexHull

from svai.face import mesh
from svai.face.identity import similarity_transform


def fake_mesh(seed: int = 0, centre=(200.0, 220.0), scale: float = 60.0) -> np.ndarray:
    return np.asarray(centre) + scale * np.random.default_rng(seed).uniform(-1, 1, (mesh.POINTS, 2))


def test_convex_hull_matches_scipy() -> None:
    points = np.random.default_rng(1).normal(size=(200, 2))
    ours = mesh._convex_hull(points)
    theirs = points[ConvexHull(points).vertices]
    assert {tuple(p) for p in ours} == {tuple(p) for p in theirs}


def test_region_polygons_contain_their_landmarks_with_margin() -> None:
    points = fake_mesh()
    unit = mesh.interocular(points)
    for procedure, shape in mesh.REGION_SHAPES.items():
        for hull, polygon in zip(shape.hulls, mesh.region_polygons(points, procedure)):
            inside = ConvexHull(polygon)
            for point in points[list(hull)]:
                # Every landmark lies at least (almost) `margin` inside the grown polygon.
                distances = inside.equations[:, :2] @ point + inside.equations[:, 2]
                assert distances.max() <= -0.95 * shape.margin * unit


def test_region_mask_and_box_agree() -> None:
    points = fake_mesh(2)
    mask = mesh.region_mask(points, "nose", 400, 450)
    assert mask.shape == (450, 400) and set(np.unique(mask)) <= {0, 255}
    rows, cols = np.nonzero(mask)
    x0, y0, x1, y1 = mesh.region_box(points, "nose", 400, 450)
    assert x0 - 1 <= cols.min() and cols.max() <= x1 + 1 and y0 - 1 <= rows.min() and rows.max() <= y1 + 1
    assert mesh.region_masks(points, ("nose", "unknown"), 400, 450).keys() == {"nose"}


def test_frame_square_holds_the_mesh_within_two_and_a_half_widths() -> None:
    for seed in range(5):
        points = fake_mesh(seed) * np.array([1.0, 1.3])
        x0, y0, x1, y1 = mesh.frame_square(points)
        assert x1 - x0 == pytest.approx(y1 - y0)
        assert x0 <= points[:, 0].min() and points[:, 0].max() <= x1
        assert y0 <= points[:, 1].min() and points[:, 1].max() <= y1
        width = np.ptp(points[:, 0])
        assert (x1 - x0) <= 2.5 * width


def test_frame_square_moves_and_scales_with_the_face() -> None:
    points = fake_mesh(3)
    box = np.array(mesh.frame_square(points))
    moved = np.array(mesh.frame_square(points * 2 + np.array([10.0, -5.0])))
    assert moved == pytest.approx(box * 2 + np.array([10.0, -5.0, 10.0, -5.0]))


def test_similarity_transform_recovers_a_known_similarity() -> None:
    angle, scale, shift = 0.3, 1.7, np.array([5.0, -3.0])
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    source = np.random.default_rng(4).normal(size=(5, 2)) * 20
    target = source @ rotation.T + shift
    matrix = similarity_transform(source, target)
    assert matrix[:, :2] == pytest.approx(rotation, abs=1e-9)
    assert matrix[:, 2] == pytest.approx(shift, abs=1e-9)


def test_wrong_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="478"):
        mesh.frame_square(np.zeros((68, 2)))


def test_landmark_files_round_trip_with_missing_faces(tmp_path) -> None:
    from svai.face.store import SplitLandmarks, read_landmarks, write_landmarks

    points = fake_mesh(6)
    written = SplitLandmarks({"b": (points, None), "a": (points + 1, points + 2)}, {"a": ("x", "y"), "b": ("z", "")})
    write_landmarks(tmp_path, "test", written)
    back = read_landmarks(tmp_path, "test")
    assert sorted(back.rows) == ["a", "b"] and back.found() == 1
    assert back.before("a") == pytest.approx(points + 1, abs=1e-4) and back.after("b") is None
    assert back.digests == {"a": ("x", "y"), "b": ("z", "")}
    assert read_landmarks(tmp_path, "train").rows == {}
    data = (tmp_path / "test" / "landmarks.npz").read_bytes()
    for damaged in (b"not a zip", data[: len(data) // 2]):
        (tmp_path / "test" / "landmarks.npz").write_bytes(damaged)
        assert read_landmarks(tmp_path, "test").rows == {}

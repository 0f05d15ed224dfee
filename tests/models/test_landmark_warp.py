"""landmark-warp: the thin-plate spline, the face frame, the closed-form fit, the confined warp,
and the trained model on drawn faces and a real photo (the last with the face layer)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from svai.data.layout import PROCEDURES
from svai.errors import SvaiError
from svai.face import mesh
from svai.models.base import Request
from svai.models.landmark_fields import FitSettings, fit_fields, support_masks
from svai.models.registry import make_family
from svai.run import resolve
from svai.warp import ThinPlateSpline, confine, face_frame, inner_feather, region_box, resample_box
from tests.support.datasets import fake_face, write_tiny_dataset


# -- the spline and the frame -----------------------------------------------------------------
def test_thin_plate_spline_interpolates_and_keeps_affine_maps_exact() -> None:
    rng = np.random.default_rng(0)
    points = rng.uniform(-2, 2, size=(40, 2))
    values = rng.normal(size=(40, 2))
    spline = ThinPlateSpline(points, values)
    np.testing.assert_allclose(spline(points), values, atol=1e-8)
    # An affine map has zero bending energy: the spline is that map everywhere.
    matrix, shift = np.array([[0.3, -0.2], [0.1, 0.5]]), np.array([0.7, -1.1])
    affine = ThinPlateSpline(points, points @ matrix.T + shift)
    query = rng.uniform(-5, 5, size=(100, 2))
    np.testing.assert_allclose(affine(query), query @ matrix.T + shift, atol=1e-8)
    # Smoothing trades exactness for a flatter fit: the residual grows, the values shrink towards affine.
    smooth = ThinPlateSpline(points, values, smoothing=10.0)
    assert np.abs(smooth(points) - values).mean() > 0.1


def test_face_frame_is_the_same_for_a_moved_rotated_and_scaled_face() -> None:
    points = fake_face(np.random.default_rng(1), 128)
    angle, scale, shift = 0.4, 2.5, np.array([30.0, -12.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = points @ rotation.T * scale + shift
    a, b = face_frame(points), face_frame(moved)
    np.testing.assert_allclose(a.to_frame(points), b.to_frame(moved), atol=1e-9)
    assert b.unit == pytest.approx(a.unit * scale)
    # The outer eye corners lie on the frame's x axis, one unit apart.
    eyes = b.to_frame(moved)[[mesh.RIGHT_EYE_OUTER, mesh.LEFT_EYE_OUTER]]
    assert eyes[1, 0] - eyes[0, 0] == pytest.approx(1.0) and eyes[0, 1] == pytest.approx(eyes[1, 1])
    np.testing.assert_allclose(b.to_photo(b.to_frame(moved)), moved, atol=1e-9)


# -- the fit --------------------------------------------------------------------------------
def planted(count: int, seed: int, components: int = 0) -> dict:
    """Pairs whose motion is exactly Σ s_p (D_p + Σ_k z_k W_pk), for known D and W."""
    rng = np.random.default_rng(seed)
    before = np.stack([fake_face(rng, 128) for _ in range(count)])
    strengths = rng.uniform(0.4, 1.0, size=(count, 3)) * (rng.uniform(size=(count, 3)) < 0.6)
    strengths[np.arange(count), rng.integers(0, 3, size=count)] = rng.uniform(0.4, 1.0, size=count)
    fields = rng.normal(scale=0.02, size=(3, 1 + components, 956))
    return {"before": before, "strengths": strengths, "fields": fields}


def test_fit_recovers_planted_fields_exactly() -> None:
    data = planted(60, 0)
    before, strengths, fields = data["before"], data["strengths"], data["fields"]
    after = np.stack([b + face_frame(b).vectors_to_photo((s @ fields[:, 0]).reshape(478, 2))
                      for b, s in zip(before, strengths)])
    fitted = fit_fields(before, after, strengths, PROCEDURES, FitSettings(components=0, align=False, support=False))
    np.testing.assert_allclose(fitted.fields, fields, atol=1e-9)
    assert fitted.explained == pytest.approx(1.0) and fitted.pairs == 60


def test_fit_recovers_fields_that_depend_on_the_face_shape() -> None:
    data = planted(80, 1, components=2)
    before, strengths, fields = data["before"], data["strengths"], data["fields"]
    shapes = np.stack([face_frame(b).to_frame(b).reshape(-1) for b in before])
    first = fit_fields(before, before, strengths, PROCEDURES, FitSettings(components=2, align=False, support=False))
    z = (shapes - first.mean_shape) @ first.basis.T  # the shape coordinates the fit will use
    after = np.stack([b + face_frame(b).vectors_to_photo(
        np.einsum("p,pkd,k->d", s, fields, np.concatenate([[1.0], zk])).reshape(478, 2))
        for b, s, zk in zip(before, strengths, z)])
    fitted = fit_fields(before, after, strengths, PROCEDURES,
                        FitSettings(components=2, ridge=0.0, align=False, support=False))
    np.testing.assert_allclose(fitted.fields, fields, atol=1e-8)
    for b, s, a in zip(before[:3], strengths[:3], after[:3]):
        frame = face_frame(b)
        np.testing.assert_allclose(b + frame.vectors_to_photo(fitted.displacement(frame.to_frame(b), s)), a,
                                   atol=1e-7)


def test_support_keeps_each_procedure_to_its_own_region() -> None:
    data = planted(60, 2)
    before, strengths = data["before"], data["strengths"]
    mean = np.mean([face_frame(b).to_frame(b) for b in before], axis=0)
    masks = support_masks(PROCEDURES, mean)
    assert masks.any(axis=1).all() and not masks.all(axis=1).any()
    noise = np.random.default_rng(3).normal(scale=0.5, size=before.shape)
    fitted = fit_fields(before, before + noise, strengths, PROCEDURES,
                        FitSettings(components=0, align=False, support=True))
    moved = np.abs(fitted.fields[:, 0].reshape(3, 478, 2)).sum(axis=2) > 0
    assert not (moved & ~masks).any()
    assert (moved & masks).any(axis=1).all()


def test_robust_weights_discount_a_pair_with_misread_landmarks() -> None:
    data = planted(60, 4)
    before, strengths, fields = data["before"], data["strengths"], data["fields"]
    after = np.stack([b + face_frame(b).vectors_to_photo((s @ fields[:, 0]).reshape(478, 2))
                      for b, s in zip(before, strengths)])
    after[0] += np.random.default_rng(5).normal(scale=8.0, size=(478, 2))  # one face read wrongly
    error = {robust: np.abs(fit_fields(before, after, strengths, PROCEDURES,
                                       FitSettings(components=0, align=False, support=False, robust=robust)).fields
                            - fields).mean()
             for robust in (False, True)}
    assert error[True] < 0.2 * error[False], error


# -- the confined warp ------------------------------------------------------------------------
def test_inner_feather_is_zero_outside_one_deep_inside_and_monotone() -> None:
    region = np.zeros((40, 40), bool)
    region[5:35, 10:30] = True
    weight = inner_feather(region, 4.0)
    assert (weight[~region] == 0).all() and weight[20, 20] == 1.0
    row = weight[20, 10:20]
    assert (np.diff(row) >= 0).all() and 0 < row[0] < 1
    # A region that reaches the frame goes on beyond it: full weight up to the image's edge.
    edge = np.zeros((20, 20), bool)
    edge[:, :10] = True
    assert inner_feather(edge, 4.0)[10, 0] == 1.0


def test_resample_box_moves_pixels_by_the_field_and_nothing_else() -> None:
    image = torch.rand(1, 3, 30, 40, generator=torch.Generator().manual_seed(0))
    box = (10, 5, 30, 25)
    assert torch.equal(resample_box(image, torch.zeros(2, 20, 20), box), image)
    field = torch.zeros(2, 20, 20)
    field[0] = 2.0  # every output pixel of the box takes the pixel two to its right
    out = resample_box(image, field, box)
    # Exact up to float32 rounding of grid_sample's normalised coordinates.
    torch.testing.assert_close(out[..., 5:25, 10:30], image[..., 5:25, 12:32], rtol=0, atol=1e-5)
    outside = torch.ones(30, 40, dtype=torch.bool)
    outside[5:25, 10:30] = False
    assert torch.equal(out[..., outside], image[..., outside])


def test_confine_keeps_every_pixel_outside_the_region() -> None:
    points = fake_face(np.random.default_rng(6), 64)
    photo = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    after = -photo
    out = confine(photo, after, points, ["nose"])
    inside = torch.from_numpy(mesh.region_mask(points, "nose", 64, 64) > 0)
    assert torch.equal(out[..., ~inside], photo[..., ~inside])
    assert (out[..., inside] != photo[..., inside]).any()
    polygons = mesh.region_polygons(points, "nose")
    assert region_box(polygons, 64, 64) is not None


def test_fit_asks_for_landmarks_when_the_dataset_has_none(tmp_path: Path) -> None:
    from svai.data.dataset import PairedImages

    root = write_tiny_dataset(tmp_path / "data")
    for split in ("train", "test"):
        (root / split / "landmarks.npz").unlink()
    family = make_family(resolve("landmark-warp", sets=["data.image_size=32"]))
    with pytest.raises(SvaiError, match="svai prepare"):
        family.fit(family.build(), PairedImages(root, "train", 32))


def test_an_unfitted_or_faceless_request_returns_the_photo() -> None:
    family = make_family(resolve("landmark-warp", sets=["data.image_size=32"]))
    nets = family.build()
    before = torch.rand(2, 3, 32, 32) * 2 - 1
    landmarks = torch.from_numpy(np.stack([fake_face(np.random.default_rng(i), 32) for i in range(2)])).float()
    request = Request(procedures=torch.ones(2, 3), landmarks=landmarks)
    assert torch.equal(family.translate(nets, before, request), before)
    nets["landmarks"].fitted.fill_(1.0)
    nets["landmarks"].fields.normal_(std=0.05)
    request.landmarks = torch.full_like(landmarks, float("nan"))
    assert torch.equal(family.translate(nets, before, request), before)


# -- on drawn faces and a real photo, with the face layer ---------------------------------------
def face_weights() -> Path:
    folder = os.environ.get("SVAI_FACE_WEIGHTS")
    if not folder:
        pytest.skip("set SVAI_FACE_WEIGHTS to the face layer's weights folder")
    from svai.face import finder

    if finder.problem(folder) is not None:
        pytest.skip(f"face layer unavailable: {finder.problem(folder)}")
    return Path(folder)


@pytest.fixture(scope="module")
def fitted_run(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The landmark-warp preset trained (fitted) on 90 drawn pairs at 128 px with landmarks."""
    weights = face_weights()
    saved = os.environ.get("SVAI_WEIGHTS_DIR")
    os.environ["SVAI_WEIGHTS_DIR"] = str(weights)
    try:
        from svai.data.options import SyntheticOptions
        from svai.data.prepare import prepare_synthetic
        from svai.generate import load_model
        from svai.train import train

        root = tmp_path_factory.mktemp("lw") / "data"
        prepare_synthetic(root, SyntheticOptions(count=90, size=128, seed=3, landmarks=True))
        config = resolve("landmark-warp", sets=["train.evaluate=false"], flags={"data.root": str(root)})
        run = root.parent / "run"
        train(config, run)
        yield root, load_model(run, device="cpu")
    finally:
        if saved is None:
            os.environ.pop("SVAI_WEIGHTS_DIR", None)
        else:
            os.environ["SVAI_WEIGHTS_DIR"] = saved


def test_fit_explains_most_of_the_landmark_motion_and_calibrates_gains(fitted_run) -> None:  # type: ignore[no-untyped-def]
    root, model = fitted_run
    import json

    fit = json.loads((Path(model.config.data.root).parent / "run" / "log.jsonl").read_text().splitlines()[0])
    assert fit["step"] == 0 and fit["fit_pairs"] >= 70 and fit["fit_explained"] > 0.5, fit
    gains = model.nets["landmarks"].gains.numpy()
    assert ((gains >= 0.25) & (gains <= 4)).all() and bool(model.nets["landmarks"].fitted)


def split_photos(root: Path):  # type: ignore[no-untyped-def]
    from svai.data.images import read_rgb
    from svai.face.store import read_landmarks

    stored = read_landmarks(root, "test")
    ids = sorted(stored.rows)
    return ids, [read_rgb(root / "test" / "before" / f"{i}.png") for i in ids], [stored.before(i) for i in ids]


def test_one_procedure_changes_its_region_and_nothing_else(fitted_run) -> None:  # type: ignore[no-untyped-def]
    from svai.generate import translate_batch

    root, model = fitted_run
    ids, images, landmarks = split_photos(root)
    for index, procedure in enumerate(model.family.procedures):
        strengths = torch.zeros(1, len(model.family.procedures))
        strengths[0, index] = 1.0
        outs = translate_batch(model, images, Request(procedures=strengths), landmarks)
        changed = 0
        for image, out, points in zip(images, outs, landmarks):
            inside = mesh.region_mask(points, procedure, image.shape[1], image.shape[0]) > 0
            assert np.array_equal(out[~inside], image[~inside]), procedure
            changed += int((out[inside] != image[inside]).any())
        assert changed == len(images), (procedure, changed)


def test_intensity_is_proportional(fitted_run) -> None:  # type: ignore[no-untyped-def]
    from svai.generate import translate_batch

    root, model = fitted_run
    ids, images, landmarks = split_photos(root)
    everything = torch.ones(1, len(model.family.procedures))

    def change(alpha: float) -> float:
        outs = translate_batch(model, images, Request(procedures=everything, intensity=alpha), landmarks)
        return float(np.mean([np.abs(o.astype(int) - i).mean() for o, i in zip(outs, images)]))

    full, half = change(1.0), change(0.5)
    assert full > 0 and 0.35 <= half / full <= 0.65, (half, full)
    outs = translate_batch(model, images, Request(procedures=everything, intensity=0.0), landmarks)
    assert all(np.array_equal(o, i) for o, i in zip(outs, images))


def test_a_real_photo_gets_a_visible_nose_and_keeps_every_other_pixel(fitted_run) -> None:  # type: ignore[no-untyped-def]
    from skimage.data import astronaut

    from svai.generate import translate_batch
    from svai.models.face_input import find_landmarks

    _, model = fitted_run
    image = astronaut()
    points = find_landmarks(image)
    assert points is not None
    nose = torch.tensor([[1.0 if p == "nose" else 0.0 for p in model.family.procedures]])
    out = translate_batch(model, [image], Request(procedures=nose))[0]  # the face layer finds the face
    inside = mesh.region_mask(points, "nose", image.shape[1], image.shape[0]) > 0
    assert np.array_equal(out[~inside], image[~inside])
    difference = np.abs(out.astype(int) - image).max(axis=2)[inside]
    # Visible: several grey levels on average over the nose, tens where its outline moved.
    assert difference.mean() >= 2.0 and np.percentile(difference, 99) >= 20, (difference.mean(), difference.max())


def test_photo_size_and_model_size_agree_and_the_checkpoint_round_trips(fitted_run) -> None:  # type: ignore[no-untyped-def]
    from svai.data.dataset import PairedImages

    root, model = fitted_run
    family, nets = model.family, model.nets
    test = PairedImages(root, "test", 128)
    item = test[0]
    before = item["before"][None]
    request = Request(procedures=item["procedures"][None], landmarks=item["landmarks"][None])
    small = family.translate(nets, before, request)
    assert not torch.equal(small, before)
    # The same face twice as large moves the same way: the warp, downsized, is the model-size one.
    big = torch.nn.functional.interpolate(before, scale_factor=2, mode="bilinear", align_corners=False)
    warped = family.translate_at(nets, before, request, [big])[0]
    down = torch.nn.functional.avg_pool2d(warped, 2)
    change_big = (down - torch.nn.functional.avg_pool2d(big, 2)).abs().mean()
    change_small = (small - before).abs().mean()
    assert abs(float(change_big) / float(change_small) - 1) < 0.35
    fresh = make_family(model.config).build()
    from svai.checkpoint import find_checkpoint, load_networks

    load_networks(find_checkpoint(root.parent / "run").path, fresh)
    assert torch.equal(family.translate(fresh, before, request), small)


def test_the_consultation_app_shows_the_nose_changed_on_the_full_resolution_face(fitted_run) -> None:  # type: ignore[no-untyped-def]
    """The app simulates on the face square at the photo's own resolution: ticking Nose
    changes the nose there, and nothing of the photo outside the nose region."""
    from PIL import Image
    from skimage.data import astronaut

    from svai.models.face_input import find_landmarks
    from svai.serve.photo import frame_photo
    from svai.serve.simulate import Settings, Simulator, serve_models

    root, model = fitted_run
    served = serve_models([root.parent / "run"], [model])
    assert served[0].model.family.moves_pixels() and served[0].controls.procedures == model.family.procedures
    photo = frame_photo(Image.fromarray(astronaut()), "astronaut.png", "0" * 64)
    simulation = Simulator(served).simulate(photo, served[0].id, Settings(procedures=("nose",)))
    x0, y0, x1, y1 = photo.box
    square = photo.pixels[y0:y1, x0:x1]
    # The app acts on the framed face's own landmarks (those the surgeon sees), in the square.
    assert photo.landmarks is not None
    points = photo.landmarks - np.array([x0, y0])
    assert np.abs(points - find_landmarks(np.ascontiguousarray(square))).max() < 5
    inside = mesh.region_mask(points, "nose", x1 - x0, y1 - y0) > 0
    change = np.abs(simulation.patch.astype(int) - square).max(axis=2)
    assert (change[~inside] == 0).all()
    assert change[inside].mean() >= 2.0

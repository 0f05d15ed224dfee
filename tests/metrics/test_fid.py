"""FID: parity with pytorch-fid on the same (test-made) weights, closed forms, properties."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image
from pytorch_fid.fid_score import calculate_fid_given_paths, calculate_frechet_distance
from pytorch_fid.inception import InceptionV3

from svai.metrics.fid import feature_statistics, fid_from_features, frechet_distance
from svai.metrics.inception import inception_features, inception_outputs, load_inception

PARITY_RTOL = 1e-3


def read_folder(folder: Path) -> torch.Tensor:
    """(N, 3, H, W) float in [0, 1], decoded the way pytorch-fid decodes (PIL RGB / 255)."""
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.png"))]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255


@pytest.fixture(scope="module")
def torch_home_env(torch_home: Path):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(torch_home))
        patch.delenv("SVAI_WEIGHTS_DIR", raising=False)
        yield torch_home


@pytest.fixture(scope="module")
def ours(torch_home_env: Path, image_folders: tuple[Path, Path]) -> dict[str, dict[int, np.ndarray]]:
    """svai's features of both folders at 64, 192, 768 and 2048 dims (one pass per folder)."""
    model = load_inception()
    out = {}
    for name, folder in zip("ab", image_folders):
        features, _ = inception_features(model, read_folder(folder), dims=(64, 192, 768, 2048))
        out[name] = {dim: f.numpy() for dim, f in features.items()}
    return out


@pytest.mark.slow
def test_features_equal_pytorch_fid_blocks(torch_home_env: Path, image_folders, ours) -> None:
    images = read_folder(image_folders[0])[:4]
    # pytorch-fid finds the test-made file under its real name in $TORCH_HOME; this net is
    # pytorch-fid's own graph, so any architecture difference fails the strict state-dict load.
    reference = InceptionV3([0, 1, 2, 3]).eval()
    with torch.no_grad():
        blocks = reference(images)
    for block, dim in zip(blocks, (64, 192, 768, 2048)):
        expected = torch.nn.functional.adaptive_avg_pool2d(block, (1, 1)).flatten(1).double().numpy()
        np.testing.assert_allclose(ours["a"][dim][:4], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_fid_2048_equals_pytorch_fid(torch_home_env: Path, image_folders, ours) -> None:
    expected = calculate_fid_given_paths([str(p) for p in image_folders], 24, "cpu", 2048, num_workers=0)
    got = fid_from_features(ours["a"][2048], ours["b"][2048])
    assert got == pytest.approx(expected, rel=PARITY_RTOL)


@pytest.mark.slow
def test_fid_64_equals_pytorch_fid(torch_home_env: Path, image_folders, ours) -> None:
    expected = calculate_fid_given_paths([str(p) for p in image_folders], 24, "cpu", 64, num_workers=0)
    got = fid_from_features(ours["a"][64], ours["b"][64])
    assert got == pytest.approx(expected, rel=PARITY_RTOL)


@pytest.mark.slow
def test_fid_768_equals_pytorch_fid(torch_home_env: Path, image_folders, ours, tmp_path: Path) -> None:
    # 768 dims reach deep into the network: compare on the first 12 images of each folder
    # to keep pytorch-fid's extra pass short.
    keep = 12
    small = []
    for name, folder in zip("ab", image_folders):
        target = tmp_path / name
        target.mkdir()
        for path in sorted(folder.glob("*.png"))[:keep]:
            shutil.copy(path, target / path.name)
        small.append(str(target))
    expected = calculate_fid_given_paths(small, keep, "cpu", 768, num_workers=0)
    got = fid_from_features(ours["a"][768][:keep], ours["b"][768][:keep])
    assert got == pytest.approx(expected, rel=PARITY_RTOL)


@pytest.mark.slow
def test_calibrated_fid_separates_sets_and_is_zero_on_identical(ours) -> None:
    assert fid_from_features(ours["a"][2048], ours["b"][2048]) > 10.0
    assert fid_from_features(ours["a"][2048], ours["a"][2048]) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.slow
def test_statistics_path_equals_pytorch_fid_distance(ours) -> None:
    # The D x D route (feature_statistics + frechet_distance) against pytorch-fid's own
    # distance on the same rank-deficient statistics (24 rows, 192 dims).
    stats_a, stats_b = feature_statistics(ours["a"][192]), feature_statistics(ours["b"][192])
    expected = calculate_frechet_distance(*stats_a, *stats_b)
    assert frechet_distance(*stats_a, *stats_b) == pytest.approx(expected, rel=PARITY_RTOL)
    assert fid_from_features(ours["a"][192], ours["b"][192]) == pytest.approx(expected, rel=PARITY_RTOL)


def test_inception_outputs_shapes_and_logits(use_torch_home: Path) -> None:
    model = load_inception()
    images = torch.rand(2, 3, 40, 56)
    features, logits = inception_outputs(model, images, dims=192)
    assert features.shape == (2, 192) and features.dtype == torch.float64
    assert logits.shape == (2, 1008)
    # logits are pool-3 features times the classifier weights, without the bias.
    pool3, _ = inception_features(model, images, dims=(2048,))
    expected = pool3[2048].float() @ model.fc.weight.t()
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)


def test_inception_outputs_rejects_bad_input(use_torch_home: Path) -> None:
    model = load_inception()
    with pytest.raises(ValueError, match="dims"):
        inception_outputs(model, torch.rand(1, 3, 32, 32), dims=1000)
    with pytest.raises(ValueError, match=r"\(1, 32, 32\)"):
        inception_outputs(model, torch.rand(1, 32, 32))


# -- Fréchet distance on statistics -------------------------------------------------------


def random_covariance(rng: np.random.Generator, dim: int, rank: int | None = None) -> np.ndarray:
    factor = rng.normal(size=(dim, rank or dim))
    return factor @ factor.T / dim


def test_feature_statistics_match_numpy() -> None:
    x = np.random.default_rng(0).normal(size=(30, 5))
    mu, sigma = feature_statistics(torch.from_numpy(x))
    np.testing.assert_allclose(mu, x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x, rowvar=False), rtol=1e-12)
    assert mu.dtype == sigma.dtype == np.float64


@pytest.mark.parametrize(("dim", "rank"), [(64, None), (64, 7), (256, 23)])
def test_identical_statistics_give_zero(dim: int, rank: int | None) -> None:
    # Rank-deficient covariances are the usual case (fewer images than feature dims).
    rng = np.random.default_rng(1)
    sigma = random_covariance(rng, dim, rank) * 50
    mu = rng.normal(size=dim)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-6)


def test_one_dimensional_closed_form() -> None:
    # For 1-D Gaussians d² = (m1 − m2)² + (s1 − s2)² with s the standard deviations.
    d2 = frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-2.0]), np.array([[9.0]]))
    assert d2 == pytest.approx(9.0 + 1.0, rel=1e-12)


def test_diagonal_closed_form() -> None:
    # Commuting (diagonal) covariances: Tr(Σ1 + Σ2 − 2(Σ1Σ2)^½) = Σᵢ (√aᵢ − √bᵢ)².
    a, b = np.array([1.0, 2.0, 3.0]), np.array([4.0, 0.5, 3.0])
    mu1, mu2 = np.zeros(3), np.array([1.0, 0.0, 2.0])
    expected = 5.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_matches_general_matrix_square_root() -> None:
    rng = np.random.default_rng(2)
    s1, s2 = random_covariance(rng, 40), random_covariance(rng, 40)
    mu1, mu2 = rng.normal(size=40), rng.normal(size=40)
    root = scipy.linalg.sqrtm(s1 @ s2)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(root).real
    got = frechet_distance(mu1, s1, mu2, s2)
    assert got == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(got, rel=1e-9)


@pytest.mark.parametrize("rows", [(5, 9), (30, 25)])
def test_feature_route_equals_statistics_route(rows: tuple[int, int]) -> None:
    # (5, 9) rows < 20 dims takes the small-matrix route; (30, 25) the D x D one.
    rng = np.random.default_rng(4)
    a = rng.normal(size=(rows[0], 20))
    b = rng.normal(loc=0.3, scale=1.5, size=(rows[1], 20))
    expected = frechet_distance(*feature_statistics(a), *feature_statistics(b))
    assert fid_from_features(a, b) == pytest.approx(expected, rel=1e-9)
    assert fid_from_features(a, a) == pytest.approx(0.0, abs=1e-9)


def test_does_not_use_scipy_sqrtm(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("sqrtm called")

    monkeypatch.setattr(scipy.linalg, "sqrtm", refuse)
    rng = np.random.default_rng(3)
    s = random_covariance(rng, 10)
    assert frechet_distance(np.zeros(10), s, np.ones(10), s) == pytest.approx(10.0, rel=1e-9)


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="covariances"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))
    with pytest.raises(ValueError, match="at least 2"):
        feature_statistics(np.zeros((1, 3)))

"""LPIPS parity with `lpips.LPIPS` on test-made backbones saved under their real file names."""

from __future__ import annotations

import warnings
from fractions import Fraction
from pathlib import Path

import lpips
import numpy as np
import pytest
import torch

from svai.errors import SvaiError
from svai.metrics.perceptual import build_lpips, linear_layers_path, load_lpips, lpips_distance

VGG_FILE = "vgg16-397923af.pth"


def reference_lpips(net: str, spatial: bool = False, random_backbone: bool = False) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return lpips.LPIPS(net=net, spatial=spatial, pnet_rand=random_backbone, verbose=False)


def images(seed: int, count: int = 3, size: tuple[int, int] = (48, 64)) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs in [-1, 1]: smooth images and perturbed copies."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.interpolate(torch.rand(count, 3, 6, 8, generator=generator), size=size, mode="bilinear")
    other = (base + 0.15 * torch.randn(base.shape, generator=generator)).clamp(0, 1)
    return base * 2 - 1, other * 2 - 1


@pytest.fixture
def no_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every download path of torch.hub raise, so a test fails instead of hanging."""

    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)


@pytest.mark.parametrize("net", ["alex", "squeeze"])
def test_matches_lpips_loading_the_same_file(net: str, use_torch_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The reference finds the test-made torchvision file in $TORCH_HOME/hub/checkpoints itself.
    expected_model = reference_lpips(net)
    expected_spatial_model = reference_lpips(net, spatial=True)
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: (_ for _ in ()).throw(AssertionError("download")))
    model, path = load_lpips(net)
    assert path.parent == use_torch_home
    x, y = images(seed=1)
    values, spatial = lpips_distance(model, x, y)
    with torch.no_grad():
        expected = expected_model(x, y).flatten().double()
        expected_spatial = expected_spatial_model(x, y)[:, 0]
    assert (values - expected).abs().max().item() < 1e-5
    assert (spatial - expected_spatial).abs().max().item() < 1e-5
    assert spatial.shape == (3, 48, 64)


def test_vgg_matches_lpips_with_the_same_backbone(tmp_path: Path, no_downloads: None) -> None:
    # A full random VGG16 file is 0.5 GB; the features part is all LPIPS reads, so the
    # reference keeps its own random backbone and we save that under the real name.
    torch.manual_seed(0)
    expected_model = reference_lpips("vgg", random_backbone=True)
    state = {f"features.{k.split('.', 1)[1]}": v for k, v in expected_model.net.state_dict().items()}
    torch.save(state, tmp_path / VGG_FILE)
    model, path = load_lpips("vgg", weights_dir=tmp_path)
    assert path == tmp_path / VGG_FILE
    x, y = images(seed=2, size=(32, 32))
    values, _ = lpips_distance(model, x, y)
    with torch.no_grad():
        expected = expected_model(x, y).flatten().double()
    assert (values - expected).abs().max().item() < 1e-5


def test_weights_dir_wins_over_torch_home(torch_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_downloads: None) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.delenv("SVAI_WEIGHTS_DIR", raising=False)
    checkpoints = torch_home / "hub" / "checkpoints"
    _, path = load_lpips("squeeze", weights_dir=checkpoints)
    assert path == checkpoints / "squeezenet1_1-b8a52dc0.pth"
    monkeypatch.setenv("SVAI_WEIGHTS_DIR", str(checkpoints))
    _, path = load_lpips("squeeze")
    assert path == checkpoints / "squeezenet1_1-b8a52dc0.pth"


def test_missing_backbone_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_downloads: None) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("SVAI_WEIGHTS_DIR", raising=False)
    with pytest.raises(SvaiError) as error:
        load_lpips("alex")
    message = str(error.value)
    assert "alexnet-owt-7be5be79.pth" in message and "svai weights fetch" in message and "\n" not in message


def test_refuses_pickled_objects_and_wrong_networks(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pth"
    torch.save({"features.0.weight": torch.zeros(1), "note": Fraction(1, 2)}, evil)
    with pytest.raises(SvaiError, match="not a readable"):
        build_lpips("squeeze", evil)
    wrong = tmp_path / "wrong.pth"
    torch.save({"features.0.weight": torch.zeros(3, 3, 3, 3)}, wrong)
    with pytest.raises(SvaiError, match="features"):
        build_lpips("squeeze", wrong)


def test_linear_layers_come_from_the_wheel() -> None:
    state = torch.load(linear_layers_path("alex"), map_location="cpu", weights_only=True)
    assert sorted(state) == [f"lin{i}.model.1.weight" for i in range(5)]
    assert all(np.all(v.numpy() >= 0) for v in state.values())  # the published layers are non-negative

"""The frozen VGG feature extractor: torchvision's layers and files, frozen, offline lookup."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from svai.errors import SvaiError
from svai.models.vgg import VggFeatures, layer_names, perceptual_loss


@pytest.mark.parametrize("arch", ["vgg16", "vgg19"])
def test_layer_names_follow_torchvision_indices(arch: str) -> None:
    reference = getattr(torchvision.models, arch)(weights=None).features
    names = layer_names(arch)
    assert len(names) == len(reference)
    for name, module in zip(names, reference):
        kind = {"conv": torch.nn.Conv2d, "relu": torch.nn.ReLU, "pool": torch.nn.MaxPool2d}[name[:4]]
        assert isinstance(module, kind), name
    assert names.index("relu4_1") == (20 if arch == "vgg19" else 18)


@pytest.mark.parametrize("arch, layer", [("vgg16", "relu3_3"), ("vgg19", "relu4_1")])
def test_loads_the_published_file_and_matches_torchvision(use_vgg_weights: Path, arch: str, layer: str) -> None:
    net = VggFeatures(arch, ("relu1_1", layer))
    net.load_published()
    reference = getattr(torchvision.models, arch)(weights=None)
    reference.load_state_dict(torch.load(use_vgg_weights / f"{arch}-{'397923af' if arch == 'vgg16' else 'dcbb9e9d'}.pth",
                                         weights_only=True))
    depth = layer_names(arch).index(layer) + 1
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in reference.features[:depth].parameters())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    expected = reference.features[:depth].eval()(((x + 1) / 2 - mean) / std)
    out = net(x)
    assert list(out) == ["relu1_1", layer]
    torch.testing.assert_close(out[layer], expected, rtol=1e-4, atol=1e-5)
    assert not any(p.requires_grad for p in net.parameters())


def test_gradients_reach_the_input_but_not_the_weights(use_vgg_weights: Path) -> None:
    net = VggFeatures("vgg16", ("relu2_2",))
    net.load_published()
    x = (torch.rand(1, 3, 16, 16) * 2 - 1).requires_grad_(True)
    net(x)["relu2_2"].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())


def test_bf16_copy(use_vgg_weights: Path) -> None:
    net = VggFeatures("vgg19", ("relu2_1",))
    net.load_published(dtype=torch.bfloat16)
    assert {p.dtype for p in net.parameters()} == {torch.bfloat16}


def test_missing_file_is_a_one_line_error_with_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SVAI_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(SvaiError, match=r"vgg19-dcbb9e9d\.pth, not found .*svai weights fetch vgg19"):
        VggFeatures("vgg19", ("relu4_1",)).load_published()


def test_foreign_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SVAI_WEIGHTS_DIR", str(tmp_path))
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "vgg16-397923af.pth")
    with pytest.raises(SvaiError, match="not torchvision's vgg16"):
        VggFeatures("vgg16", ("relu1_2",)).load_published()


def test_unknown_layer_lists_the_choices() -> None:
    with pytest.raises(SvaiError, match="unknown vgg16 layer 'relu5_4'"):
        VggFeatures("vgg16", ("relu5_4",))


def test_perceptual_loss_is_zero_for_identical_features_and_a_weighted_mse_otherwise() -> None:
    a = {"x": torch.ones(1, 2, 2, 2), "y": torch.zeros(1, 1, 2, 2)}
    b = {"x": torch.ones(1, 2, 2, 2) * 3, "y": torch.ones(1, 1, 2, 2)}
    assert perceptual_loss(a, a, {"x": 1.0, "y": 2.0}).item() == 0
    # (3 - 1)^2 = 4 on x; 1 on y, weighted 0.5 and 2.
    assert perceptual_loss(a, b, {"x": 0.5, "y": 2.0}).item() == pytest.approx(0.5 * 4 + 2.0 * 1)

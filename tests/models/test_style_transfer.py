"""style-transfer family (AdaIN): the statistics, AdaIN and its losses against hand-computed
values, the decoder's architecture, the mean style, the frozen VGG-19 (never in checkpoints,
restored from the weights lookup, a missing file failing before the first step), requests."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from typer.testing import CliRunner

from svai.checkpoint import find_checkpoint
from svai.cli import app
from svai.run import resolve
from svai.errors import SvaiError
from svai.generate import load_model, translate_batch
from svai.models.base import Request
from svai.models.registry import families, parameter_counts
from svai.models.style_transfer import (
    EPS, AdaINDecoder, StyleStatistics, StyleTransfer, StyleTransferOptions, adain, channel_stats, content_loss,
    style_loss, stylised_features,
)
from svai.train import Trainer, train

from tests.support.models import count_parameters

SIZE = 32
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def config(data: Path, steps: int, *extra: str):
    return resolve("style-transfer", sets=[f"data.image_size={SIZE}", "model.ngf=8", "train.batch_size=2",
                                           f"train.steps={steps}", "train.sample_every=0", *extra],
                   flags={"data.root": str(data)})


# -- the functional core ------------------------------------------------------------------------
def test_channel_stats_are_the_population_mean_and_std() -> None:
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[5.0, 5.0], [5.0, 5.0]]]])
    mean, std = channel_stats(x)
    torch.testing.assert_close(mean, torch.tensor([[2.5, 5.0]]))
    # Population variance of 1..4 is 1.25; a constant channel keeps sqrt(ε).
    torch.testing.assert_close(std, torch.tensor([[math.sqrt(1.25 + EPS), math.sqrt(EPS)]]))


def test_adain_gives_each_channel_the_target_mean_and_std() -> None:
    g = torch.Generator().manual_seed(0)
    content = torch.randn(2, 3, 5, 5, generator=g) * 4 + 1
    mean = torch.tensor([[0.5, -2.0, 3.0], [1.0, 0.0, -1.0]])
    std = torch.tensor([[2.0, 0.1, 1.0], [0.5, 3.0, 1.5]])
    out = adain(content, mean, std)
    flat = out.flatten(2)
    torch.testing.assert_close(flat.mean(2), mean, rtol=0, atol=1e-5)
    # ε in the content's std scales the output's by sqrt(var / (var + ε)), below 1e-6 here.
    torch.testing.assert_close(flat.std(2, unbiased=False), std, rtol=1e-5, atol=1e-6)
    # By hand for one channel: σ_s·(x − μ_c)/σ_c + μ_s.
    c = content[0, 1]
    expected = 0.1 * (c - c.mean()) / torch.sqrt(c.var(unbiased=False) + EPS) - 2.0
    torch.testing.assert_close(out[0, 1], expected)


def test_the_trade_off_alpha_blends_features_and_zero_returns_the_content_exactly() -> None:
    g = torch.Generator().manual_seed(1)
    content = torch.rand(2, 4, 3, 3, generator=g)
    mean, std = torch.rand(2, 4, generator=g), torch.rand(2, 4, generator=g) + 0.1
    assert torch.equal(stylised_features(content, mean, std, 0.0), content)
    assert torch.equal(stylised_features(content, mean, std, 1.0), adain(content, mean, std))
    torch.testing.assert_close(stylised_features(content, mean, std, 0.25),
                               0.25 * adain(content, mean, std) + 0.75 * content)


def test_content_loss_is_the_mean_squared_distance() -> None:
    features = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    assert float(content_loss(features, torch.zeros_like(features))) == pytest.approx((1 + 4 + 9 + 16) / 4)
    assert float(content_loss(features, features)) == 0.0


def test_style_loss_sums_mean_and_std_errors_over_the_layers() -> None:
    features = {"a": torch.tensor([[[[1.0, 1.0], [3.0, 3.0]]]]),                       # μ 2, σ² 1
                "b": torch.tensor([[[[0.0, 0.0], [0.0, 0.0]], [[2.0, 2.0], [2.0, 2.0]]]])}  # μ (0, 2), σ² 0
    targets = {"a": (torch.tensor([[0.0]]), torch.tensor([[0.0]])),
               "b": (torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 1.0]]))}
    # a: (2 − 0)² + (sqrt(1 + ε) − 0)²; b: mean((0 − 1)², 0) + mean(ε, (sqrt(ε) − 1)²).
    expected = 4 + (1 + EPS) + 0.5 + 0.5 * (EPS + (math.sqrt(EPS) - 1) ** 2)
    assert float(style_loss(features, targets)) == pytest.approx(expected, rel=1e-6)
    assert float(style_loss({"a": features["a"]}, {"a": channel_stats(features["a"])})) == 0.0


def test_the_running_mean_style_averages_every_image_seen() -> None:
    stats = StyleStatistics({"x": 2})
    g = torch.Generator().manual_seed(2)
    batches = [(torch.rand(n, 2, generator=g), torch.rand(n, 2, generator=g)) for n in (2, 3, 1)]
    for mean, std in batches:
        stats.update({"x": (mean, std)})
    assert int(stats.count) == 6
    mean, std = stats.target("x", 4)
    assert mean.shape == (4, 2)
    torch.testing.assert_close(mean[0], torch.cat([b[0] for b in batches]).mean(0))
    torch.testing.assert_close(std[3], torch.cat([b[1] for b in batches]).mean(0))


# -- networks and options -------------------------------------------------------------------------
def test_decoder_mirrors_vgg19_to_relu4_1_with_the_papers_widths() -> None:
    decoder = AdaINDecoder()
    # 3×3 convolutions with bias: 512→256, 256→256 ×3, 256→128, 128→128, 128→64, 64→64, 64→3.
    shapes = [(512, 256), (256, 256), (256, 256), (256, 256), (256, 128), (128, 128), (128, 64), (64, 64), (64, 3)]
    assert count_parameters(decoder) == sum(i * o * 9 + o for i, o in shapes) == 3_505_219
    kinds = {type(m) for m in decoder.modules()} - {AdaINDecoder, nn.Sequential}
    assert kinds == {nn.ReflectionPad2d, nn.Conv2d, nn.ReLU, nn.Upsample}
    ups = [m for m in decoder.modules() if isinstance(m, nn.Upsample)]
    assert len(ups) == 3 and all(m.mode == "nearest" and m.scale_factor == 2 for m in ups)
    assert isinstance(decoder.model[-1], nn.Conv2d)  # unbounded output, as in the paper
    assert AdaINDecoder(ngf=4)(torch.zeros(1, 512, 4, 4)).shape == (1, 3, 32, 32)


def test_parameter_counts_list_the_frozen_vgg_without_its_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SVAI_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    counts = parameter_counts(StyleTransfer(StyleTransferOptions(), 64))
    # VGG-19 convolutions up to conv4_1.
    vgg = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256), (256, 256), (256, 512)]
    assert counts == {"decoder": 3_505_219, "vgg": sum(i * o * 9 + o for i, o in vgg)}


def test_registered_with_the_papers_settings() -> None:
    assert families()["style-transfer"] is StyleTransfer
    o = resolve("style-transfer").model
    assert (o.style_source, o.style_weight, o.ngf, o.output) == ("mean", 10.0, 64, "direct")
    assert (o.lr, o.beta1, o.beta2, o.lr_decay) == (1e-4, 0.9, 0.999, 5e-5)
    family = StyleTransfer(o, 64)
    assert family.frozen_networks == ("vgg",) and [p.networks for p in family.phases()] == [("decoder",)]
    assert family.lr_factor(20000, 0) == pytest.approx(0.5)
    with pytest.raises(SvaiError, match="divisible by 8"):
        StyleTransfer(o, 36)
    for key, value in (("style_weight", -1), ("ngf", 0), ("lr_decay", -0.1), ("style_source", "photo")):
        with pytest.raises(SvaiError, match=rf"model\.{key}"):
            resolve("style-transfer", sets=[f"model.{key}={value}"])
    config = resolve(config_file=EXAMPLES / "style-transfer.yaml", flags={"data.root": "somewhere"})
    assert config.family == "style-transfer" and config.name == "style-transfer"


# -- requests ---------------------------------------------------------------------------------
def test_a_reference_is_refused_with_the_mean_style_and_required_with_one_photo() -> None:
    mean = StyleTransfer(StyleTransferOptions(), SIZE)
    mean.check_request(["intensity"])
    with pytest.raises(SvaiError) as error:
        mean.check_request(["intensity", "reference"])
    message = str(error.value)
    assert message.startswith("--reference") and "model.style_source=mean" in message and "\n" not in message
    one = StyleTransfer(StyleTransferOptions(style_source="reference"), SIZE)
    assert one.uses == {"intensity", "reference"}
    one.check_request(["reference", "intensity"])
    with pytest.raises(SvaiError, match=r"--reference is required.*model\.style_source=reference"):
        one.check_request(["intensity"])
    with pytest.raises(SvaiError, match="--procedures"):
        one.check_request(["reference", "procedures"])


def test_translate_takes_the_reference_style_and_checks_its_shape() -> None:
    torch.manual_seed(0)
    family = StyleTransfer(StyleTransferOptions(ngf=4, style_source="reference"), SIZE)
    nets = family.build()
    before = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    dark, bright = -torch.ones(1, 3, SIZE, SIZE) * 0.8, torch.ones(1, 3, SIZE, SIZE) * 0.8
    bright[..., ::2] = 0.2
    a = family.translate(nets, before, Request(reference=dark))
    b = family.translate(nets, before, Request(reference=bright))
    assert a.shape == before.shape and a.abs().max() <= 1 and not torch.equal(a, b)
    # α = 0 keeps the content's own statistics, so the reference no longer matters.
    torch.testing.assert_close(family.translate(nets, before, Request(reference=dark, intensity=0.0)),
                               family.translate(nets, before, Request(reference=bright, intensity=0.0)))
    with pytest.raises(SvaiError, match=r"expected images \(1 or 2, 3, 32, 32\); got shape \(3, 3, 32, 32\)"):
        family.translate(nets, before, Request(reference=bright.expand(3, -1, -1, -1)))


@pytest.mark.parametrize("mode", ["residual", "masked", "warp"])
def test_edit_modes_start_as_the_identity(mode: str) -> None:
    family = StyleTransfer(StyleTransferOptions(ngf=4, output=mode), SIZE)
    nets = family.build()
    before = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    torch.testing.assert_close(family.translate(nets, before), before, rtol=0, atol=1e-6)


# -- training with the frozen VGG-19 ------------------------------------------------------------
def test_one_step_trains_the_decoder_only_in_bf16_with_float32_statistics(use_vgg_weights: Path) -> None:
    family = StyleTransfer(StyleTransferOptions(ngf=4), SIZE)
    nets = family.build()
    family.load_pretrained(nets, torch.bfloat16)
    assert {p.dtype for p in nets["vgg"].parameters()} == {torch.bfloat16}
    g = torch.Generator().manual_seed(0)
    batch = {key: torch.rand(2, 3, SIZE, SIZE, generator=g) * 2 - 1 for key in ("before", "after")}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, logs = family.loss("decoder", nets, batch, {}, 0)
    assert loss.dtype == torch.float32 and set(logs) == {"content", "style", "decoder"}
    assert logs["decoder"] == pytest.approx(logs["content"] + 10 * logs["style"], rel=1e-5)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in nets["decoder"].parameters())
    assert all(p.grad is None for p in nets["vgg"].parameters())
    stats = nets["style_stats"]
    assert int(stats.count) == 2 and stats.relu4_1_mean.dtype == torch.float32
    after_features = nets["vgg"](batch["after"].bfloat16())
    torch.testing.assert_close(stats.relu1_1_std, channel_stats(after_features["relu1_1"])[1].mean(0))


def test_checkpoints_hold_no_vgg_and_generation_restores_it(
        use_vgg_weights: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(config(tiny_dataset, 2), run)
    path = find_checkpoint(run).path / "weights.safetensors"
    tensors = load_file(str(path))
    assert {key.split(".")[0] for key in tensors} == {"decoder", "style_stats"}
    assert int(tensors["style_stats.count"]) == 4
    decoder_bytes = 4 * count_parameters(AdaINDecoder(ngf=8))
    # The decoder's float32 weights plus the 2·960 running statistics and a small header.
    assert decoder_bytes < path.stat().st_size < decoder_bytes + 4 * 2 * 960 + 16_384

    model = load_model(run, device="cpu")
    reference = StyleTransfer(StyleTransferOptions(), SIZE).build()["vgg"]
    reference.load_published()
    loaded = model.nets["vgg"]
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), reference.state_dict().values()))
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in loaded.parameters())
    # The whole extractor works, its input normalisation included.
    x = torch.rand(1, 3, SIZE, SIZE) * 2 - 1
    torch.testing.assert_close(loaded(x)["relu4_1"], reference(x)["relu4_1"])
    image = (np.random.default_rng(0).uniform(0, 255, (SIZE, SIZE, 3))).astype(np.uint8)
    out = translate_batch(model, [image])[0]
    assert out.shape == image.shape and out.dtype == np.uint8


def test_a_missing_vgg19_fails_before_the_first_step(
        tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SVAI_WEIGHTS_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(SvaiError) as error:
        Trainer(config(tiny_dataset, 2), tmp_path / "run")
    message = str(error.value)
    assert "vgg19-dcbb9e9d.pth" in message and "svai weights fetch vgg19" in message and "\n" not in message


def test_interrupted_and_resumed_equals_one_go(use_vgg_weights: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    train(config(tiny_dataset, 4), tmp_path / "one")
    assert train(config(tiny_dataset, 4), tmp_path / "two", should_stop=lambda step: step == 2).interrupted
    resumed = train(config(tiny_dataset, 4), tmp_path / "two", resume=True)
    assert resumed.start_step == 2 and resumed.step == 4
    a = load_file(str(find_checkpoint(tmp_path / "one").path / "weights.safetensors"))
    b = load_file(str(find_checkpoint(tmp_path / "two").path / "weights.safetensors"))
    assert a.keys() == b.keys() and int(a["style_stats.count"]) == 8
    assert not [k for k in a if not torch.equal(a[k], b[k])]


def test_the_cli_trains_generates_and_refuses_a_reference(
        use_vgg_weights: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    run, out = tmp_path / "run", tmp_path / "out"
    result = CliRunner().invoke(app, ["train", "--model", "style-transfer", "--data", str(tiny_dataset),
                                      "--out", str(run), "--steps", "1", "--batch-size", "2", "--image-size",
                                      str(SIZE), "--set", "model.ngf=4"])
    assert result.exit_code == 0, result.output
    before = tiny_dataset / "test" / "before"
    result = CliRunner().invoke(app, ["generate", "--run", str(run), "--input", str(before), "--output", str(out),
                                      "--intensity", "0.5"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in before.iterdir())
    reference = next(before.iterdir())
    result = CliRunner().invoke(app, ["generate", "--run", str(run), "--input", str(before), "--output",
                                      str(tmp_path / "refused"), "--reference", str(reference)])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--reference" in lines[0] and "model.style_source=mean" in lines[0], result.stderr

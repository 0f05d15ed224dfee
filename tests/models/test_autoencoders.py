"""ae, vae and vae-perceptual: architecture, loss definitions, sampling, frozen VGG handling."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from svai.checkpoint import find_checkpoint
from svai.cli import app
from svai.run import resolve
from svai.errors import SvaiError
from svai.generate import load_model, translate_batch
from svai.models.autoencoders import (
    Autoencoder,
    AutoencoderOptions,
    Vae,
    VaeOptions,
    VaePerceptual,
    VaePerceptualOptions,
    active_units,
    gaussian_kl,
    kl_term,
    kl_warmup_factor,
    reconstruction_loss,
)
from svai.models.base import Request, StepContext
from svai.models.registry import families, make_family, parameter_counts, presets
from svai.train import train

SIZE = 32
TINY = [f"data.image_size={SIZE}", "model.ngf=8", "model.latent_dim=16", "train.batch_size=2",
        "train.sample_every=0", "train.log_every=1"]
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def images(n: int = 2, seed: int = 0, size: int = SIZE) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def config(model: str, data: Path, steps: int, *extra: str):
    return resolve(model, sets=[*TINY, f"train.steps={steps}", *extra], flags={"data.root": str(data)})


# -- registration and architecture ------------------------------------------------------------
def test_registered_families_presets_and_frozen_declarations() -> None:
    found = families()
    assert (found["ae"], found["vae"], found["vae-perceptual"]) == (Autoencoder, Vae, VaePerceptual)
    assert {"ae", "vae", "vae-perceptual"} <= set(presets())
    assert Autoencoder.frozen_networks == () and Vae.frozen_networks == ()
    assert VaePerceptual.frozen_networks == ("vgg",)
    vae, perceptual = Vae(VaeOptions(), SIZE), VaePerceptual(VaePerceptualOptions(), SIZE)
    assert "vgg" not in vae.build() and not vae.is_frozen("vgg", "features.0.weight")
    assert perceptual.is_frozen("vgg", "features.0.weight") and not perceptual.is_frozen("encoder", "to_code.weight")
    assert Autoencoder.uses == {"intensity"} and Vae.uses == {"intensity", "generator"}


def conv_count(c_in: int, c_out: int, bias: bool) -> int:
    return c_in * c_out * 16 + (c_out if bias else 0)


@pytest.mark.parametrize("family_cls, options, code", [
    (Autoencoder, AutoencoderOptions(), 256), (Vae, VaeOptions(), 512)])
def test_parameter_counts_at_64px_follow_the_layout(family_cls, options, code: int) -> None:
    # ngf 32, four levels to a 4×4 map: 32, 64, 128, 256 channels; batch norm (2 parameters
    # per channel, no conv bias) after every conv but the encoder's first and decoder's last.
    nets = family_cls(options, 64).build()
    widths = [32, 64, 128, 256]
    encoder = conv_count(3, 32, True) + sum(conv_count(a, b, False) + 2 * b for a, b in zip(widths, widths[1:]))
    encoder += 256 * 16 * code + code
    decoder = 256 * (256 * 16) + 256 * 16
    decoder += sum(conv_count(b, a, False) + 2 * a for a, b in zip(widths, widths[1:])) + conv_count(32, 3, True)
    assert sum(p.numel() for p in nets["encoder"].parameters()) == encoder
    assert sum(p.numel() for p in nets["decoder"].parameters()) == decoder


@pytest.mark.parametrize("size, depth, bottleneck", [(32, 3, 4), (48, 3, 6), (64, 4, 4), (256, 6, 4)])
def test_depth_follows_the_image_size_to_a_small_map(size: int, depth: int, bottleneck: int) -> None:
    family = Autoencoder(AutoencoderOptions(ngf=4, latent_dim=8), size)
    assert (family.depth, family.bottleneck) == (depth, bottleneck)
    out = family.translate(family.build(), images(1, size=size))
    assert out.shape == (1, 3, size, size)


def test_image_size_checks_name_data_image_size() -> None:
    with pytest.raises(SvaiError, match=r"data.image_size divisible by 16; got 40"):
        Autoencoder(AutoencoderOptions(), 40)
    with pytest.raises(SvaiError, match=r"model.depth=5 needs data.image_size divisible by 32.*got 48"):
        Autoencoder(AutoencoderOptions(depth=5), 48)
    assert Autoencoder(AutoencoderOptions(depth=2), 32).bottleneck == 8


def test_perceptual_options_are_checked() -> None:
    with pytest.raises(SvaiError, match="model.perceptual_layers: unknown vgg16 layer 'relu9_9'"):
        VaePerceptualOptions(perceptual_layers=("relu9_9",))
    with pytest.raises(SvaiError, match="model.perceptual_layer_weights: expected 3 weights"):
        VaePerceptualOptions(perceptual_layer_weights=(1.0,))
    with pytest.raises(SvaiError, match="model.perceptual_weight must be > 0"):
        VaePerceptualOptions(perceptual_weight=0)
    options = VaePerceptualOptions(perceptual_layers=("relu1_2", "relu2_2"), perceptual_layer_weights=(0.5, 2))
    assert options.layer_weights == {"relu1_2": 0.5, "relu2_2": 2.0}


# -- loss definitions -------------------------------------------------------------------------
def test_gaussian_kl_closed_form_and_torch_distributions() -> None:
    mean = torch.tensor([[1.0, 0.0, 0.0], [0.0, -2.0, 0.0]])
    logvar = torch.tensor([[0.0, 1.0, 0.0], [math.log(0.25), 0.0, 0.0]])
    # ½(μ² + σ² − 1 − log σ²) by hand.
    expected = torch.tensor([[0.5, 0.5 * (math.e - 2), 0.0], [0.5 * (0.25 - 1 - math.log(0.25)), 2.0, 0.0]])
    kl = gaussian_kl(mean, logvar)
    torch.testing.assert_close(kl, expected)
    prior = torch.distributions.Normal(torch.zeros(2, 3), torch.ones(2, 3))
    reference = torch.distributions.kl_divergence(torch.distributions.Normal(mean, (0.5 * logvar).exp()), prior)
    torch.testing.assert_close(kl, reference)


def test_free_bits_floor_each_dimension_of_the_batch_mean() -> None:
    kl = torch.tensor([[0.0, 1.0, 4.0], [0.2, 3.0, 0.0]])  # batch means 0.1, 2.0, 2.0
    assert kl_term(kl, 0.0).item() == pytest.approx(4.1)
    assert kl_term(kl, 0.5).item() == pytest.approx(0.5 + 2.0 + 2.0)
    assert kl_term(kl, 3.0).item() == pytest.approx(9.0)


def test_kl_warmup_is_a_linear_ramp() -> None:
    assert [kl_warmup_factor(step, 4) for step in (0, 1, 2, 4, 100)] == [0.0, 0.25, 0.5, 1.0, 1.0]
    assert kl_warmup_factor(0, 0) == 1.0


def test_active_units_count_dimensions_whose_mean_varies_over_the_batch() -> None:
    # Population variances over the batch: 0, 1, 0.0025, 0.0225.
    mean = torch.tensor([[3.0, 1.0, 0.05, 0.15], [3.0, -1.0, -0.05, -0.15]])
    assert active_units(mean) == 2
    assert active_units(mean, threshold=0.001) == 3
    assert active_units(mean[:1]) == 0


def test_reconstruction_losses_by_hand() -> None:
    fake, real = torch.tensor([0.0, 1.0, -1.0, 0.5]), torch.tensor([0.5, 1.0, 1.0, 0.0])
    assert reconstruction_loss(fake, real, "l1").item() == pytest.approx((0.5 + 0 + 2 + 0.5) / 4)
    assert reconstruction_loss(fake, real, "l2").item() == pytest.approx((0.25 + 0 + 4 + 0.25) / 4)


def test_perceptual_loss_is_zero_for_identical_images_and_positive_otherwise(use_vgg_weights: Path) -> None:
    family = VaePerceptual(VaePerceptualOptions(ngf=4, latent_dim=8), SIZE)
    nets = family.build()
    family.load_pretrained(nets)
    a, b = images(2, seed=1), images(2, seed=2)
    assert family.perceptual(nets["vgg"], a, a.clone()).item() == 0.0
    assert family.perceptual(nets["vgg"], a, b).item() > 0.0
    fake = a.clone().requires_grad_(True)
    family.perceptual(nets["vgg"], fake, b).backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert all(p.grad is None for p in nets["vgg"].parameters())


def test_vae_loss_is_reconstruction_plus_warmed_up_kl() -> None:
    torch.manual_seed(0)
    family = Vae(VaeOptions(ngf=4, latent_dim=8, kl_weight=0.01, kl_warmup_steps=10), SIZE)
    nets = family.build()
    batch = {"before": images(4, seed=1), "after": images(4, seed=2)}
    total, logs = family.loss("G", nets, batch, StepContext(), step=5)
    assert logs["kl_weight"] == pytest.approx(0.005)
    assert logs["G"] == pytest.approx(logs["recon"] + 0.005 * logs["kl"], rel=1e-5)
    assert 0 <= logs["active_dims"] <= 8 and logs["kl"] >= 0
    total.backward()
    assert all(p.grad is not None for p in nets["encoder"].parameters())


def test_ae_loss_is_the_chosen_reconstruction() -> None:
    torch.manual_seed(0)
    for kind in ("l1", "l2"):
        family = Autoencoder(AutoencoderOptions(ngf=4, latent_dim=8, reconstruction=kind), SIZE)
        nets = family.build()
        batch = {"before": images(2, seed=1), "after": images(2, seed=2)}
        for net in nets.values():
            net.eval()
        _, logs = family.loss("G", nets, batch, StepContext(), step=0)
        expected = reconstruction_loss(family.translate(nets, batch["before"]), batch["after"], kind)
        assert logs["recon"] == pytest.approx(expected.item(), rel=1e-6) and logs["G"] == logs["recon"]


# -- inference --------------------------------------------------------------------------------
def test_seed_gives_a_repeatable_sample_and_no_seed_the_mean() -> None:
    torch.manual_seed(0)
    family = Vae(VaeOptions(ngf=4, latent_dim=8), SIZE)
    nets = family.build()
    for net in nets.values():
        net.eval()
    before = images(2)
    mean_a = family.translate(nets, before, Request(generator=None))
    mean_b = family.translate(nets, before)
    torch.testing.assert_close(mean_a, mean_b, rtol=0, atol=0)
    seeded = [family.translate(nets, before, Request(generator=torch.Generator().manual_seed(s))) for s in (7, 7, 8)]
    torch.testing.assert_close(seeded[0], seeded[1], rtol=0, atol=0)
    assert not torch.equal(seeded[0], seeded[2]) and not torch.equal(seeded[0], mean_a)
    with pytest.raises(SvaiError, match="--seed: ae models do not use it"):
        Autoencoder(AutoencoderOptions(), SIZE).check_request(["generator"])


def test_intensity_scales_the_change_through_the_output_head() -> None:
    torch.manual_seed(0)
    family = Vae(VaeOptions(ngf=4, latent_dim=8, output="residual"), SIZE)
    nets = family.build()
    before = images(2)
    # Untrained residual output is the before image; after a change, α = 0 still is.
    torch.testing.assert_close(family.translate(nets, before), before, rtol=0, atol=0)
    torch.nn.init.normal_(nets["decoder"].output_layer.weight, 0, 0.05)
    full, half = (family.translate(nets, before, Request(intensity=a)) for a in (1.0, 0.5))
    torch.testing.assert_close(family.translate(nets, before, Request(intensity=0.0)), before, rtol=0, atol=0)
    assert not torch.equal(full, before)
    inside = (full.abs() < 0.99) & (before.abs() < 0.99)
    torch.testing.assert_close((half - before)[inside], 0.5 * (full - before)[inside], rtol=1e-4, atol=1e-5)


# -- the training loop, checkpoints and the frozen VGG ----------------------------------------
def test_exact_resume_reloads_the_vgg_and_logs_active_dims(
        tiny_dataset: Path, tmp_path: Path, use_vgg_weights: Path) -> None:
    one_go = train(config("vae-perceptual", tiny_dataset, 4), tmp_path / "one")
    assert one_go.step == 4
    first = train(config("vae-perceptual", tiny_dataset, 4), tmp_path / "two", should_stop=lambda step: step == 2)
    assert first.interrupted and find_checkpoint(tmp_path / "two").step == 2
    resumed = train(config("vae-perceptual", tiny_dataset, 4), tmp_path / "two", resume=True)
    assert resumed.start_step == 2 and resumed.step == 4
    a = load_file(str(find_checkpoint(tmp_path / "one").path / "weights.safetensors"))
    b = load_file(str(find_checkpoint(tmp_path / "two").path / "weights.safetensors"))
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    records = [json.loads(line) for line in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for record in records:
        assert {"recon", "kl", "kl_weight", "perceptual", "G"} <= set(record)
        assert record["active_dims"] == int(record["active_dims"]) and 0 <= record["active_dims"] <= 16


def test_checkpoints_hold_no_vgg_and_generation_needs_no_vgg_file(
        tiny_dataset: Path, tmp_path: Path, use_vgg_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    train(config("vae-perceptual", tiny_dataset, 2), run)
    weights = find_checkpoint(run).path / "weights.safetensors"
    stored = load_file(str(weights))
    assert stored and not [k for k in stored if k.startswith("vgg.")]
    assert {k.split(".")[0] for k in stored} == {"encoder", "decoder"}
    family = VaePerceptual(config("vae-perceptual", tiny_dataset, 2).model, SIZE)
    nets = family.build()
    trained_bytes = sum(t.numel() * t.element_size() for name in ("encoder", "decoder")
                        for t in nets[name].state_dict().values())
    vgg_bytes = sum(t.numel() * t.element_size() for t in nets["vgg"].state_dict().values())
    # The file is the trained networks plus a small JSON header; the VGG alone would be larger.
    assert trained_bytes <= weights.stat().st_size <= trained_bytes + 64 * 1024 < vgg_bytes

    empty = tmp_path / "no-weights"
    empty.mkdir()
    monkeypatch.setenv("SVAI_WEIGHTS_DIR", str(empty))
    monkeypatch.setenv("TORCH_HOME", str(empty))
    model = load_model(run, device="cpu")
    assert set(model.nets) == {"encoder", "decoder"}
    pixels = (images(1)[0].permute(1, 2, 0).add(1).mul(127.5)).round().to(torch.uint8).numpy()
    out = translate_batch(model, [pixels], Request(generator=torch.Generator().manual_seed(3)))
    assert out[0].shape == pixels.shape


def test_a_missing_vgg_file_fails_before_the_first_step(
        tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "no-weights"
    empty.mkdir()
    monkeypatch.setenv("SVAI_WEIGHTS_DIR", str(empty))
    monkeypatch.setenv("TORCH_HOME", str(empty))
    events: list[dict] = []
    with pytest.raises(SvaiError) as caught:
        train(config("vae-perceptual", tiny_dataset, 2), tmp_path / "run", on_event=events.append)
    message = str(caught.value)
    assert "\n" not in message and "vgg16-397923af.pth" in message and "svai weights fetch vgg16" in message
    assert events == [] and not (tmp_path / "run").exists()
    # Listing the model needs no file: VGG-16 up to relu3_3, seven 3×3 convolutions.
    channels = [3, 64, 64, 128, 128, 256, 256, 256]
    vgg = sum(a * b * 9 + b for a, b in zip(channels, channels[1:]))
    assert parameter_counts(make_family(config("vae-perceptual", tiny_dataset, 2)))["vgg"] == vgg

    run = tmp_path / "cli-run"
    result = CliRunner().invoke(app, ["train", "--model", "vae-perceptual", "--data", str(tiny_dataset),
                                      "--out", str(run), "--steps", "2", *[x for s in TINY for x in ("--set", s)]])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "svai weights fetch vgg16" in lines[0], result.stderr
    assert not (run / "log.jsonl").exists()


@pytest.mark.parametrize("name", ["ae", "vae", "vae-perceptual"])
def test_example_config_resolves(name: str) -> None:
    resolved = resolve(config_file=EXAMPLES / f"{name}.yaml", flags={"data.root": "somewhere"})
    assert resolved.name == name and resolved.family == name

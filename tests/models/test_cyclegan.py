"""CycleGAN family and its attention presets: architecture, phases, unpaired losses, pools."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from svai.config import build_dataclass
from svai.errors import SvaiError
from svai.models.cyclegan import CycleGAN, CycleGANOptions
from svai.models.gan_training import ImagePool
from svai.models.layers import ResnetBlock, SelfAttention
from svai.models.registry import families, resolve_model

from tests.support.models import changed, count_parameters, each_phase, snapshot, step_losses

SMALL = dict(ngf=8, ndf=8)
PRESETS = ["cyclegan", "cyclegan-attn", "cyclegan-attn-gd"]
TRAINED = ("G_AB", "G_BA", "D_A", "D_B")


def attention_parameters(channels: int) -> int:
    """SAGAN block: two 1×1 convs C -> C/8, one C -> C (weights + biases), and γ."""
    reduced = channels // 8
    return 2 * (channels * reduced + reduced) + (channels * channels + channels) + 1


def preset_options(name: str, **changes: object) -> CycleGANOptions:
    family_cls, preset = resolve_model(name)
    assert family_cls is CycleGAN
    return CycleGANOptions(**{**preset.get("model", {}), **changes})


def make_batch(size: int, batch: int = 2, seed: int = 0, after: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    before = torch.rand(batch, 3, size, size, generator=g) * 2 - 1
    return {
        "before": before,
        "after": torch.full_like(before, float("nan")) if after is None else after,
        "after_unpaired": torch.rand(batch, 3, size, size, generator=g) * 2 - 1,
        "mask": torch.zeros(batch, 1, size, size),
        "procedures": torch.zeros(batch, 3),
    }


def test_registered_with_reference_defaults() -> None:
    assert families()["cyclegan"] is CycleGAN
    o = preset_options("cyclegan")
    assert (o.ngf, o.ndf, o.norm, o.n_layers_d, o.dropout) == (64, 64, "instance", 3, 0.0)
    assert (o.gan_mode, o.lambda_cycle, o.lambda_identity, o.pool_size) == ("lsgan", 10.0, 0.5, 50)
    assert (o.lr, o.beta1, o.beta2, o.lr_decay_fraction) == (2e-4, 0.5, 0.999, 0.5)
    assert o.attention == "none"
    assert preset_options("cyclegan-attn").attention == "generator"
    assert preset_options("cyclegan-attn-gd").attention == "generator+discriminator"
    assert CycleGAN.paired is False


@pytest.mark.parametrize("preset", PRESETS)
def test_parameter_counts(preset: str) -> None:
    family = CycleGAN(preset_options(preset), 256)
    with torch.device("meta"):
        nets = family.build()
    attention = family.options.attention
    # Reference resnet_9blocks / basic D counts, plus one SAGAN block where asked
    # (G: 4·ngf = 256 trunk channels; D: 8·ndf = 512 channels before the last conv).
    g_expected = 11_378_179 + (attention_parameters(256) if attention != "none" else 0)
    d_expected = 2_764_737 + (attention_parameters(512) if attention == "generator+discriminator" else 0)
    for name in ("G_AB", "G_BA"):
        assert count_parameters(nets[name]) == g_expected
    for name in ("D_A", "D_B"):
        assert count_parameters(nets[name]) == d_expected
    assert isinstance(nets["pool_A"], ImagePool) and nets["pool_A"].size == 50
    assert isinstance(nets["pool_B"], ImagePool)
    assert family.inference_networks() == ("G_AB",)


@pytest.mark.parametrize(("size", "blocks"), [(256, 9), (512, 9), (128, 6), (64, 6)])
def test_residual_blocks_follow_image_size(size: int, blocks: int) -> None:
    with torch.device("meta"):
        g = CycleGAN(CycleGANOptions(**SMALL), size).build()["G_AB"]
    assert sum(isinstance(m, ResnetBlock) for m in g.modules()) == blocks


def test_attention_sits_mid_trunk() -> None:
    family = CycleGAN(preset_options("cyclegan-attn-gd", **SMALL), 256)
    g = family.build()["G_AB"]
    order: list[str] = []
    for name, module in g.named_modules():
        if isinstance(module, (ResnetBlock, SelfAttention)):
            module.register_forward_hook(lambda m, i, o, name=name: order.append(name))
    with torch.no_grad():
        g(torch.zeros(1, 3, 32, 32))
    assert order.index("attention") == 4  # after 4 of the 9 residual blocks
    assert len(order) == 10


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("size", [32, 64])
def test_translate_shape_and_range(preset: str, size: int) -> None:
    family = CycleGAN(preset_options(preset, **SMALL), size)
    nets = family.build()
    before = torch.randn(2, 3, size, size) * 3
    out = family.translate(nets, before)
    assert out.shape == before.shape and out.abs().max() <= 1.0
    with torch.no_grad():
        assert torch.equal(out, nets["G_AB"](before))
    with pytest.raises(SvaiError, match=r"\(2, 3, 30, 30\)"):
        family.translate(nets, torch.zeros(2, 3, 30, 30))


@pytest.mark.parametrize("preset", ["cyclegan-attn", "cyclegan-attn-gd"])
def test_attention_variant_equals_plain_at_init(preset: str) -> None:
    torch.manual_seed(0)
    plain = CycleGAN(CycleGANOptions(**SMALL), 32).build()
    attention = CycleGAN(preset_options(preset, **SMALL, attention_heads=2), 32).build()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    for name in TRAINED:
        result = attention[name].load_state_dict(plain[name].state_dict(), strict=False)
        assert not result.unexpected_keys
        assert all("attention" in k for k in result.missing_keys)
        has_attention = any(isinstance(m, SelfAttention) for m in attention[name].modules())
        assert bool(result.missing_keys) == has_attention
        with torch.no_grad():
            torch.testing.assert_close(attention[name](x), plain[name](x), rtol=0, atol=1e-6)


def test_same_seed_same_weights() -> None:
    family = CycleGAN(CycleGANOptions(**SMALL), 32)
    torch.manual_seed(5)
    a = family.build()
    torch.manual_seed(5)
    b = family.build()
    for name in TRAINED:
        for pa, pb in zip(a[name].parameters(), b[name].parameters()):
            assert torch.equal(pa, pb)
    assert not torch.equal(a["G_AB"].stem[1].weight, a["G_BA"].stem[1].weight)


def test_phases_follow_reference_order() -> None:
    phases = CycleGAN(CycleGANOptions(), 64).phases()
    assert [(p.name, p.networks) for p in phases] == [("G", ("G_AB", "G_BA")), ("D", ("D_A", "D_B"))]
    assert all(p.lr == 2e-4 and p.betas == (0.5, 0.999) for p in phases)


@pytest.mark.parametrize("preset", PRESETS)
def test_one_training_step_never_reads_paired_after(preset: str) -> None:
    torch.manual_seed(0)
    family = CycleGAN(preset_options(preset, **SMALL), 32)
    nets = family.build()
    opts = {
        p.name: torch.optim.Adam(itertools.chain(*(nets[n].parameters() for n in p.networks)), lr=p.lr, betas=p.betas)
        for p in family.phases()
    }
    batch, ctx = make_batch(32), {}  # batch["after"] is NaN: reading it would poison every loss
    expected_logs = {
        "G": {"G_gan_AB", "G_gan_BA", "cycle_A", "cycle_B", "idt_A", "idt_B", "G"},
        "D": {"D_A", "D_B", "D"},
    }
    for phase in each_phase(family, nets):
        others = [n for n in TRAINED if n not in phase.networks]
        before_trained = {n: snapshot(nets[n]) for n in phase.networks}
        before_others = {n: snapshot(nets[n]) for n in others}
        loss, logs = family.loss(phase.name, nets, batch, ctx, 0)
        assert set(logs) == expected_logs[phase.name]
        assert torch.isfinite(loss)
        assert all(torch.isfinite(torch.tensor(v)) for v in logs.values())
        loss.backward()
        assert all(p.grad is None for n in others for p in nets[n].parameters())
        opts[phase.name].step()
        assert all(changed(nets[n], before_trained[n]) for n in phase.networks)
        assert not any(changed(nets[n], before_others[n]) for n in others)
        if phase.name == "G":
            identity = 0.5 * 10.0 * (logs["idt_A"] + logs["idt_B"])
            cycle = 10.0 * (logs["cycle_A"] + logs["cycle_B"])
            assert logs["G"] == pytest.approx(logs["G_gan_AB"] + logs["G_gan_BA"] + cycle + identity, rel=1e-5)
    # The D step pushed this step's generated images into both pools.
    assert int(nets["pool_A"].count) == 2 and int(nets["pool_B"].count) == 2


def test_losses_ignore_paired_after_entirely() -> None:
    family = CycleGAN(CycleGANOptions(**SMALL), 32)
    nets = family.build()
    results = []
    for after in (torch.zeros(2, 3, 32, 32), torch.ones(2, 3, 32, 32)):
        torch.manual_seed(1)
        ctx: dict = {}
        results.append([family.loss(p.name, nets, make_batch(32, after=after), ctx, 0)[1] for p in family.phases()])
    assert results[0] == results[1]


def test_discriminator_judges_its_own_domain() -> None:
    family = CycleGAN(CycleGANOptions(**SMALL), 32)
    nets = family.build()
    batch = make_batch(32)
    seen: dict[str, list[torch.Tensor]] = {"D_A": [], "D_B": []}
    for name in seen:
        nets[name].register_forward_pre_hook(lambda m, args, name=name: seen[name].append(args[0]))
    family.loss("D", nets, batch, {}, 0)
    assert any(torch.equal(x, batch["before"]) for x in seen["D_A"])
    assert any(torch.equal(x, batch["after_unpaired"]) for x in seen["D_B"])


def test_identity_loss_can_be_disabled() -> None:
    family = CycleGAN(CycleGANOptions(**SMALL, lambda_identity=0.0), 32)
    _, logs = family.loss("G", family.build(), make_batch(32), {}, 0)
    assert "idt_A" not in logs and "idt_B" not in logs


def test_batch_of_one_trains() -> None:
    family = CycleGAN(preset_options("cyclegan-attn-gd", **SMALL), 32)
    for loss in step_losses(family, family.build(), make_batch(32, batch=1)):
        assert torch.isfinite(loss)


def test_pools_round_trip_through_state_dict() -> None:
    family = CycleGAN(CycleGANOptions(**SMALL, pool_size=3), 32)
    nets = family.build()
    for step in range(2):
        family.loss("D", nets, make_batch(32, seed=step), {}, step)
    fresh = family.build()
    for name in ("pool_A", "pool_B"):
        fresh[name].load_state_dict(nets[name].state_dict())
        assert torch.equal(fresh[name].images, nets[name].images)
        assert int(fresh[name].count) == 3


def test_lr_factor_endpoints() -> None:
    family = CycleGAN(CycleGANOptions(), 32)
    assert family.lr_factor(0, 200) == 1.0
    assert family.lr_factor(100, 200) == 1.0
    assert family.lr_factor(150, 200) == pytest.approx(0.5)
    assert family.lr_factor(200, 200) == 0.0


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (dict(n_blocks=-1), "model.n_blocks"),
        (dict(gan_mode="wgan"), "model.gan_mode"),
        (dict(norm="group"), "model.norm"),
        (dict(lambda_cycle=-1.0), "model.lambda_cycle"),
        (dict(lambda_identity=-0.5), "model.lambda_identity"),
        (dict(pool_size=-2), "model.pool_size"),
        (dict(attention="discriminator"), "model.attention"),
        (dict(attention="generator", attention_heads=5), "model.attention_heads"),
        (dict(attention="generator+discriminator", ndf=4, attention_heads=8), "model.attention_heads"),
        (dict(attention="generator", attention_position=7), "model.attention_position"),
        (dict(lr_decay_fraction=-0.1), "model.lr_decay_fraction"),
        (dict(n_layers_d=5), "model.n_layers_d"),
    ],
)
def test_bad_options_name_the_key(change: dict, key: str) -> None:
    # Built as the config layer builds them: choices are checked by type, ranges by the
    # options themselves, and what needs the image size by the family.
    with pytest.raises(SvaiError, match=key) as error:
        CycleGAN(build_dataclass(CycleGANOptions, change, "model"), 64)
    assert "\n" not in str(error.value)


def test_range_checks_hold_for_options_built_in_code() -> None:
    with pytest.raises(SvaiError, match="model.pool_size"):
        CycleGANOptions(pool_size=-1)
    with pytest.raises(SvaiError, match="model.n_blocks"):
        dataclasses.replace(CycleGANOptions(), n_blocks=-1)


def test_image_size_must_be_divisible_by_four() -> None:
    with pytest.raises(SvaiError, match="image size"):
        CycleGAN(CycleGANOptions(), 66)


def test_losses_under_bf16_autocast() -> None:
    family = CycleGAN(preset_options("cyclegan-attn-gd", **SMALL), 32)
    nets = family.build()
    for loss in step_losses(family, nets, make_batch(32), bf16=True):
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert nets["pool_A"].images.dtype == torch.float32

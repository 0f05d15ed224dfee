"""pix2pix family: reference architecture, phases, losses, options, attention variant."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
from torch import nn

from svai.config import build_dataclass
from svai.errors import SvaiError
from svai.models.base import Phase
from svai.models.pix2pix import Pix2Pix, Pix2PixOptions
from svai.models.registry import families, resolve_model
from tests.support.models import changed, count_parameters, each_phase, snapshot, step_losses

SMALL = dict(ngf=8, ndf=8)


def make_batch(size: int, batch: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "before": torch.rand(batch, 3, size, size, generator=g) * 2 - 1,
        "after": torch.rand(batch, 3, size, size, generator=g) * 2 - 1,
        "after_unpaired": torch.rand(batch, 3, size, size, generator=g) * 2 - 1,
        "mask": torch.zeros(batch, 1, size, size),
        "procedures": torch.zeros(batch, 3),
    }


def optimisers(family: Pix2Pix, nets: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
    return {
        phase.name: torch.optim.Adam(
            itertools.chain(*(nets[n].parameters() for n in phase.networks)), lr=phase.lr, betas=phase.betas
        )
        for phase in family.phases()
    }


def test_registered_with_reference_defaults() -> None:
    assert families()["pix2pix"] is Pix2Pix
    family_cls, preset = resolve_model("pix2pix")
    assert family_cls is Pix2Pix and preset["family"] == "pix2pix"
    o = Pix2PixOptions(**preset.get("model", {}))
    assert (o.ngf, o.ndf, o.norm, o.n_layers_d) == (64, 64, "batch", 3)
    assert (o.gan_mode, o.lambda_l1, o.dropout) == ("vanilla", 100.0, 0.5)
    assert (o.lr, o.beta1, o.beta2, o.lr_decay_fraction) == (2e-4, 0.5, 0.999, 0.5)
    assert o.attention == "none"
    assert Pix2Pix.paired is True


def test_reference_parameter_counts() -> None:
    family = Pix2Pix(Pix2PixOptions(), 256)
    with torch.device("meta"):
        nets = family.build()
    assert count_parameters(nets["G"]) == 54_413_955  # unet_256
    assert count_parameters(nets["D"]) == 2_768_705   # basic D on 6 channels, batch norm
    assert family.inference_networks() == ("G",)


@pytest.mark.parametrize(("size", "depth"), [(256, 8), (128, 7), (64, 6), (32, 5), (96, 5)])
def test_unet_depth_follows_image_size(size: int, depth: int) -> None:
    assert Pix2Pix(Pix2PixOptions(), size).depth == depth


def test_dropout_only_in_inner_decoder_levels() -> None:
    with torch.device("meta"):
        g = Pix2Pix(Pix2PixOptions(), 256).build()["G"]
    dropouts = [m for m in g.modules() if isinstance(m, nn.Dropout)]
    # unet_256: num_downs - 5 = 3 levels with dropout 0.5.
    assert len(dropouts) == 3 and all(m.p == 0.5 for m in dropouts)


def test_discriminator_sees_before_and_after() -> None:
    family = Pix2Pix(Pix2PixOptions(**SMALL), 32)
    nets = family.build()
    first = next(m for m in nets["D"].modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == 6
    seen: list[torch.Tensor] = []
    nets["D"].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    batch = make_batch(32)
    family.loss("D", nets, batch, {}, 0)
    assert all(x.shape[1] == 6 for x in seen)
    # Real pair: the before photo stacked on the after photo.
    assert any(torch.equal(x, torch.cat([batch["before"], batch["after"]], 1)) for x in seen)


@pytest.mark.parametrize("size", [32, 64])
def test_translate_shape_and_range(size: int) -> None:
    family = Pix2Pix(Pix2PixOptions(**SMALL), size)
    nets = family.build()
    before = torch.randn(2, 3, size, size) * 3
    out = family.translate(nets, before)
    assert out.shape == before.shape and out.abs().max() <= 1.0
    with pytest.raises(SvaiError, match=r"\(2, 3, 30, 30\)"):
        family.translate(nets, torch.zeros(2, 3, 30, 30))


def test_same_seed_same_weights() -> None:
    family = Pix2Pix(Pix2PixOptions(**SMALL), 32)
    torch.manual_seed(5)
    a = family.build()
    torch.manual_seed(5)
    b = family.build()
    for name in ("G", "D"):
        for (ka, pa), (kb, pb) in zip(a[name].state_dict().items(), b[name].state_dict().items()):
            assert ka == kb and torch.equal(pa, pb)


def test_phases_follow_reference_order() -> None:
    phases = Pix2Pix(Pix2PixOptions(), 64).phases()
    assert [p.name for p in phases] == ["D", "G"]
    assert phases[0] == Phase("D", ("D",), 2e-4, (0.5, 0.999))
    assert phases[1] == Phase("G", ("G",), 2e-4, (0.5, 0.999))


@pytest.mark.parametrize("attention", ["none", "generator+discriminator"])
def test_one_training_step(attention: str) -> None:
    torch.manual_seed(0)
    family = Pix2Pix(Pix2PixOptions(**SMALL, attention=attention), 32)
    nets = family.build()
    opts = optimisers(family, nets)
    g_calls = []
    nets["G"].register_forward_hook(lambda m, i, o: g_calls.append(1))
    batch, ctx = make_batch(32), {}
    expected_logs = {"D": {"D_fake", "D_real", "D"}, "G": {"G_gan", "G_l1", "G"}}
    for phase in each_phase(family, nets):
        trained, other = ("D", "G") if phase.name == "D" else ("G", "D")
        before_trained, before_other = snapshot(nets[trained]), snapshot(nets[other])
        loss, logs = family.loss(phase.name, nets, batch, ctx, 0)
        assert set(logs) == expected_logs[phase.name]
        assert torch.isfinite(loss) and all(torch.isfinite(torch.tensor(v)) for v in logs.values())
        for net in nets.values():
            net.zero_grad(set_to_none=True)
        loss.backward()
        assert all(p.grad is None for p in nets[other].parameters())
        opts[phase.name].step()
        assert changed(nets[trained], before_trained)
        assert not changed(nets[other], before_other)
    assert len(g_calls) == 1  # the generated image is made once and shared through ctx
    assert logs["G"] == pytest.approx(logs["G_gan"] + 100.0 * logs["G_l1"], rel=1e-5)


def test_batch_of_one_trains() -> None:
    family = Pix2Pix(Pix2PixOptions(**SMALL), 32)
    for loss in step_losses(family, family.build(), make_batch(32, batch=1)):
        assert torch.isfinite(loss)


def test_l1_term_is_zero_for_a_perfect_generator() -> None:
    family = Pix2Pix(Pix2PixOptions(**SMALL), 32)
    nets = family.build()
    batch = make_batch(32)
    _, logs = family.loss("G", nets, batch, {"fake": batch["after"].clone()}, 0)
    assert logs["G_l1"] == 0.0


def test_attention_variant_equals_plain_at_init() -> None:
    torch.manual_seed(0)
    plain = Pix2Pix(Pix2PixOptions(**SMALL), 32).build()
    attention = Pix2Pix(Pix2PixOptions(**SMALL, attention="generator+discriminator", attention_heads=2), 32).build()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    pair = torch.cat([x, x], 1)
    for name in ("G", "D"):
        result = attention[name].load_state_dict(plain[name].state_dict(), strict=False)
        assert not result.unexpected_keys
        assert result.missing_keys and all("attention" in k for k in result.missing_keys)
        plain[name].eval()
        attention[name].eval()
        inp = x if name == "G" else pair
        with torch.no_grad():
            torch.testing.assert_close(attention[name](inp), plain[name](inp), rtol=0, atol=1e-6)


def test_lr_factor_endpoints() -> None:
    family = Pix2Pix(Pix2PixOptions(), 32)
    assert family.lr_factor(0, 1000) == 1.0
    assert family.lr_factor(500, 1000) == 1.0
    assert family.lr_factor(750, 1000) == pytest.approx(0.5)
    assert family.lr_factor(1000, 1000) == 0.0


@pytest.mark.parametrize(
    ("change", "size", "key"),
    [
        (dict(unet_depth=7), 64, "model.unet_depth"),
        (dict(unet_depth=4), 64, "model.unet_depth"),
        (dict(gan_mode="hinge"), 64, "model.gan_mode"),
        (dict(norm="layer"), 64, "model.norm"),
        (dict(dropout=1.5), 64, "model.dropout"),
        (dict(lr=0.0), 64, "model.lr"),
        (dict(beta1=1.0), 64, "model.beta1"),
        (dict(lr_decay_fraction=2.0), 64, "model.lr_decay_fraction"),
        (dict(attention="everywhere"), 64, "model.attention"),
        (dict(attention="generator", attention_heads=3), 64, "model.attention_heads"),
        (dict(attention="generator", attention_position=6), 64, "model.attention_position"),
        (dict(ngf=0), 64, "model.ngf"),
        (dict(n_layers_d=6), 64, "model.n_layers_d"),
    ],
)
def test_bad_options_name_the_key(change: dict, size: int, key: str) -> None:
    # Built as the config layer builds them: choices are checked by type, ranges by the
    # options themselves, and what needs the image size by the family.
    with pytest.raises(SvaiError, match=key) as error:
        Pix2Pix(build_dataclass(Pix2PixOptions, change, "model"), size)
    assert "\n" not in str(error.value)


def test_range_checks_hold_for_options_built_in_code() -> None:
    with pytest.raises(SvaiError, match="model.lambda_l1"):
        Pix2PixOptions(lambda_l1=-1.0)
    with pytest.raises(SvaiError, match="model.unet_depth"):
        dataclasses.replace(Pix2PixOptions(), unet_depth=4)


def test_image_size_must_halve_five_times() -> None:
    with pytest.raises(SvaiError, match="image size"):
        Pix2Pix(Pix2PixOptions(), 48)


def test_losses_under_bf16_autocast() -> None:
    family = Pix2Pix(Pix2PixOptions(**SMALL, attention="generator+discriminator"), 32)
    for loss in step_losses(family, family.build(), make_batch(32), bf16=True):
        assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_procedure_maps_condition_the_generator_on_the_strengths() -> None:
    from svai.models.base import Request
    from svai.models.registry import make_family
    from svai.run import resolve

    plain = make_family(resolve("pix2pix", sets=["data.image_size=32", "model.ngf=8", "model.ndf=8"]))
    family = make_family(resolve("pix2pix", sets=["data.image_size=32", "model.ngf=8", "model.ndf=8",
                                                  "model.procedure_maps=true"]))
    assert "procedures" in family.uses and "procedures" not in plain.uses
    torch.manual_seed(0)
    nets = family.build()
    conv = next(m for m in nets["G"].modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.in_channels == 3 + len(family.procedures)
    before = torch.rand(2, 3, 32, 32) * 2 - 1
    nets["G"].eval()
    nose = family.translate(nets, before, Request(procedures=torch.tensor([[0.0, 1.0, 0.0]])))
    jaw = family.translate(nets, before, Request(procedures=torch.tensor([[0.0, 0.0, 1.0]])))
    assert nose.shape == before.shape and not torch.equal(nose, jaw)
    with pytest.raises(SvaiError, match="pix2pix models need --procedures"):
        family.translate(nets, before, Request())


def test_procedure_maps_train_through_the_loop(tiny_dataset, tmp_path) -> None:
    from svai.run import resolve
    from svai.train import Trainer
    from tests.support.loop_helpers import first_batch

    config = resolve("pix2pix", sets=["data.image_size=32", "model.ngf=8", "model.ndf=8", "train.batch_size=2",
                                      "model.procedure_maps=true", "model.output=warp"],
                     flags={"data.root": str(tiny_dataset)})
    trainer = Trainer(config, tmp_path / "run")
    generator = snapshot(trainer.nets["G"])
    logs = trainer._step(first_batch(trainer), 0)
    assert all(torch.isfinite(torch.tensor(v)) for v in logs.values()) and changed(trainer.nets["G"], generator)

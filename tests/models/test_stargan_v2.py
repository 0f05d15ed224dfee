"""StarGAN v2 family: reference sizes, R1 through the D loss, EMA rule, per-network learning
rates, the reference's update schedule, inference modes and exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from svai.checkpoint import find_checkpoint
from svai.run import resolve
from svai.errors import SvaiError
from svai.models.base import Request, StepContext
from svai.models.registry import families, resolve_model
from svai.models.stargan_v2 import EMA_OF, StarGANv2, StarGANv2Options
from svai.train import Trainer, train
from tests.support.loop_helpers import first_batch
from tests.support.models import count_parameters

SIZE = 32
TINY = dict(ngf=8, ndf=8, max_conv_dim=16, latent_dim=4, style_dim=8, hidden_dim=16)
TINY_SETS = [f"model.{key}={value}" for key, value in TINY.items()]


def tiny_family(**changes: object) -> StarGANv2:
    return StarGANv2(StarGANv2Options(**{**TINY, **changes}), SIZE)


def tiny_nets(family: StarGANv2, seed: int = 0) -> dict[str, nn.Module]:
    torch.manual_seed(seed)
    return family.build()


def images(n: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, SIZE, SIZE, generator=g) * 2 - 1


def trainer(data: Path, run: Path, *sets: str) -> Trainer:
    config = resolve("stargan-v2", sets=[f"data.image_size={SIZE}", "train.batch_size=2", "train.sample_every=0",
                                         *TINY_SETS, *sets], flags={"data.root": str(data)})
    return Trainer(config, run)


# -- configuration and sizes -------------------------------------------------------------------
def test_registered_with_reference_defaults() -> None:
    family_cls, preset = resolve_model("stargan-v2")
    assert families()["stargan-v2"] is StarGANv2 and family_cls is StarGANv2
    o = StarGANv2Options(**preset.get("model", {}))
    assert (o.latent_dim, o.style_dim, o.max_conv_dim, o.hidden_dim) == (16, 64, 512, 512)
    assert (o.lambda_reg, o.lambda_sty, o.lambda_ds, o.lambda_cyc, o.ds_decay_steps) == (1.0, 1.0, 1.0, 1.0, 100_000)
    assert (o.lr, o.mapping_lr, o.beta1, o.beta2, o.weight_decay, o.ema_beta) == (1e-4, 1e-6, 0.0, 0.99, 1e-4, 0.999)
    assert preset["data"]["image_size"] == 256
    assert StarGANv2.uses == frozenset({"intensity", "reference", "generator"})


def test_reference_parameter_counts_at_256_px() -> None:
    # clovaai/stargan-v2 core/model.py at img_size 256, style_dim 64, two domains, w_hpf 0.
    family = StarGANv2(StarGANv2Options(), 256)
    with torch.device("meta"):
        nets = family.build()
    expected = {"G": 33_892_995, "mapping": 2_438_272, "style_encoder": 20_916_928, "D": 20_852_290}
    assert {name: count_parameters(nets[name]) for name in expected} == expected
    for live, ema in EMA_OF.items():
        assert count_parameters(nets[ema]) == expected[live]
        assert not any(p.requires_grad for p in nets[ema].parameters())
    assert family.inference_networks() == ("G_ema", "mapping_ema", "style_encoder_ema")


def test_options_and_image_size_are_checked() -> None:
    with pytest.raises(SvaiError, match="model.lambda_ds"):
        resolve("stargan-v2", sets=["model.lambda_ds=-1"])
    with pytest.raises(SvaiError, match="model.ema_beta"):
        resolve("stargan-v2", sets=["model.ema_beta=1.5"])
    with pytest.raises(SvaiError, match="power-of-two image size"):
        StarGANv2(StarGANv2Options(), 48)


def test_networks_map_to_the_documented_shapes() -> None:
    family = tiny_family()
    nets = tiny_nets(family)
    x = images(3)
    domain = torch.tensor([0, 1, 1])
    s = nets["mapping"](torch.randn(3, TINY["latent_dim"]), domain)
    assert s.shape == (3, TINY["style_dim"])
    assert nets["style_encoder"](x, domain).shape == (3, TINY["style_dim"])
    assert nets["D"](x, domain).shape == (3,)
    assert nets["G"](x, s).shape == x.shape
    # Each row is read from its own domain's head: swapping domains changes the answer.
    assert not torch.allclose(nets["D"](x, domain), nets["D"](x, 1 - domain))


def test_diversity_weight_decays_linearly_to_zero() -> None:
    family = tiny_family(lambda_ds=2.0, ds_decay_steps=100)
    assert [family.lambda_ds(step) for step in (0, 25, 100, 150)] == [2.0, 1.5, 0.0, 0.0]


# -- losses ------------------------------------------------------------------------------------
class QuadraticCritic(nn.Module):
    """D_y(x) = Σ w_y·x² over channels and pixels: ∇ₓD = 2·w_y·x, so R1 has a closed form."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]]))

    def forward(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        return (self.w[domain][:, :, None, None] * x ** 2).flatten(1).sum(1)


@pytest.mark.parametrize("phase", ["D_latent", "D_ref"])
def test_r1_through_the_d_loss_matches_the_closed_form(phase: str) -> None:
    family = tiny_family()
    nets = tiny_nets(family)
    nets["D"] = QuadraticCritic()
    before, after = images(2, seed=1), images(2, seed=2)
    batch = {"before": before, "after": after}
    ctx = StepContext()
    total, logs = family.loss(phase, nets, batch, ctx, step=0)
    # Sources are before (domain 0) then after (domain 1); R1 = ½·mean over sources of ‖2·w_y·x‖².
    x = torch.cat([before, after])
    w = nets["D"].w.detach()[torch.tensor([0, 0, 1, 1])][:, :, None, None]
    expected = 0.5 * (2 * w * x).pow(2).flatten(1).sum(1).mean()
    assert logs[f"{phase}_reg"] == pytest.approx(float(expected), rel=1e-5)
    # λ_reg weighs exactly that penalty: the same draw (ctx keeps the step's latents) without it.
    without, _ = tiny_family(lambda_reg=0.0).loss(phase, nets, batch, ctx, step=0)
    assert float((total - without).detach()) == pytest.approx(float(expected), rel=1e-5)


def test_generator_loss_combines_the_reference_terms() -> None:
    family = tiny_family(lambda_sty=2.0, lambda_ds=3.0, lambda_cyc=5.0, ds_decay_steps=10)
    nets = tiny_nets(family)
    batch = {"before": images(3, seed=1), "after": images(3, seed=2)}
    total, logs = family.loss("G_latent", nets, batch, StepContext(), step=5)
    assert logs["lambda_ds"] == pytest.approx(1.5)
    combined = logs["G_latent_adv"] + 2 * logs["G_latent_sty"] - 1.5 * logs["G_latent_ds"] + 5 * logs["G_latent_cyc"]
    assert float(total.detach()) == pytest.approx(combined, rel=1e-5)
    assert logs["G_latent_ds"] > 0  # two latents give two different images


# -- the real loop -----------------------------------------------------------------------------
def test_mapping_network_learning_rate_and_adam_settings(tiny_dataset: Path, tmp_path: Path) -> None:
    t = trainer(tiny_dataset, tmp_path / "run")
    assert sorted(t.optimizers) == ["D_latent", "G_latent"]  # D_ref and G_ref share them
    groups = t.optimizers["G_latent"].param_groups
    rate = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert {rate[id(p)] for p in t.nets["mapping"].parameters()} == {1e-6}
    assert {rate[id(p)] for p in t.nets["G"].parameters()} == {1e-4}
    assert {rate[id(p)] for p in t.nets["style_encoder"].parameters()} == {1e-4}
    for optimizer in t.optimizers.values():
        assert all(g["betas"] == (0.0, 0.99) and g["weight_decay"] == 1e-4 for g in optimizer.param_groups)


def test_one_step_follows_the_reference_schedule_and_ema_rule(tiny_dataset: Path, tmp_path: Path) -> None:
    t = trainer(tiny_dataset, tmp_path / "run")
    ema_before = {ema: [p.detach().clone() for p in t.nets[ema].parameters()] for ema in EMA_OF.values()}
    logs = t._step(first_batch(t), 0)
    assert {"D_latent", "D_ref", "G_latent", "G_ref", "D_latent_reg", "G_ref_cyc"} <= set(logs)
    # ema ← β·ema + (1 − β)·live with β = 0.999, after the step's updates.
    for live, ema in EMA_OF.items():
        for old, new, current in zip(ema_before[ema], t.nets[ema].parameters(), t.nets[live].parameters()):
            assert torch.equal(new, 0.999 * old + (1 - 0.999) * current.detach())
    trained = {id(p) for opt in t.optimizers.values() for g in opt.param_groups for p in g["params"]}
    assert not any(id(p) in trained for ema in EMA_OF.values() for p in t.nets[ema].parameters())
    # D takes two updates per step (latent, reference), G two, the mapping network and the
    # style encoder one (the reference-guided update trains G alone).
    def adam_steps(phase: str, name: str) -> set[float]:
        optimizer = getattr(t.optimizers[phase], "optimizer", t.optimizers[phase])
        return {float(optimizer.state[p]["step"]) for p in t.nets[name].parameters()}
    assert adam_steps("D_latent", "D") == {2.0}
    assert adam_steps("G_latent", "G") == {2.0}
    assert adam_steps("G_latent", "mapping") == {1.0}
    assert adam_steps("G_latent", "style_encoder") == {1.0}


def test_interrupted_and_resumed_equals_one_go(tiny_dataset: Path, tmp_path: Path) -> None:
    def config(steps: int):
        return resolve("stargan-v2", sets=[f"data.image_size={SIZE}", "train.batch_size=2", "train.sample_every=0",
                                           "train.log_every=1", f"train.steps={steps}", *TINY_SETS],
                       flags={"data.root": str(tiny_dataset)})

    one_go = train(config(4), tmp_path / "one")
    assert one_go.step == 4
    first = train(config(4), tmp_path / "two", should_stop=lambda step: step == 2)
    assert first.interrupted and first.step == 2
    resumed = train(config(4), tmp_path / "two", resume=True)
    assert resumed.start_step == 2 and resumed.step == 4

    a = load_file(str(find_checkpoint(tmp_path / "one").path / "weights.safetensors"))
    b = load_file(str(find_checkpoint(tmp_path / "two").path / "weights.safetensors"))
    assert a.keys() == b.keys()
    assert {key.split(".")[0] for key in a} == {"G", "mapping", "style_encoder", "D", *EMA_OF.values()}
    mismatched = [k for k in a if not torch.equal(a[k], b[k])]
    assert not mismatched, mismatched[:5]
    # the averages moved away from their initial copies
    assert not torch.equal(a["G_ema.from_rgb.weight"], a["G.from_rgb.weight"])
    steps = [json.loads(line)["step"] for line in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


# -- inference ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model() -> tuple[StarGANv2, dict[str, nn.Module]]:
    family = tiny_family()
    nets = tiny_nets(family)
    for net in nets.values():
        net.eval()
    return family, nets


def test_reference_and_latent_guidance_differ(model) -> None:
    family, nets = model
    before = images(2)
    latent = family.translate(nets, before, Request())
    guided = family.translate(nets, before, Request(reference=images(2, seed=5)))
    assert latent.shape == guided.shape == before.shape
    assert not torch.allclose(latent, guided)
    # One reference photo serves the whole batch.
    single = family.translate(nets, before, Request(reference=images(1, seed=5)))
    expected = family.translate(nets, before, Request(reference=images(1, seed=5).expand(2, -1, -1, -1)))
    torch.testing.assert_close(single, expected)


def test_latent_seed_makes_output_repeatable(model) -> None:
    family, nets = model
    before = images(2)

    def with_seed(seed: int) -> torch.Tensor:
        return family.translate(nets, before, Request(generator=torch.Generator().manual_seed(seed)))

    assert torch.equal(with_seed(3), with_seed(3))
    assert not torch.allclose(with_seed(3), with_seed(4))
    assert torch.equal(family.translate(nets, before), family.translate(nets, before))


def test_intensity_blends_from_the_before_style(model) -> None:
    family, nets = model
    before = images(2)
    reference = images(2, seed=7)
    none = family.translate(nets, before, Request(reference=reference, intensity=0.0))
    full = family.translate(nets, before, Request(reference=reference, intensity=1.0))
    assert not torch.allclose(none, full)
    # α = 0 is the before photo re-rendered with its own style; α = 1 the reference's style.
    with torch.no_grad():
        source, target = torch.zeros(2, dtype=torch.long), torch.ones(2, dtype=torch.long)
        own = nets["G_ema"](before, nets["style_encoder_ema"](before, source)).clamp(-1, 1)
        referenced = nets["G_ema"](before, nets["style_encoder_ema"](reference, target)).clamp(-1, 1)
    torch.testing.assert_close(none, own)
    torch.testing.assert_close(full, referenced)
    torch.testing.assert_close(family.translate(nets, before, Request(reference=reference)), full)


def test_translate_uses_the_averages_when_present(model) -> None:
    family, nets = model
    before = images(2)
    live = {name: nets[name] for name in ("G", "mapping", "style_encoder")}
    averaged = {**nets, "G_ema": tiny_nets(family, seed=9)["G"].eval()}
    assert torch.equal(family.translate(live, before), family.translate(nets, before))  # still equal copies
    assert not torch.allclose(family.translate(averaged, before), family.translate(nets, before))


def test_bad_inference_inputs_are_clear_errors(model) -> None:
    family, nets = model
    with pytest.raises(SvaiError, match="intensity"):
        family.translate(nets, images(2), Request(intensity=1.5))
    with pytest.raises(SvaiError, match="--reference"):
        family.translate(nets, images(2), Request(reference=images(3)))
    with pytest.raises(SvaiError, match=r"\(B, 3, 32, 32\)"):
        family.translate(nets, torch.zeros(2, 3, 16, 16))

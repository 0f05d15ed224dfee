"""StarGAN family and its presets: reference architecture, multi-label losses, WGAN-GP, the
n_critic schedule through the real loop, intensity, exact resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from svai.checkpoint import find_checkpoint
from svai.config import RunConfig
from svai.errors import SvaiError
from svai.models.base import Request, StepContext, eval_mode
from svai.models.layers import SelfAttention
from svai.models.penalties import wgan_gradient_penalty
from svai.models.registry import families, make_family, resolve_model
from svai.models.stargan import (
    SmallMapConv2d, StarDiscriminator, StarGAN, StarGANOptions, StarResidualBlock, TrackedInstanceNorm,
    classification_loss, discriminator_layout,
)
from svai.run import resolve
from svai.train import Trainer, prepare_training, train
from tests.support.loop_helpers import first_batch
from tests.support.models import changed, count_parameters, snapshot

SIZE = 32
PRESETS = ["stargan", "stargan-attn", "stargan-mha", "stargan-attn-rec", "stargan-mha-rec", "stargan-attn-gd-rec"]
TINY = [f"data.image_size={SIZE}", "model.ngf=8", "model.ndf=8", "model.n_layers_d=4",
        "train.sample_every=0", "train.log_every=1"]


def attention_parameters(channels: int) -> int:
    """SAGAN block: two 1×1 convs C -> C/8, one C -> C (weights + biases), and γ."""
    reduced = channels // 8
    return 2 * (channels * reduced + reduced) + (channels * channels + channels) + 1


def tiny_family(*sets: str) -> StarGAN:
    family = make_family(resolve("stargan", sets=[*TINY, *sets]))
    assert isinstance(family, StarGAN)
    return family


def make_batch(n: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "before": torch.rand(n, 3, SIZE, SIZE, generator=g) * 2 - 1,
        "after": torch.rand(n, 3, SIZE, SIZE, generator=g) * 2 - 1,
        "mask": torch.zeros(n, 1, SIZE, SIZE),
        # Two procedures at once in the first pair, one in the second.
        "procedures": torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])[:n],
    }


def tiny_trainer(data: Path, run: Path, *sets: str) -> Trainer:
    config = resolve("stargan", sets=[*TINY, "train.batch_size=2", *sets], flags={"data.root": str(data)})
    return Trainer(config, run)


# -- settings and architecture ----------------------------------------------------------------
def test_presets_carry_the_reference_settings() -> None:
    assert families()["stargan"] is StarGAN
    config = resolve("stargan")
    o = config.model
    assert isinstance(o, StarGANOptions) and config.data.image_size == 128
    assert (o.ngf, o.ndf, o.n_res_blocks, o.n_layers_d, o.norm) == (64, 64, 6, 6, "instance")
    assert (o.gan_mode, o.lambda_gp, o.lambda_cls, o.lambda_rec, o.n_critic) == ("wgan-gp", 10.0, 1.0, 10.0, 5)
    assert (o.lr, o.beta1, o.beta2, o.lr_decay_fraction) == (1e-4, 0.5, 0.999, 0.5)
    assert (o.paired_l1, o.attention, o.dropout) == (0.0, "none", 0.0)
    expected = {
        "stargan-attn": ("generator", 1, 10.0),
        "stargan-mha": ("generator", 4, 10.0),
        "stargan-attn-rec": ("generator", 1, 50.0),
        "stargan-mha-rec": ("generator", 4, 50.0),
        "stargan-attn-gd-rec": ("generator+discriminator", 1, 50.0),
    }
    for name, (attention, heads, rec) in expected.items():
        assert resolve_model(name)[0] is StarGAN
        variant, size = resolve(name).model, resolve(name).data.image_size
        assert (variant.attention, variant.attention_heads, variant.lambda_rec) == (attention, heads, rec)
        assert (variant.lr, variant.n_layers_d, size) == (1e-4, 6, 128)
    phases = StarGAN(o, 128).phases()
    assert [(p.name, p.networks, p.every, p.lr, p.betas) for p in phases] == [
        ("D", ("D",), 1, 1e-4, (0.5, 0.999)), ("G", ("G",), 5, 1e-4, (0.5, 0.999))]


@pytest.mark.parametrize("preset", PRESETS)
def test_parameter_counts_are_the_reference_ones(preset: str) -> None:
    config = resolve(preset)
    with torch.device("meta"):
        nets = make_family(config).build()
    attention = config.model.attention
    # yunjey/stargan at 128 px, c_dim 3, conv dims 64, 6 residual blocks, 6 D layers; plus one
    # SAGAN block on G's 256-channel trunk and on D's 2048-channel last map where asked.
    g_expected = 8_424_256 + (attention_parameters(256) if attention != "none" else 0)
    d_expected = 44_745_664 + (attention_parameters(2048) if attention == "generator+discriminator" else 0)
    assert count_parameters(nets["G"]) == g_expected
    assert count_parameters(nets["D"]) == d_expected


@pytest.mark.parametrize(("size", "depth", "side"), [(128, 6, 2), (256, 6, 4), (64, 5, 2), (32, 4, 2), (48, 4, 3)])
def test_discriminator_depth_and_heads(size: int, depth: int, side: int) -> None:
    assert discriminator_layout(size, 6) == (depth, side)
    d = StarDiscriminator(size, n_labels=3, ndf=4, n_layers=6)
    scores, logits = d(torch.zeros(2, 3, size, size))
    assert scores.shape == (2, 1, side, side) and logits.shape == (2, 3)
    strided = [m for m in d.body if isinstance(m, torch.nn.Conv2d)]
    assert len(strided) == depth and strided[-1].out_channels == 4 * 2 ** (depth - 1)
    assert d.classes.kernel_size == (side, side)
    # An explicit shallower stack is kept as asked.
    assert discriminator_layout(size, 2) == (2, size // 4)


@pytest.mark.parametrize("side", [2, 4, 8, 16])
@pytest.mark.parametrize("bias", [True, False])
def test_small_map_convolution_equals_conv2d_with_its_gradients(side: int, bias: bool) -> None:
    torch.manual_seed(0)
    fast = SmallMapConv2d(6, 10, 4, stride=2, padding=1, bias=bias)
    plain = torch.nn.Conv2d(6, 10, 4, stride=2, padding=1, bias=bias)
    plain.load_state_dict(fast.state_dict())
    results = []
    for conv in (fast, plain):
        conv.double()
        g = torch.Generator().manual_seed(1)
        x = torch.randn(3, 6, side, side, generator=g, dtype=torch.float64).requires_grad_(True)
        y = conv(x)
        # First and second order, as the gradient penalty differentiates through the input gradient.
        (dx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
        dx.square().sum().backward()
        results.append((y.detach(), dx.detach(), conv.weight.grad.clone()))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


def test_attention_sits_mid_trunk_and_before_the_discriminator_heads() -> None:
    family = tiny_family("model.attention=generator+discriminator")
    nets = family.build()
    order: list[str] = []
    for name, module in nets["G"].named_modules():
        if isinstance(module, (StarResidualBlock, SelfAttention)):
            module.register_forward_hook(lambda m, i, o, name=name: order.append(name))
    with torch.no_grad():
        nets["G"](torch.zeros(1, 3, SIZE, SIZE), torch.zeros(1, 3))
    assert order.index("attention") == 3 and len(order) == 7  # after 3 of the 6 residual blocks
    d = nets["D"]
    assert isinstance(d.attention, SelfAttention) and d.attention.value.in_channels == d.source.in_channels == 64


def test_labels_steer_the_generator_and_inference_uses_per_image_statistics() -> None:
    torch.manual_seed(0)
    g = tiny_family().build()["G"]
    x = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    with torch.no_grad():
        plain = g(x, torch.zeros(2, 3))
        nose = g(x, torch.tensor([[0.0, 1.0, 0.0]] * 2))
        stats = [m.running_mean.clone() for m in g.modules() if isinstance(m, TrackedInstanceNorm)]
        assert stats and not torch.equal(plain, nose)
        with eval_mode({"G": g}):
            evaluated = g(x, torch.zeros(2, 3))
        # Training mode updates the running statistics (as the reference); eval mode neither
        # uses nor changes them, so inference normalises each image by itself as the
        # reference's inference does.
        torch.testing.assert_close(evaluated, plain)
        after = [m.running_mean for m in g.modules() if isinstance(m, TrackedInstanceNorm)]
        assert all(torch.equal(a, b) for a, b in zip(stats, after))
        assert any(bool(s.abs().sum() > 0) for s in stats)


# -- losses ------------------------------------------------------------------------------------
def test_classification_loss_is_summed_binary_cross_entropy_over_the_batch() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5], [-0.3, 1.5, -2.0]])
    labels = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])  # two procedures on at once
    expected = F.binary_cross_entropy_with_logits(logits, labels, reduction="sum") / 2
    p = torch.sigmoid(logits)
    by_hand = -(labels * p.log() + (1 - labels) * (1 - p).log()).sum() / 2
    torch.testing.assert_close(classification_loss(logits, labels), expected)
    torch.testing.assert_close(classification_loss(logits, labels), by_hand)


def test_domains_pair_each_photo_with_its_partners_label() -> None:
    family = tiny_family()
    nets = family.build()
    batch = make_batch()
    seen: list[torch.Tensor] = []
    forward = nets["G"].forward
    nets["G"].forward = lambda x, labels: (seen.append(labels.detach().clone()), forward(x, labels))[1]
    family.loss("G", nets, batch, StepContext(), step=0)
    none = torch.zeros(2, 3)
    procedures = batch["procedures"]
    # Translation: before -> its procedures, after -> no procedure; reconstruction: back.
    assert torch.equal(seen[0], torch.cat([procedures, none]))
    assert torch.equal(seen[1], torch.cat([none, procedures]))


def test_discriminator_loss_includes_the_gradient_penalty_and_the_real_labels() -> None:
    torch.manual_seed(0)
    results = {}
    for weight in (0.0, 10.0):
        family = tiny_family(f"model.lambda_gp={weight}")
        torch.manual_seed(1)
        nets = family.build()
        torch.manual_seed(2)
        loss, logs = family.loss("D", nets, make_batch(), StepContext(), step=1)
        results[weight] = (float(loss.detach()), logs)
    (loss_0, logs_0), (loss_10, logs_10) = results[0.0], results[10.0]
    assert logs_0["D_gp"] == logs_10["D_gp"] > 0
    assert loss_10 - loss_0 == pytest.approx(10.0 * logs_10["D_gp"], rel=1e-5)
    # The same penalty as the shared function on the same images and draws.
    family = tiny_family()
    torch.manual_seed(1)
    nets = family.build()
    real, original, target = family.domains(make_batch())
    with torch.no_grad():
        fake = nets["G"](real, target)
    torch.manual_seed(2)
    expected = wgan_gradient_penalty(nets["D"], real, fake)
    assert logs_10["D_gp"] == pytest.approx(float(expected.detach()), rel=1e-6)
    with torch.no_grad():
        scores, logits = nets["D"](real)
    assert logs_10["D_cls"] == pytest.approx(float(classification_loss(logits, original)), rel=1e-5)
    assert logs_10["D_real"] == pytest.approx(-float(scores.mean()), rel=1e-5)


def test_paired_l1_adds_the_distance_to_the_after_photo() -> None:
    batch = make_batch()
    totals = {}
    for weight in (0.0, 3.0):
        family = tiny_family(f"model.paired_l1={weight}")
        torch.manual_seed(1)
        nets = family.build()
        loss, logs = family.loss("G", nets, batch, StepContext(), step=0)
        totals[weight] = (float(loss.detach()), logs)
    with torch.no_grad():
        distance = F.l1_loss(nets["G"](batch["before"], batch["procedures"]), batch["after"])
    assert "G_l1" not in totals[0.0][1]
    assert totals[3.0][1]["G_l1"] == pytest.approx(float(distance), rel=1e-5)
    assert totals[3.0][0] - totals[0.0][0] == pytest.approx(3.0 * float(distance), rel=1e-4)


# -- the real loop -----------------------------------------------------------------------------
def test_generator_trains_only_every_n_critic_steps(tiny_dataset: Path, tmp_path: Path) -> None:
    t = tiny_trainer(tiny_dataset, tmp_path / "run")
    batch = first_batch(t)
    for step in range(7):
        g, d = snapshot(t.nets["G"]), snapshot(t.nets["D"])
        logs = t._step(batch, step)
        due = step % 5 == 0
        assert changed(t.nets["D"], d) and "D_gp" in logs
        assert changed(t.nets["G"], g) == due and ("G" in logs) == due, step
        if due:
            assert {"G_fake", "G_cls", "G_rec"} <= set(logs)


def test_intensity_scales_the_change_in_proportion(tiny_dataset: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = resolve("stargan", sets=[*TINY, "train.batch_size=2", "train.steps=30"],
                     flags={"data.root": str(tiny_dataset)})
    t = prepare_training(config, tmp_path / "run")
    t.run()
    data = first_batch(t)
    before, procedures = data["before"], data["procedures"]
    with eval_mode(t.nets):
        outputs = {alpha: t.family.translate(t.nets, before, Request(procedures=procedures, intensity=alpha))
                   for alpha in (0.0, 0.25, 0.5, 0.75, 1.0)}
        default = t.family.translate(t.nets, before, Request(procedures=procedures))
    torch.testing.assert_close(default, outputs[1.0])
    # α scales the change from the before photo: 0 is the photo itself, the rest in proportion.
    assert torch.equal(outputs[0.0], before)
    distance = {alpha: float((outputs[alpha] - before).abs().mean()) for alpha in (0.25, 0.5, 0.75, 1.0)}
    assert distance[1.0] > 0
    for alpha in (0.25, 0.5, 0.75):
        assert distance[alpha] / distance[1.0] == pytest.approx(alpha, rel=1e-4), distance


def test_interrupted_and_resumed_equals_one_go(tiny_dataset: Path, tmp_path: Path) -> None:
    # Stopped at step 3, between G updates (steps 0 and 5): the resumed run must pick up the
    # n_critic schedule, the instance norms' running statistics, both optimisers and the RNG.
    sets = [*TINY, "train.batch_size=2", "train.steps=8"]
    def config() -> RunConfig:
        return resolve("stargan-attn-gd-rec", sets=sets, flags={"data.root": str(tiny_dataset)})
    one_go = train(config(), tmp_path / "one")
    assert one_go.step == 8 and not one_go.interrupted
    first = train(config(), tmp_path / "two", should_stop=lambda step: step == 3)
    assert first.interrupted and first.step == 3 and find_checkpoint(tmp_path / "two").step == 3
    resumed = train(config(), tmp_path / "two", resume=True)
    assert resumed.start_step == 3 and resumed.step == 8
    a = load_file(str(find_checkpoint(tmp_path / "one").path / "weights.safetensors"))
    b = load_file(str(find_checkpoint(tmp_path / "two").path / "weights.safetensors"))
    assert a.keys() == b.keys() and any("running_mean" in k for k in a)
    mismatched = [k for k in a if not torch.equal(a[k], b[k])]
    assert not mismatched, mismatched[:5]
    records = [json.loads(line) for line in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 9))
    # Steps 1 and 6 (0-based 0 and 5) updated G.
    assert [r["step"] for r in records if "G" in r] == [1, 6]
    assert all(math.isfinite(r["D"]) for r in records)


# -- inference -----------------------------------------------------------------------------------
def test_translate_asks_for_procedures_and_checks_the_request() -> None:
    family = tiny_family()
    nets = family.build()
    before = torch.zeros(2, 3, SIZE, SIZE)
    for request in (None, Request(), Request(intensity=0.5)):
        with pytest.raises(SvaiError) as error:
            family.translate(nets, before, request)
        assert "--procedures" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(SvaiError, match=r"got shape \(2, 2\)"):
        family.translate(nets, before, Request(procedures=torch.ones(2, 2)))
    with pytest.raises(SvaiError, match="between 0 and 1"):
        family.translate(nets, before, Request(procedures=torch.ones(2, 3), intensity=1.5))
    with pytest.raises(SvaiError, match=r"\(2, 3, 30, 30\)"):
        family.translate(nets, torch.zeros(2, 3, 30, 30), Request(procedures=torch.ones(2, 3)))
    # One row of strengths serves the whole batch.
    out = family.translate(nets, before, Request(procedures=torch.tensor([[0.0, 1.0, 0.5]])))
    assert out.shape == before.shape and out.abs().max() <= 1
    family.check_request(["procedures", "intensity"])
    with pytest.raises(SvaiError, match="--reference"):
        family.check_request(["reference"])


def test_out_of_range_options_name_the_key() -> None:
    for key, value in (("n_critic", 0), ("lambda_rec", -1.0), ("paired_l1", -0.5), ("n_res_blocks", -1)):
        with pytest.raises(SvaiError, match=rf"^model\.{key} "):
            resolve("stargan", sets=[f"model.{key}={value}"])
    with pytest.raises(SvaiError, match="model.gan_mode"):
        resolve("stargan", sets=["model.gan_mode=lsgan"])
    with pytest.raises(SvaiError, match="attention_heads"):
        tiny_family("model.attention=generator", "model.attention_heads=3")
    with pytest.raises(SvaiError, match="attention_position"):
        tiny_family("model.attention=generator", "model.attention_position=7")


def test_the_labels_follow_the_runs_procedure_vocabulary() -> None:
    family = tiny_family("data.procedures=[eyes, nose, jaw, lips]")
    assert family.procedures == ("eyes", "nose", "jaw", "lips")
    nets = family.build()
    assert nets["G"].stem[0].in_channels == 3 + 4 and nets["D"].classes.out_channels == 4
    before = torch.zeros(2, 3, SIZE, SIZE)
    out = family.translate(nets, before, Request(procedures=torch.tensor([[0.0, 0.0, 0.0, 1.0]] * 2)))
    assert out.shape == before.shape
    with pytest.raises(SvaiError, match=r"expected \(2, 4\) strengths over eyes, nose, jaw, lips"):
        family.translate(nets, before, Request(procedures=torch.ones(2, 3)))

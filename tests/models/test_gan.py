"""gan family: DCGAN architecture and initialisation, the conditional discriminator, losses
against hand computations, options, output modes, exact resume."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from svai.checkpoint import find_checkpoint
from svai.run import resolve
from svai.errors import SvaiError
from svai.models.base import Phase, Request
from svai.models.gan import Dcgan, DcganOptions, halvings
from svai.models.registry import families
from svai.train import train
from tests.support.models import count_parameters, each_phase

SMALL = dict(ngf=8, ndf=8, code_channels=16)
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def make_batch(size: int = 32, n: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"before": torch.rand(n, 3, size, size, generator=g) * 2 - 1,
            "after": torch.rand(n, 3, size, size, generator=g) * 2 - 1,
            "mask": torch.zeros(n, 1, size, size), "procedures": torch.zeros(n, 3)}


class ConstantCritic(nn.Module):
    """A stand-in discriminator answering the same logit for every pair it is shown."""

    def __init__(self, logit: float) -> None:
        super().__init__()
        self.logit = logit
        self.scale = nn.Parameter(torch.ones(()))
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach())
        return torch.full((x.shape[0], 1, 1, 1), self.logit) * self.scale


def test_registered_with_the_dcgan_settings() -> None:
    assert families()["gan"] is Dcgan
    o = resolve("gan").model
    assert isinstance(o, DcganOptions)
    assert (o.ngf, o.ndf, o.norm, o.n_layers_d, o.code_channels) == (64, 64, "batch", 8, 100)
    assert (o.gan_mode, o.lambda_l1, o.dropout, o.output) == ("vanilla", 0.0, 0.0, "direct")
    assert (o.lr, o.beta1, o.beta2, o.lr_decay_fraction, o.init_gain) == (2e-4, 0.5, 0.999, 0.0, 0.02)
    family = Dcgan(o, 64)
    assert family.phases() == [Phase("D", ("D",), 2e-4, (0.5, 0.999)), Phase("G", ("G",), 2e-4, (0.5, 0.999))]
    assert family.lr_factor(500, 1000) == 1.0 and family.inference_networks() == ("G",)


def test_discriminator_parameter_count_at_64_px_from_the_layer_shapes() -> None:
    with torch.device("meta"):
        nets = Dcgan(DcganOptions(), 64).build()
    # 4×4 kernels; 6 input channels (before and after stacked); bias-free convolutions;
    # batch norm (scale and shift) after the middle three.
    convs = [(6, 64), (64, 128), (128, 256), (256, 512), (512, 1)]
    norms = [128, 256, 512]
    expected = sum(i * o * 16 for i, o in convs) + sum(2 * c for c in norms)
    assert expected == 2_768_640
    assert count_parameters(nets["D"]) == expected
    # The DCGAN generator (pytorch/examples netG: z of 100 to a 64 px image) is the decoder.
    decoder = [(100, 512), (512, 256), (256, 128), (128, 64), (64, 3)]
    assert count_parameters(nets["G"].decoder) == sum(i * o * 16 for i, o in decoder) + 2 * (512 + 256 + 128 + 64)
    encoder = [(3, 64), (64, 128), (128, 256), (256, 512), (512, 100)]
    assert count_parameters(nets["G"].encoder) == sum(i * o * 16 for i, o in encoder) + 2 * (128 + 256 + 512)


def test_dcgan_initialisation_statistics() -> None:
    torch.manual_seed(0)
    nets = Dcgan(DcganOptions(), 64).build()
    for name, net in nets.items():
        convs = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        weights = torch.cat([m.weight.detach().flatten() for m in convs])
        assert abs(float(weights.mean())) < 1e-3 and abs(float(weights.std()) - 0.02) < 5e-4, name
        norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
        scales = torch.cat([m.weight.detach() for m in norms])
        assert abs(float(scales.mean()) - 1.0) < 3e-3 and abs(float(scales.std()) - 0.02) < 3e-3, name
        assert all(float(m.bias.detach().abs().max()) == 0 for m in norms), name


def test_layer_kinds_follow_the_dcgan_guidelines() -> None:
    nets = Dcgan(DcganOptions(**SMALL), 64).build()
    g, d = nets["G"], nets["D"]
    # No pooling anywhere; ReLU in G with tanh out, LeakyReLU(0.2) in D.
    assert not any(isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) for net in nets.values() for m in net.modules())
    assert {type(m) for m in g.modules() if isinstance(m, (nn.ReLU, nn.LeakyReLU))} == {nn.ReLU}
    assert isinstance(g.decoder[-1], nn.Tanh)
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in g.decoder) == 5
    leaky = [m for m in d.modules() if isinstance(m, nn.LeakyReLU)]
    assert leaky and all(m.negative_slope == 0.2 for m in leaky)
    assert not any(isinstance(m, nn.ReLU) for m in d.modules())
    # No batch norm on D's input layer or G's output layer.
    assert isinstance(d.model[1], nn.LeakyReLU) and isinstance(g.decoder[-2], nn.ConvTranspose2d)
    x = torch.rand(3, 6, 64, 64) * 2 - 1
    assert d(x).shape == (3, 1, 1, 1)
    assert g.encoder(x[:, :3]).shape == (3, 16, 1, 1)


@pytest.mark.parametrize(("size", "count"), [(64, 4), (32, 3), (128, 5), (96, 4), (8, 1), (6, 0)])
def test_encoder_halves_down_to_a_map_of_at_least_four(size: int, count: int) -> None:
    assert halvings(size) == count


@pytest.mark.parametrize(("size", "n_layers_d", "strided", "kernel"), [(64, 8, 4, 4), (256, 8, 6, 4), (32, 8, 3, 4),
                                                                        (64, 2, 2, 16), (96, 8, 4, 6)])
def test_discriminator_halves_like_the_encoder_up_to_n_layers_d(
        size: int, n_layers_d: int, strided: int, kernel: int) -> None:
    with torch.device("meta"):
        d = Dcgan(DcganOptions(**SMALL, n_layers_d=n_layers_d), size).build()["D"]
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert [m.stride for m in convs] == [(2, 2)] * strided + [(1, 1)]
    assert convs[-1].kernel_size == (kernel, kernel) and convs[-1].out_channels == 1


@pytest.mark.parametrize("size", [32, 96])
def test_translate_shape_and_range(size: int) -> None:
    family = Dcgan(DcganOptions(**SMALL), size)
    nets = family.build()
    for net in nets.values():
        net.eval()
    before = torch.rand(2, 3, size, size) * 2 - 1
    out = family.translate(nets, before)
    assert out.shape == before.shape and out.abs().max() <= 1
    with pytest.raises(SvaiError, match=r"got shape \(2, 3, 16, 16\)"):
        family.translate(nets, torch.zeros(2, 3, 16, 16))


def test_discriminator_judges_before_after_pairs() -> None:
    family = Dcgan(DcganOptions(**SMALL), 32)
    nets = family.build()
    nets["D"] = ConstantCritic(0.0)
    batch, ctx = make_batch(), {}
    family.loss("D", nets, batch, ctx, 0)
    fake, real = nets["D"].seen  # the generated pair first, as pix2pix (`PairedGan`)
    assert torch.equal(real, torch.cat([batch["before"], batch["after"]], 1))
    assert torch.equal(fake[:, :3], batch["before"]) and torch.equal(fake[:, 3:], ctx["fake"].detach())


@pytest.mark.parametrize("logit", [0.0, 1.5, -2.0])
def test_generator_loss_is_the_adversarial_term_only_by_default(logit: float) -> None:
    torch.manual_seed(0)
    family = Dcgan(DcganOptions(**SMALL), 32)
    nets = family.build()
    nets["D"] = ConstantCritic(logit)
    loss, logs = family.loss("G", nets, make_batch(), {}, 0)
    # Non-saturating loss −log σ(c) = log(1 + e^(−c)), the same for every pair.
    expected = math.log1p(math.exp(-logit))
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-6)
    assert logs["G"] == pytest.approx(expected, rel=1e-6) and logs["G_gan"] == pytest.approx(expected, rel=1e-6)


def test_lambda_l1_adds_the_distance_to_the_after_photo_and_lsgan_squares() -> None:
    torch.manual_seed(0)
    family = Dcgan(DcganOptions(**SMALL, lambda_l1=3.0, gan_mode="lsgan"), 32)
    nets = family.build()
    nets["D"] = ConstantCritic(0.25)
    batch, ctx = make_batch(), {}
    loss, _ = family.loss("G", nets, batch, ctx, 0)
    l1 = float((ctx["fake"].detach() - batch["after"]).abs().mean())
    assert float(loss.detach()) == pytest.approx((0.25 - 1) ** 2 + 3.0 * l1, rel=1e-6)
    loss_d, logs = family.loss("D", nets, batch, ctx, 0)
    assert float(loss_d.detach()) == pytest.approx((0.25 - 1) ** 2 + 0.25 ** 2, rel=1e-6)
    assert set(logs) == {"D_real", "D_fake", "D"}


def test_one_step_trains_each_network_and_leaves_d_untouched_by_g() -> None:
    torch.manual_seed(0)
    family = Dcgan(DcganOptions(**SMALL), 32)
    nets = family.build()
    batch, ctx = make_batch(), {}
    for phase in each_phase(family, nets):
        loss, _ = family.loss(phase.name, nets, batch, ctx, 0)
        assert torch.isfinite(loss)
        loss.backward()
        other = "G" if phase.name == "D" else "D"
        assert all(p.grad is None for p in nets[other].parameters())
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in nets[phase.name].parameters())


@pytest.mark.parametrize("mode", ["residual", "masked", "warp"])
def test_output_modes_start_as_the_identity_and_intensity_zero_returns_the_before(mode: str) -> None:
    family = Dcgan(DcganOptions(**SMALL, output=mode), 32)
    nets = family.build()
    nets["G"].eval()
    before = torch.rand(2, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(family.translate(nets, before), before, rtol=0, atol=1e-6)
    direct = Dcgan(DcganOptions(**SMALL), 32)
    torch.testing.assert_close(direct.translate(direct.build(), before, Request(intensity=0.0)), before)


def test_options_out_of_range_name_the_key() -> None:
    with pytest.raises(SvaiError, match="even image size"):
        Dcgan(DcganOptions(), 6)
    for key, value in (("lambda_l1", -1), ("code_channels", 0)):
        with pytest.raises(SvaiError, match=rf"^model\.{key} "):
            resolve("gan", sets=[f"model.{key}={value}"])
    for key, value in (("attention", "generator"), ("gan_mode", "wgan-gp")):
        with pytest.raises(SvaiError, match=rf"model\.{key}"):
            resolve("gan", sets=[f"model.{key}={value}"])
    with pytest.raises(SvaiError, match="--reference"):
        Dcgan(DcganOptions(), 32).check_request(["intensity", "reference"])


def test_example_config_resolves() -> None:
    config = resolve(config_file=EXAMPLES / "gan.yaml", flags={"data.root": "somewhere"})
    assert config.family == "gan" and config.name == "gan"


def test_interrupted_and_resumed_equals_one_go(tiny_dataset: Path, tmp_path: Path) -> None:
    def config():
        return resolve("gan", sets=["data.image_size=32", "model.ngf=8", "model.ndf=8", "model.code_channels=8",
                                    "model.lambda_l1=1", "model.dropout=0.2", "train.batch_size=2",
                                    "train.steps=4", "train.sample_every=0"],
                       flags={"data.root": str(tiny_dataset)})
    train(config(), tmp_path / "one")
    assert train(config(), tmp_path / "two", should_stop=lambda step: step == 2).interrupted
    resumed = train(config(), tmp_path / "two", resume=True)
    assert resumed.start_step == 2 and resumed.step == 4
    a = load_file(str(find_checkpoint(tmp_path / "one").path / "weights.safetensors"))
    b = load_file(str(find_checkpoint(tmp_path / "two").path / "weights.safetensors"))
    assert a.keys() == b.keys() and any("running_mean" in k for k in a)
    assert not [k for k in a if not torch.equal(a[k], b[k])]
    assert all(torch.isfinite(v.float()).all() for v in a.values())

"""Shared GAN options: choices checked by the config layer, ranges by the options, reference defaults."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from typing import Literal

import pytest

from svai.config import build_dataclass
from svai.run import resolve
from svai.errors import SvaiError
from svai.models.cyclegan import CycleGANOptions
from svai.models.options import GanMode, GanOptions
from svai.models.pix2pix import Pix2PixOptions
from svai.models.registry import families

# Every registered family built on the shared options, so a new one gets these checks too.
GAN_FAMILIES: dict[str, type] = {
    name: cls.Options for name, cls in families().items() if issubclass(cls.Options, GanOptions)
}
SHARED = {f.name for f in dataclasses.fields(GanOptions)}
# The shared options without a common reference default: each family sets its own.
PER_FAMILY_DEFAULTS = {"norm", "dropout", "gan_mode"}
# Shared options a family's paper sets otherwise, each for a stated reason.
PAPER_DEFAULTS = {
    # DCGAN: the discriminator halves down to 4×4 whatever the size (n_layers_d is its cap),
    # the learning rate is constant, and the paper has no attention variant.
    "gan": {"n_layers_d", "lr_decay_fraction", "attention"},
}


def literal_fields(options_cls: type) -> dict[str, tuple[str, ...]]:
    hints = typing.get_type_hints(options_cls)
    return {key: typing.get_args(hint) for key, hint in hints.items() if typing.get_origin(hint) is Literal}


def choice_cases() -> list[tuple[str, str, tuple[str, ...]]]:
    return [
        (family, key, choices)
        for family, options_cls in GAN_FAMILIES.items()
        for key, choices in literal_fields(options_cls).items()
    ]


def test_the_reference_families_are_covered() -> None:
    assert {"pix2pix", "cyclegan"} <= set(GAN_FAMILIES)
    assert {"norm", "gan_mode", "attention"} <= set(literal_fields(GanOptions))


@pytest.mark.parametrize(("family", "key", "choices"), choice_cases())
def test_unknown_choice_is_one_line_naming_key_and_choices(family: str, key: str, choices: tuple[str, ...]) -> None:
    with pytest.raises(SvaiError) as error:
        resolve(family, sets=[f"model.{key}=not-a-choice"])
    message = str(error.value)
    assert message.startswith(f"model.{key}:") and "\n" not in message
    assert "not-a-choice" in message
    assert all(repr(choice) in message for choice in choices)


@pytest.mark.parametrize(("family", "key", "choices"), choice_cases())
def test_every_listed_choice_is_accepted(family: str, key: str, choices: tuple[str, ...]) -> None:
    for choice in choices:
        assert getattr(resolve(family, sets=[f"model.{key}={choice}"]).model, key) == choice


def test_families_narrow_the_gan_modes() -> None:
    every_mode = set(typing.get_args(GanMode))
    assert {"vanilla", "lsgan", "wgan-gp"} <= every_mode
    assert set(literal_fields(Pix2PixOptions)["gan_mode"]) == {"vanilla", "lsgan"}
    assert set(literal_fields(CycleGANOptions)["gan_mode"]) == {"lsgan", "vanilla"}
    for options_cls in GAN_FAMILIES.values():
        assert set(literal_fields(options_cls)["gan_mode"]) <= every_mode
    # The shared type keeps the Wasserstein loss open to families that train a critic.
    assert build_dataclass(GanOptions, {"gan_mode": "wgan-gp"}, "model").gan_mode == "wgan-gp"
    for family in ("pix2pix", "cyclegan"):
        with pytest.raises(SvaiError) as error:
            resolve(family, sets=["model.gan_mode=wgan-gp"])
        assert str(error.value).startswith("model.gan_mode: expected ")


@pytest.mark.parametrize("family", sorted(GAN_FAMILIES))
def test_families_redeclare_only_the_defaults_that_differ(family: str) -> None:
    options_cls = GAN_FAMILIES[family]
    own = set(inspect.get_annotations(options_cls))
    assert own & SHARED <= PER_FAMILY_DEFAULTS | PAPER_DEFAULTS.get(family, set())
    assert SHARED <= {f.name for f in dataclasses.fields(options_cls)}


BAD_RANGES = [
    ("ngf", 0),
    ("ndf", -8),
    ("n_layers_d", 0),
    ("attention_heads", 0),
    ("dropout", 1.0),
    ("dropout", -0.1),
    ("lr", 0.0),
    ("beta1", 1.0),
    ("beta2", -0.5),
    ("lr_decay_fraction", 1.5),
    ("lr_decay_fraction", -0.1),
    ("init_gain", 0.0),
    ("mask_l1", -0.1),
    ("mask_tv", -1.0),
    ("mask_guard", -1.0),
    ("max_displacement", 0.0),
    ("warp_colour", -0.1),
    ("flow_smoothness", -1.0),
]


@pytest.mark.parametrize("family", sorted(GAN_FAMILIES))
@pytest.mark.parametrize(("key", "value"), BAD_RANGES)
def test_out_of_range_shared_option_is_one_line_naming_the_key(family: str, key: str, value: float) -> None:
    with pytest.raises(SvaiError) as error:
        resolve(family, sets=[f"model.{key}={value}"])
    message = str(error.value)
    assert message.startswith(f"model.{key} ") and "\n" not in message
    assert repr(value) in message


@pytest.mark.parametrize(
    ("options_cls", "key", "value"),
    [
        (Pix2PixOptions, "lambda_l1", -1.0),
        (Pix2PixOptions, "unet_depth", 4),
        (CycleGANOptions, "n_blocks", -1),
        (CycleGANOptions, "lambda_cycle", -1.0),
        (CycleGANOptions, "lambda_identity", -0.5),
        (CycleGANOptions, "pool_size", -2),
    ],
)
def test_out_of_range_family_option_is_one_line_naming_the_key(options_cls: type, key: str, value: float) -> None:
    with pytest.raises(SvaiError) as error:
        build_dataclass(options_cls, {key: value}, "model")
    message = str(error.value)
    assert message.startswith(f"model.{key} ") and "\n" not in message


def test_range_edges_are_accepted() -> None:
    edges = dict(dropout=0.0, beta1=0.0, beta2=0.0, lr_decay_fraction=1.0, n_blocks=0, pool_size=0,
                 lambda_identity=0.0)
    options = build_dataclass(CycleGANOptions, edges, "model")
    assert (options.n_blocks, options.pool_size, options.lr_decay_fraction) == (0, 0, 1.0)
    assert build_dataclass(Pix2PixOptions, {"lambda_l1": 0, "unet_depth": 5}, "model").unet_depth == 5


def test_pix2pix_defaults_are_the_reference_ones() -> None:
    # Isola et al. 2017 and the reference --model pix2pix settings.
    o = Pix2PixOptions()
    assert (o.ngf, o.ndf, o.n_layers_d) == (64, 64, 3)
    assert (o.norm, o.dropout, o.gan_mode) == ("batch", 0.5, "vanilla")
    assert o.lambda_l1 == 100.0
    assert (o.lr, o.beta1, o.beta2) == (2e-4, 0.5, 0.999)
    assert (o.attention, o.init_gain) == ("none", 0.02)


def test_cyclegan_defaults_are_the_reference_ones() -> None:
    # Zhu et al. 2017 and the reference --model cycle_gan settings.
    o = CycleGANOptions()
    assert (o.ngf, o.ndf, o.n_layers_d) == (64, 64, 3)
    assert (o.norm, o.dropout, o.gan_mode) == ("instance", 0.0, "lsgan")
    assert (o.lambda_cycle, o.lambda_identity, o.pool_size) == (10.0, 0.5, 50)
    assert (o.lr, o.beta1, o.beta2) == (2e-4, 0.5, 0.999)
    assert (o.attention, o.init_gain) == ("none", 0.02)


def test_resolved_defaults_equal_the_dataclass_defaults() -> None:
    assert resolve("pix2pix").model == Pix2PixOptions()
    assert resolve("cyclegan").model == CycleGANOptions()

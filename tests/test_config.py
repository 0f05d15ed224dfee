from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from svai.config import build_dataclass, parse_set, resolve, TrainConfig
from svai.errors import SvaiError


def test_defaults_then_preset_then_file_then_set_then_flags(tmp_path: Path) -> None:
    plain = resolve("cyclegan")
    assert plain.model.attention == "none"
    preset = resolve("cyclegan-attn")
    assert preset.family == "cyclegan" and preset.model.attention == "generator"

    config_file = tmp_path / "c.yaml"
    config_file.write_text(yaml.safe_dump({"model": {"lambda_cycle": 5.0}, "train": {"steps": 7, "seed": 3}}))
    from_file = resolve("cyclegan-attn", config_file=config_file)
    assert (from_file.model.lambda_cycle, from_file.train.steps, from_file.train.seed) == (5.0, 7, 3)
    assert from_file.model.attention == "generator"  # the preset survives a file that does not mention it

    with_set = resolve("cyclegan-attn", config_file=config_file, sets=["train.steps=9", "model.lambda_cycle=2"])
    assert (with_set.train.steps, with_set.model.lambda_cycle) == (9, 2.0)

    with_flags = resolve("cyclegan-attn", config_file=config_file, sets=["train.steps=9"],
                         flags={"train.steps": 11, "train.seed": None})
    assert with_flags.train.steps == 11
    assert with_flags.train.seed == 3  # an unset flag (None) never overrides


def test_saved_config_round_trips(tmp_path: Path) -> None:
    config = resolve("cyclegan-attn-gd", sets=["train.steps=5", "data.image_size=64"])
    again = resolve(base=yaml.safe_load(config.to_yaml()))
    assert again == config


@pytest.mark.parametrize(
    "sets, message",
    [
        (["model.not_a_key=1"], "unknown key model.not_a_key"),
        (["train.steps=many"], "train.steps: expected int"),
        (["train.steps=1.5"], "train.steps: expected int"),
        (["train.mixed_precision=fp8"], "train.mixed_precision"),
        (["nonsense.key=1"], "unknown key 'nonsense'"),
        (["train.steps"], "expected key=value"),
        (["train.steps=0"], "train.steps must be at least 1"),
        (["data.image_size=100"], "data.image_size must be a multiple of 16"),
    ],
)
def test_errors_name_the_key(sets: list[str], message: str) -> None:
    with pytest.raises(SvaiError, match=message.replace("(", r"\(").replace(".", r"\.")):
        resolve("pix2pix", sets=sets)


def test_unknown_model_lists_the_valid_ones() -> None:
    with pytest.raises(SvaiError) as error:
        resolve("pix3pix")
    assert "pix2pix" in str(error.value) and "cyclegan-attn" in str(error.value)


def test_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(SvaiError, match="file not found"):
        resolve("pix2pix", config_file=tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(SvaiError, match="not valid YAML"):
        resolve("pix2pix", config_file=broken)


def test_set_values_are_yaml_typed() -> None:
    assert parse_set(["a.b=3", "a.c=true", "d=[1, 2]", "e=text"]) == {"a": {"b": 3, "c": True}, "d": [1, 2], "e": "text"}


def test_int_is_accepted_for_float_but_bool_is_not_int() -> None:
    assert build_dataclass(TrainConfig, {"steps": 3}, "train").steps == 3
    with pytest.raises(SvaiError, match="train.steps"):
        build_dataclass(TrainConfig, {"steps": True}, "train")


def test_every_example_config_resolves_and_every_stargan_preset_has_one() -> None:
    from svai.models.registry import presets

    examples = Path(__file__).resolve().parent.parent / "examples"
    configs = sorted(examples.glob("*.yaml"))
    for path in configs:
        config = resolve(config_file=path, flags={"data.root": "somewhere"})
        assert config.name == path.stem, path
    assert {p for p in presets() if p.startswith("stargan")} <= {p.stem for p in configs}

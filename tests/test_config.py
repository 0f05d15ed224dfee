from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from svai.config import build_dataclass, parse_set, TrainConfig
from svai.run import resolve
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


# -- YAML 1.2 numbers, bounded effort, finite values and ranges ------------------------------

from svai.config import MAX_CONFIG_VALUES, parse_yaml  # noqa: E402
from svai.workers import max_workers  # noqa: E402


@pytest.mark.parametrize(("text", "value"), [
    ("010", 10), ("0o10", 8), ("0x1F", 31), ("-7", -7), ("1e3", 1000.0), ("1.5", 1.5),
    ("1:30", "1:30"), ("1_000", "1_000"), ("2024-01-02", "2024-01-02"), ("no", "no"), ("true", True),
])
def test_yaml_scalars_follow_yaml_1_2(text: str, value: object) -> None:
    parsed = parse_yaml(f"v: {text}")["v"]
    assert parsed == value and type(parsed) is type(value)


def test_an_alias_bomb_is_refused_before_anything_walks_it() -> None:
    lines = ["a: &a [1, 2, 3, 4, 5, 6, 7, 8, 9]"]
    for level, name in enumerate("bcdefghi"):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{'abcdefghi'[level]}"] * 9) + "]")
    with pytest.raises(SvaiError, match="aliases"):
        parse_yaml("\n".join(lines))
    assert parse_yaml("a: &x [1, 2]\nb: *x") == {"a": [1, 2], "b": [1, 2]}  # a few aliases are fine
    assert MAX_CONFIG_VALUES >= 1000


def test_a_config_that_contains_itself_is_refused() -> None:
    with pytest.raises(SvaiError, match="aliases"):
        parse_yaml("a: &a [1, *a]")


def test_a_huge_config_file_is_refused_by_its_size(tmp_path: Path) -> None:
    from svai.config import load_yaml

    path = tmp_path / "big.yaml"
    path.write_text("model:\n  name: pix2pix\n# " + "x" * (2 << 20) + "\n")
    with pytest.raises(SvaiError, match="too big"):
        load_yaml(path)


@pytest.mark.parametrize(("sets", "fragment"), [
    (["model.lr=.inf"], "model.lr: expected a finite number"),
    (["model.lr=.nan"], "model.lr: expected a finite number"),
    (["train.grad_clip=1e300"], "train.grad_clip"),
    (["train.seed=-1"], "train.seed must be between 0"),
    (["train.steps=99999999999999999"], "train.steps"),
    (["data.num_workers=100000"], "data.num_workers must be at most"),
    (["model.ngf=100000000"], "model.ngf must be between 1 and 1024"),
    (["train.batch_size=100000"], "train.batch_size must be at most"),
])
def test_numbers_out_of_range_name_the_key(sets: list[str], fragment: str) -> None:
    with pytest.raises(SvaiError, match=fragment.replace(".", r"\.")):
        resolve("pix2pix", sets=sets)


def test_workers_may_use_the_cpus_or_a_few() -> None:
    assert resolve("pix2pix", sets=[f"data.num_workers={max_workers()}"]).data.num_workers == max_workers()
    assert max_workers() >= 8


def test_a_model_too_big_to_build_is_one_line_before_any_allocation() -> None:
    from svai.models.registry import build_on_meta, make_family

    config = resolve("stargan-v2", sets=["model.max_conv_dim=1000000", "model.hidden_dim=1000000"])
    with pytest.raises(SvaiError, match="numbers, over the"):
        build_on_meta(make_family(config))

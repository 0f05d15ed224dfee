"""Run configuration: typed schema, presets, YAML files and `--set` overrides.

Precedence, lowest first: dataclass defaults < preset < `--config FILE` < `--set key=value`
< explicit flags. A flag left unset is `None` and dropped, so it never overrides a preset.
Unknown keys and wrong types are errors that name the key.

A resolved configuration is a plain tree::

    model: {name: cyclegan-attn, family: cyclegan, <family options...>}
    data:  {root: ..., image_size: 128, ...}
    train: {steps: ..., batch_size: ..., ...}
    generate: {composite: false}

Looking a model name up among the families and presets is `svai.run.resolve`: this module
imports nothing from the models.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from svai import __version__
from svai.data.augment import AugmentOptions
from svai.errors import SvaiError
from svai.workers import MIN_WORKER_CAP, max_workers

SECTIONS = ("model", "data", "train", "generate")


class _Loader(yaml.SafeLoader):
    """YAML with the 1.2 core schema's scalars: booleans, integers and floats.

    YAML 1.1, PyYAML's default, also reads yes/no/on/off as booleans (so `--set
    train.mixed_precision=no` would arrive as `false`), `010` as the octal 8, `1:30` as 90 and
    dates as dates; here only true/false are booleans, `010` is ten, `0o10` is eight, and a
    number is written as one (`1e3` included).
    """


_REPLACED = {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
             "tag:yaml.org,2002:timestamp"}
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _REPLACED]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
# Integers before floats: a resolver list is tried in order, and "10" matches both.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+.0123456789"))


def _construct_int(loader: yaml.SafeLoader, node: yaml.Node) -> int:
    text = str(loader.construct_scalar(node))
    if text.startswith(("0o", "0x")):
        return int(text[2:], 8 if text[1] == "o" else 16)
    return int(text, 10)


def _construct_float(loader: yaml.SafeLoader, node: yaml.Node) -> float:
    text = str(loader.construct_scalar(node)).lower()
    if text.endswith(".inf"):
        return float("-inf") if text.startswith("-") else float("inf")
    return float("nan") if text == ".nan" else float(text)


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_Loader.add_constructor("tag:yaml.org,2002:float", _construct_float)

# Bounds on the effort of reading a configuration: a file's size, and the number of values
# once YAML aliases are expanded (a few hundred bytes of nested aliases can stand for
# billions of values, which every later step would walk).
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_VALUES = 10_000


def _expanded_size(tree: Any) -> int:
    """How many values `tree` holds with every alias expanded, stopping past the bound.

    Shared (aliased) parts are sized once each, so this takes time in the size of the text.
    A tree that contains itself has no finite size.
    """
    sizes: dict[int, int] = {}
    open_ids: set[int] = set()

    def size(value: Any) -> int:
        if not isinstance(value, (dict, list)):
            return 1
        key = id(value)
        if key in sizes:
            return sizes[key]
        if key in open_ids:
            return MAX_CONFIG_VALUES + 1
        open_ids.add(key)
        children = [*value.keys(), *value.values()] if isinstance(value, dict) else value
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_CONFIG_VALUES:
                break
        open_ids.discard(key)
        sizes[key] = total
        return total

    return size(tree)


def parse_yaml(text: str) -> Any:
    """Parse a YAML document the way every svai config layer does (YAML 1.2 scalars), with
    bounded effort: at most `MAX_CONFIG_BYTES` of text and `MAX_CONFIG_VALUES` values once
    aliases are expanded. Raises `SvaiError` (too big) or `yaml.YAMLError` (not YAML)."""
    if len(text) > MAX_CONFIG_BYTES:
        raise SvaiError(f"the YAML text is {len(text)} characters, over the {MAX_CONFIG_BYTES} a configuration may hold")
    try:
        tree = yaml.load(text, Loader=_Loader)
    except RecursionError:
        raise SvaiError("the YAML text is nested too deeply to be a configuration") from None
    if _expanded_size(tree) > MAX_CONFIG_VALUES:
        raise SvaiError(f"the YAML text stands for more than {MAX_CONFIG_VALUES} values once its aliases (*name) are "
                        "expanded: write the values out, or use fewer aliases")
    return tree


@dataclass
class DataConfig:
    """Where the prepared dataset is and how it is fed to the model."""

    root: str = ""
    image_size: int = 256
    # The procedures a model conditions on, in column order; empty = the dataset's vocabulary,
    # recorded here when training starts so generation uses the same columns.
    procedures: list[str] = field(default_factory=list)
    # A pair whose image cannot be read: "skip" it with a warning, or stop with an "error".
    on_bad_file: Literal["skip", "error"] = "skip"
    num_workers: int = 0
    cache: bool = True
    augment: AugmentOptions = field(default_factory=AugmentOptions)


@dataclass
class TrainConfig:
    """How long and how the shared loop trains.

    `grad_clip` caps each phase's gradient norm (0 = off). `grad_accumulation` splits every
    step into that many micro-batches of `batch_size` before each optimiser step, so a step
    sees `batch_size × grad_accumulation` pairs per process.
    """

    steps: int = 2000
    batch_size: int = 1
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    seed: int = 0
    log_every: int = 10
    sample_every: int = 250
    sample_count: int = 4
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    evaluate: bool = True
    grad_clip: float = 0.0
    grad_accumulation: int = 1
    # Experiment trackers Accelerate supports (tensorboard, wandb, mlflow, aim …), fed at
    # log_every and sample_every; see svai/tracking.py.
    log_with: list[str] = field(default_factory=list)


@dataclass
class GenerateConfig:
    """How `svai generate` uses the run unless its options say otherwise.

    `composite`: blend each output into its input inside the procedures' region (the
    `--composite` default for this run; `--no-composite` turns it off).
    """

    composite: bool = False


@dataclass
class RunConfig:
    """A fully resolved run: model name, family options, data, training and generation settings."""

    name: str
    family: str
    model: Any
    data: DataConfig
    train: TrainConfig
    generate: GenerateConfig = field(default_factory=GenerateConfig)

    def to_dict(self) -> dict[str, Any]:
        return {
            "svai_version": __version__,
            "model": {"name": self.name, "family": self.family, **to_plain(self.model)},
            "data": to_plain(self.data),
            "train": to_plain(self.train),
            "generate": to_plain(self.generate),
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def to_plain(value: Any) -> Any:
    """Dataclasses -> dicts, tuples -> lists, so the tree dumps as plain YAML."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    return value


# -- type checking --------------------------------------------------------------------------

# Every number in a configuration is bounded before any range check of its own: a 32-bit
# integer and a float far from overflow (a learning rate of 1e300 is not a setting).
MAX_INT = 2**31 - 1
MAX_FLOAT = 1e12


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_describe(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "null"
    if origin in (tuple, list):
        return f"{origin.__name__}[{', '.join(_describe(a) for a in typing.get_args(annotation) if a is not Ellipsis)}]"
    return getattr(annotation, "__name__", str(annotation))


def coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check `value` against a type annotation and return it in that type.

    Accepts what YAML produces: ints where floats are expected, lists where tuples are.
    Raises `SvaiError` naming `key` otherwise.
    """
    def bad() -> SvaiError:
        return SvaiError(f"{key}: expected {_describe(annotation)}, got {value!r}")

    if annotation is Any:
        return value
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        if value in args and type(value) is type(args[args.index(value)]):
            return value
        raise bad()
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return coerce(value, option, key)
            except SvaiError:
                continue
        raise bad()
    if annotation is type(None):
        if value is None:
            return None
        raise bad()
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise bad()
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) > MAX_INT:
                raise SvaiError(f"{key}: {value} is out of range (at most {MAX_INT} in size)")
            return value
        raise bad()
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value) or abs(value) > MAX_FLOAT:
                raise SvaiError(f"{key}: expected a finite number, got {value!r}")
            return float(value)
        raise bad()
    if annotation is str:
        if isinstance(value, str):
            return value
        raise bad()
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise bad()
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise bad()
            return tuple(coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise bad()
        return dict(value)
    if dataclasses.is_dataclass(annotation):
        if dataclasses.is_dataclass(value):
            return value
        if not isinstance(value, dict):
            raise bad()
        return build_dataclass(annotation, value, key)
    raise bad()


def build_dataclass(cls: type, values: dict[str, Any], prefix: str) -> Any:
    """Construct dataclass `cls` from a (partial) mapping, checking keys and types.

    Unknown keys are an error listing the valid ones; missing keys keep their defaults.
    """
    if not isinstance(values, dict):
        raise SvaiError(f"{prefix}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise SvaiError(f"unknown key {prefix}.{unknown[0]}: valid keys are {', '.join(names)}")
    kwargs = {name: coerce(value, hints[name], f"{prefix}.{name}") for name, value in values.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise SvaiError(f"{prefix}: {error}") from None


# -- merging layers -------------------------------------------------------------------------

def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge `override` into a copy of `base` (mappings merge, other values replace)."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_set(items: list[str] | None) -> dict[str, Any]:
    """["train.steps=10", "model.attention=generator"] -> nested dict; values parsed as YAML."""
    tree: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise SvaiError(f"--set {item!r}: expected key=value, e.g. --set train.steps=500")
        try:
            value = parse_yaml(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        except SvaiError as error:
            raise SvaiError(f"--set {key}: {error}") from None
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SvaiError(f"--set {item!r}: {part} is set twice")
        node[parts[-1]] = value
    return tree


def read_yaml_file(path: Path, origin: str = "") -> Any:
    """Parse a YAML file; text that is not UTF-8, not YAML or too big is an error naming the file."""
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise SvaiError(f"{origin}{path}: {path.stat().st_size} bytes is too big for a configuration "
                            f"(at most {MAX_CONFIG_BYTES})")
        return parse_yaml(path.read_bytes().decode("utf-8-sig")) or {}
    except UnicodeDecodeError:
        raise SvaiError(f"{origin}{path}: not a UTF-8 text file (is it a YAML config?)") from None
    except SvaiError as error:
        if str(error).startswith(f"{origin}{path}"):
            raise
        raise SvaiError(f"{origin}{path}: {error}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise SvaiError(f"{origin}{path}:{where} is not valid YAML") from None


def load_yaml(path: Path) -> dict[str, Any]:
    """Read a config YAML: a mapping whose top-level keys are model, data, train and generate."""
    path = Path(path)
    if not path.is_file():
        raise SvaiError(f"--config {path}: file not found")
    tree = read_yaml_file(path, "--config ")
    if not isinstance(tree, dict):
        raise SvaiError(f"--config {path}: expected a mapping with keys {', '.join(SECTIONS)}")
    return tree


def _check_sections(tree: dict[str, Any], origin: str) -> None:
    for key, value in tree.items():
        if key == "svai_version":
            continue
        if key not in SECTIONS:
            raise SvaiError(f"unknown key {key!r} in {origin}: top-level keys are {', '.join(SECTIONS)}")
        if not isinstance(value, dict):
            raise SvaiError(f"{key} in {origin}: expected a mapping, got {value!r}")


def config_layers(
    base: dict[str, Any] | None, config_file: Path | None, sets: list[str] | None, flags: dict[str, Any] | None,
) -> list[tuple[str, dict[str, Any]]]:
    """The layers over a model's preset, lowest first, each named for its errors and checked:
    `base` (a saved run's config, for `--resume`), `config_file`, `sets` and `flags` (dotted
    keys to values, `None` meaning "not given")."""
    layers: list[tuple[str, dict[str, Any]]] = []
    if base is not None:
        layers.append(("the run's config.yaml", base))
    if config_file is not None:
        layers.append((f"--config {config_file}", load_yaml(config_file)))
    layers.append(("--set", parse_set(sets)))
    flag_tree = parse_set([f"{k}={_yaml_scalar(v)}" for k, v in (flags or {}).items() if v is not None])
    layers.append(("options", flag_tree))
    for origin, tree in layers:
        _check_sections(tree, origin)
    return layers


def named_model(model: str | None, layers: list[tuple[str, dict[str, Any]]]) -> str:
    """`model`, else the model the highest layer names."""
    name = model
    if name is None:
        for _, tree in reversed(layers):
            name = tree.get("model", {}).get("name") or tree.get("model", {}).get("family")
            if name:
                break
    if not name:
        raise SvaiError("--model is required: see `svai models` for the choices")
    return name


def merge_layers(name: str, family: Any, preset: dict[str, Any], layers: list[tuple[str, dict[str, Any]]]) -> RunConfig:
    """The checked configuration of model `name`: `family`'s options (its `Options` dataclass)
    under its `preset`, then each layer in turn."""
    tree: dict[str, Any] = {section: {} for section in SECTIONS}
    preset_tree = {section: preset.get(section) or {} for section in SECTIONS}
    for layer in [preset_tree, *(tree for _, tree in layers)]:
        tree = deep_merge(tree, layer)
    options_tree = {k: v for k, v in tree["model"].items() if k not in ("name", "family")}
    options = build_dataclass(family.Options, options_tree, "model")
    data = build_dataclass(DataConfig, tree["data"], "data")
    train = build_dataclass(TrainConfig, tree["train"], "train")
    generate = build_dataclass(GenerateConfig, tree["generate"], "generate")
    config = RunConfig(name=name, family=family.name, model=options, data=data, train=train, generate=generate)
    validate(config)
    return config


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, Path):
        value = str(value)
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def validate(config: RunConfig) -> None:
    """Range checks that types alone cannot express."""
    checks = [
        (config.train.steps >= 1, "train.steps", "must be at least 1"),
        (config.train.steps <= 10**9, "train.steps", "must be at most 1000000000"),
        (config.train.batch_size >= 1, "train.batch_size", "must be at least 1"),
        (config.train.batch_size <= 4096, "train.batch_size", "must be at most 4096"),
        (config.train.seed >= 0, "train.seed", f"must be between 0 and {MAX_INT}"),
        (config.train.log_every >= 1, "train.log_every", "must be at least 1"),
        (config.train.sample_every >= 0, "train.sample_every", "must be 0 (off) or more"),
        (0 <= config.train.sample_count <= 64, "train.sample_count", "must be between 0 and 64"),
        (config.train.checkpoint_every >= 0, "train.checkpoint_every", "must be 0 (only at the end) or more"),
        (config.train.keep_checkpoints >= 1, "train.keep_checkpoints", "must be at least 1"),
        (config.train.keep_checkpoints <= 1000, "train.keep_checkpoints", "must be at most 1000"),
        (config.train.grad_clip >= 0, "train.grad_clip", "must be 0 (off) or more"),
        (config.train.grad_accumulation >= 1, "train.grad_accumulation", "must be at least 1"),
        (config.train.grad_accumulation <= 1024, "train.grad_accumulation", "must be at most 1024"),
        (16 <= config.data.image_size <= 1024, "data.image_size", "must be between 16 and 1024"),
        (config.data.image_size % 16 == 0, "data.image_size", "must be a multiple of 16"),
        (config.data.num_workers >= 0, "data.num_workers", "must be 0 or more"),
        (config.data.num_workers <= max_workers(), "data.num_workers",
         f"must be at most {max_workers()} (the CPUs this machine gives svai, or {MIN_WORKER_CAP})"),
    ]
    for ok, key, message in checks:
        if not ok:
            value = getattr(getattr(config, key.split(".")[0]), key.split(".")[1])
            raise SvaiError(f"{key} {message}; got {value}")

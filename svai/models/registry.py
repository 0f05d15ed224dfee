"""Registry of model families and presets.

A family registers itself when its module is imported (`@register_family`). A preset is a
YAML file in `svai/presets/` naming a family plus the options that differ, so a variant is
an option, never a copy of a model.
"""

from __future__ import annotations

import importlib
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING, Any

import torch

from svai.config import parse_yaml
from svai.data.layout import PROCEDURES
from svai.errors import SvaiError
from svai.models.base import ModelFamily

if TYPE_CHECKING:
    from svai.config import RunConfig

_FAMILIES: dict[str, type[ModelFamily]] = {}

# Modules that define families; imported lazily so `svai --help` stays fast.
FAMILY_MODULES: tuple[str, ...] = (
    "svai.models.pix2pix",
    "svai.models.cyclegan",
    "svai.models.stargan",
    "svai.models.stargan_v2",
    "svai.models.autoencoders",
    "svai.models.gan",
    "svai.models.style_transfer",
    "svai.models.diffusion",
    "svai.models.landmark_warp",
)


def register_family(cls: type[ModelFamily]) -> type[ModelFamily]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _FAMILIES and _FAMILIES[cls.name] is not cls:
        raise ValueError(f"model family {cls.name!r} registered twice")
    _FAMILIES[cls.name] = cls
    return cls


def _load_all() -> None:
    for module in FAMILY_MODULES:
        importlib.import_module(module)


def families() -> dict[str, type[ModelFamily]]:
    _load_all()
    return dict(sorted(_FAMILIES.items()))


@lru_cache(maxsize=None)
def presets() -> dict[str, dict[str, Any]]:
    """Preset name -> parsed YAML (keys: family, description, recommended, model, data, train, generate)."""
    found = {}
    for entry in resources.files("svai.presets").iterdir():
        if entry.name.endswith(".yaml"):
            found[entry.name[: -len(".yaml")]] = parse_yaml(entry.read_text(encoding="utf-8")) or {}
    return dict(sorted(found.items()))


def list_models() -> list[str]:
    """Every name `--model` accepts: family names and preset names."""
    return sorted(set(families()) | set(presets()))


def resolve_model(name: str) -> tuple[type[ModelFamily], dict[str, Any]]:
    """Model or preset name -> (family class, preset dict or {})."""
    fams = families()
    if name in presets():
        preset = presets()[name]
        family = preset.get("family")
        if family not in fams:
            raise SvaiError(f"preset {name!r} names unknown family {family!r}")
        return fams[family], preset
    if name in fams:
        return fams[name], {}
    raise SvaiError(f"unknown model {name!r}: choose one of {', '.join(list_models())}")


def make_family(config: "RunConfig") -> ModelFamily:
    """The family instance a resolved run configuration describes (no networks built yet)."""
    procedures = tuple(config.data.procedures) or PROCEDURES
    return families()[config.family](config.model, config.data.image_size, procedures)


# More numbers than this in what a model trains (parameters and buffers) is a slip in its
# widths, not a model: 5e8 float32 values are 2 GB, and Adam and EMA copies triple that.
MAX_MODEL_VALUES = 500_000_000
# Frozen pretrained networks (a Stable Diffusion base is about 1.1e9) are only held.
MAX_FROZEN_VALUES = 4_000_000_000


def build_on_meta(family: ModelFamily) -> dict[str, torch.nn.Module]:
    """The family's networks built on the meta device (no memory, no init cost), refused in one
    line when their options make them impossible or larger than `MAX_MODEL_VALUES` numbers,
    before anything real is allocated."""
    try:
        with torch.device("meta"):
            nets = family.build()
    except (RuntimeError, ValueError, OverflowError, MemoryError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise SvaiError(f"model {family.name}: its options give networks that cannot be built ({first}); "
                        "check the widths and depths under model:") from None
    tensors = [t for net in nets.values() for t in (*net.parameters(), *net.buffers())]
    trained = sum(t.numel() for t in tensors if t.requires_grad or not isinstance(t, torch.nn.Parameter))
    frozen = sum(t.numel() for t in tensors) - trained
    if trained > MAX_MODEL_VALUES or frozen > MAX_FROZEN_VALUES:
        raise SvaiError(f"model {family.name}: its options give networks of {trained + frozen:,} numbers, over the "
                        f"{MAX_MODEL_VALUES:,} svai trains; check the widths and depths under model:")
    return nets


def parameter_counts(family: ModelFamily) -> dict[str, int]:
    """Parameters of each network that has any, built on the meta device (no memory, no init cost)."""
    nets = build_on_meta(family)
    counts = {name: sum(p.numel() for p in net.parameters()) for name, net in nets.items()}
    return {name: count for name, count in counts.items() if count}


def recommended_model() -> str:
    """The name of the one preset marked `recommended: true` (see docs/models.md)."""
    marked = [name for name, preset in presets().items() if preset.get("recommended") is True]
    if len(marked) != 1:
        raise SvaiError(f"exactly one preset must be recommended; found {marked or 'none'}")
    return marked[0]

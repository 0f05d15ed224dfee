"""Options every GAN family shares, typed and documented once.

A family's options dataclass extends `GanOptions`, redeclares the fields whose reference
default differs between families (normalisation, dropout, GAN loss) and adds its own. Choice
fields are `Literal` types, so the config layer rejects an unknown value with a one-line
error naming ``model.<key>`` and the valid choices; a family that supports only some GAN
losses narrows ``gan_mode``'s `Literal` on its own field. Ranges that a type cannot express
are checked in ``__post_init__``, which the config layer calls when it builds the options;
checks that also need the image size belong to the family's ``__init__``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from svai.errors import SvaiError

# The widest first layer a family takes (the references use 64; 1024 is already 16x that).
MAX_WIDTH = 1024

Norm = Literal["batch", "instance", "none"]
"""Normalisation layer: batch norm (affine, running statistics), instance norm (neither), none."""

GanMode = Literal["vanilla", "lsgan", "wgan-gp"]
"""Adversarial loss: BCE on logits, least squares, or the Wasserstein critic loss (WGAN-GP)."""

Attention = Literal["none", "generator", "generator+discriminator"]
"""Where SAGAN self-attention blocks go."""

OutputMode = Literal["direct", "residual", "masked", "warp"]
"""How a generator's last layer becomes the after image (`svai.models.heads`)."""


@dataclass
class OutputOptions:
    """How every image generator turns its last layer into the after image (`svai.models.heads`).

    - output: "direct" (the generator draws the after image, as the papers do) | "residual"
      (it predicts a change added to the before image) | "masked" (it also predicts a soft
      mask blending its drawing with the before image; Pumarola et al. 2018) | "warp" (it
      predicts a displacement field that resamples the before image, plus an optional
      colour change). Every mode but "direct" returns the before image exactly while
      untrained.
    - mask_l1, mask_tv, mask_guard: "masked" only; weights of the mask's mean (keeps the
      drawn region small), of its total variation (keeps it smooth) and of the guard that
      keeps its pre-activation within [0, 1] (keeps it from saturating); each >= 0.
    - max_displacement: "warp" only; the largest displacement, as a fraction of half the
      image side (grid_sample's normalised units: 0.15 is 4.8 px at 64 px), > 0.
    - warp_colour: "warp" only; the largest colour change added after warping, in image
      units (the image spans [-1, 1]), >= 0; 0 leaves out the colour channels.
    - flow_smoothness: "warp" only; weight of the field's squared gradient, >= 0.
    """

    output: OutputMode = "direct"
    mask_l1: float = 0.1
    mask_tv: float = 1.0
    mask_guard: float = 1.0
    max_displacement: float = 0.15
    warp_colour: float = 0.1
    flow_smoothness: float = 1.0

    def __post_init__(self) -> None:
        for key in ("mask_l1", "mask_tv", "mask_guard", "warp_colour", "flow_smoothness"):
            check_at_least(key, getattr(self, key), 0)
        check_positive("max_displacement", self.max_displacement)


@dataclass
class GanOptions(OutputOptions):
    """Options shared by the GAN families; each is a key under ``model:`` in a config.

    - ngf, ndf: widths of the generator's and discriminator's first layers.
    - norm: "batch" | "instance" | "none".
    - n_layers_d: PatchGAN depth (3 = 70×70 patches).
    - dropout: dropout probability in the generator, in [0, 1) (0 disables it); where it
      applies is the family's choice.
    - gan_mode: "vanilla" (BCE on logits) | "lsgan" (least squares, Mao et al. 2017) |
      "wgan-gp" (Wasserstein critic loss, Gulrajani et al. 2017); a family may accept fewer.
    - lr, beta1, beta2: Adam settings of every optimiser.
    - lr_decay_fraction: last fraction of the steps, in [0, 1], over which the learning rate
      decays linearly to 0 (constant before; the references decay over the second half).
    - attention: "none" | "generator" | "generator+discriminator" (SAGAN blocks, γ = 0 at
      init, so an attention model starts out computing what the plain one does).
    - attention_heads: heads of each self-attention block; must divide the block's C/8 query
      channels, which the family checks once it knows the widths.
    - init_gain: standard deviation of the normal weight initialisation.
    - output and its settings: see `OutputOptions`; "direct" (the default) is the papers'.

    Defaults are those the pix2pix and CycleGAN references agree on. norm, dropout and
    gan_mode have no common reference value, so every family redeclares them.
    """

    ngf: int = 64
    ndf: int = 64
    norm: Norm = "instance"
    n_layers_d: int = 3
    dropout: float = 0.0
    gan_mode: GanMode = "vanilla"
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    lr_decay_fraction: float = 0.5
    attention: Attention = "none"
    attention_heads: int = 1
    init_gain: float = 0.02

    def __post_init__(self) -> None:
        super().__post_init__()
        for key, most in (("ngf", MAX_WIDTH), ("ndf", MAX_WIDTH), ("n_layers_d", 12), ("attention_heads", 64)):
            check_between(key, getattr(self, key), 1, most)
        check_in_unit_interval("dropout", self.dropout, closed=False)
        check_positive("lr", self.lr)
        # β = 1 would freeze Adam's moment estimates at their initial zeros.
        check_in_unit_interval("beta1", self.beta1, closed=False)
        check_in_unit_interval("beta2", self.beta2, closed=False)
        check_in_unit_interval("lr_decay_fraction", self.lr_decay_fraction, closed=True)
        check_positive("init_gain", self.init_gain)


# -- range checks that name the key, for the options' __post_init__ --------------------------
def check_at_least(key: str, value: float, minimum: float) -> None:
    """Raise SvaiError naming ``model.<key>`` unless ``value >= minimum``."""
    if not value >= minimum:
        raise SvaiError(f"model.{key} must be at least {minimum}; got {value!r}")


def check_between(key: str, value: float, low: float, high: float) -> None:
    """Raise SvaiError naming ``model.<key>`` unless ``low <= value <= high``."""
    if not low <= value <= high:
        raise SvaiError(f"model.{key} must be between {low} and {high}; got {value!r}")


def check_positive(key: str, value: float) -> None:
    """Raise SvaiError naming ``model.<key>`` unless ``value > 0``."""
    if not value > 0:
        raise SvaiError(f"model.{key} must be > 0; got {value!r}")


def check_in_unit_interval(key: str, value: float, closed: bool) -> None:
    """Raise SvaiError naming ``model.<key>`` unless `value` is in [0, 1] (closed) or [0, 1)."""
    ok = 0.0 <= value <= 1.0 if closed else 0.0 <= value < 1.0
    if not ok:
        raise SvaiError(f"model.{key} must be in [0, 1{']' if closed else ')'}; got {value!r}")

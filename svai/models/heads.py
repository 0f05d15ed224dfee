"""Output heads: how a generator's last layer becomes the after image, for every family.

A generator that draws from the before photo ends in a convolution with `OutputHead.channels`
raw channels; the head turns them and the before image into the after image:

- ``direct`` (3 channels, the generator's own tanh kept): the generator draws the after image,
  as pix2pix, CycleGAN and StarGAN do. The reference networks are untouched.
- ``residual`` (3): a change added to the before image, ``before + 2·tanh(r)``, clamped to
  [-1, 1] (Shen & Liu 2017 learn attribute edits as such residual images).
- ``masked`` (3 + 1): a drawing ``tanh(c)`` and a soft mask m blended as
  ``m·drawn + (1 − m)·before`` (Pumarola et al. 2018, GANimation, eq. 1 with their attention
  A = 1 − m).
- ``warp`` (2, + 3 with a colour change): a displacement field resamples the before image
  bilinearly (backward warping, Jaderberg et al. 2015), plus a small bounded colour change.
  Surgery moves tissue, so resampling keeps the patient's skin texture by construction.

In every mode but ``direct`` the head zeroes the weights that produce the change
(`OutputHead.initialise`), so an untrained generator returns its input exactly, and an
intensity α ∈ [0, 1] scales the change (0 returns the before image exactly).

The mask and the field come back as auxiliary maps; `OutputHead.regularizer` turns them into
the loss terms the family adds to its generator loss. The head computes in float32 whatever
the autocast state, so resampling and blending never happen in half precision.
"""

from __future__ import annotations

from typing import get_args

import torch
from torch import nn

from svai.errors import SvaiError
from svai.image_ops import resize, warp, warp_fast
from svai.models.options import OutputMode, OutputOptions

OUTPUT_MODES: tuple[str, ...] = get_args(OutputMode)

Aux = dict[str, torch.Tensor]


# -- the mask's activation -------------------------------------------------------------------
class _InwardClamp(torch.autograd.Function):
    """clamp(z, 0, 1) whose gradient also passes at and beyond the bounds when following it
    moves z back towards [0, 1].

    torch's clamp has zero gradient at its bounds, so a mask that starts at exactly 0 (z = 0,
    the untrained no-op) would never receive a gradient and never open. Here, at z <= 0 a
    gradient asking for a larger mask passes and one asking for a smaller mask is dropped
    (and symmetrically at z >= 1): the mask is trainable from exactly 0 and is never pushed
    further into a bound, where it would stop responding.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, z: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(z)
        return z.clamp(0.0, 1.0)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (z,) = ctx.saved_tensors  # type: ignore[attr-defined]
        # A descent step moves z by −grad: drop it where that leaves the interval further.
        outward = ((z <= 0) & (grad > 0)) | ((z >= 1) & (grad < 0))
        return grad.masked_fill(outward, 0.0)


def inward_clamp(z: torch.Tensor) -> torch.Tensor:
    """z: any shape, unbounded -> clamp(z, 0, 1); gradients as `_InwardClamp` describes."""
    return _InwardClamp.apply(z)


# -- resampling ------------------------------------------------------------------------------


# -- regularisers ----------------------------------------------------------------------------
def total_variation(maps: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation, averaged: mean |∂x| + mean |∂y| of forward differences.

    maps: (B, C, H, W) -> scalar float32. GANimation sums the same differences over pixels
    and images; the mean keeps one weight right at every image size and batch.
    """
    maps = maps.float()
    dx = (maps[..., :, 1:] - maps[..., :, :-1]).abs()
    dy = (maps[..., 1:, :] - maps[..., :-1, :]).abs()
    return dx.mean() + dy.mean()


def gradient_energy(field: torch.Tensor) -> torch.Tensor:
    """Squared gradient of a displacement field, averaged: mean (∂x u)² + mean (∂y u)² over its
    components (the diffusion regulariser of VoxelMorph, Balakrishnan et al. 2019).

    field: (B, 2, H, W) in pixels -> scalar float32; its gradient is unitless (pixels of
    displacement per pixel), so one weight serves every image size.
    """
    field = field.float()
    dx = field[..., :, 1:] - field[..., :, :-1]
    dy = field[..., 1:, :] - field[..., :-1, :]
    return dx.pow(2).mean() + dy.pow(2).mean()


def bound_excess(z: torch.Tensor) -> torch.Tensor:
    """How far values lie outside [0, 1], averaged: mean(relu(−z) + relu(z − 1)); 0 inside.

    z: any shape -> scalar float32.
    """
    z = z.float()
    return (torch.relu(-z) + torch.relu(z - 1)).mean()


def change_at_size(after: torch.Tensor, before: torch.Tensor, photo: torch.Tensor) -> torch.Tensor:
    """A model-size change applied to the photo it was made from, at the photo's own size.

    after, before: (B, 3, h, w) in [-1, 1] at the model's size; photo: (B, 3, H, W) in [-1, 1],
    the image `before` was resized from -> photo + resize(after − before), clamped to [-1, 1],
    float32 (after itself where the sizes agree): the photo keeps its own detail wherever the
    model changed nothing.
    """
    if photo.shape[2:] == before.shape[2:]:
        return after.float()
    return (photo.float() + resize(after.float() - before.float(), tuple(photo.shape[2:]))).clamp(-1, 1)


# -- the head --------------------------------------------------------------------------------
class OutputHead:
    """The output mode of one generator, with its settings (`OutputOptions`).

    A family builds its generator with `channels` output channels and its final tanh only
    when `final_tanh`, calls `initialise` on the generator's last layer after the weight
    initialisation, and calls the head on every generator output:
    ``after, aux = head(G(before), before)``. In the generator's loss it adds
    ``head.regularizer(aux)``.
    """

    def __init__(self, options: OutputOptions) -> None:
        if options.output not in OUTPUT_MODES:
            raise SvaiError(f"model.output: expected one of {', '.join(OUTPUT_MODES)}; got {options.output!r}")
        self.options = options
        self.mode: str = options.output

    def __repr__(self) -> str:
        return f"OutputHead(mode={self.mode!r})"

    @property
    def colour(self) -> bool:
        """Whether a warp head also predicts a colour change."""
        return self.mode == "warp" and self.options.warp_colour > 0

    @property
    def channels(self) -> int:
        """Raw channels the generator's last layer produces: direct 3, residual 3, masked 3 + 1,
        warp 2 (+ 3 with a colour change)."""
        if self.mode == "masked":
            return 4
        if self.mode == "warp":
            return 5 if self.colour else 2
        return 3

    @property
    def final_tanh(self) -> bool:
        """Whether the generator keeps its own final tanh (direct only: the head bounds the rest)."""
        return self.mode == "direct"

    @torch.no_grad()
    def initialise(self, layer: nn.Module) -> None:
        """Zero the weights (and biases) of `layer`'s output channels that carry the change, so
        the untrained generator returns its input exactly: every channel for residual and warp,
        the mask channel for masked (its drawing keeps its random initialisation, so the mask
        has a gradient towards it from the first step). Direct leaves the layer as it is.

        layer: the generator's last Conv2d (weight (out, in, k, k)) or ConvTranspose2d
        (weight (in, out, k, k)) with `channels` outputs.
        """
        if self.mode == "direct":
            return
        if not isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            raise TypeError(f"the output layer must be a convolution; got {type(layer).__name__}")
        dim = 1 if isinstance(layer, nn.ConvTranspose2d) else 0
        if layer.weight.shape[dim] != self.channels:
            raise ValueError(
                f"{self.mode} needs {self.channels} output channels; the layer has {layer.weight.shape[dim]}")
        zeroed = slice(3, 4) if self.mode == "masked" else slice(0, self.channels)
        layer.weight.narrow(dim, zeroed.start, zeroed.stop - zeroed.start).zero_()
        if layer.bias is not None:
            layer.bias[zeroed].zero_()

    def __call__(
        self, raw: torch.Tensor, before: torch.Tensor, intensity: float | None = None
    ) -> tuple[torch.Tensor, Aux]:
        """raw: (B, channels, H, W), the generator's last layer (after its tanh in direct mode);
        before: (B, 3, H, W) in [-1, 1]; intensity α in [0, 1], None meaning 1 ->
        (after (B, 3, H, W) in [-1, 1], aux maps).

        α scales the change: direct blends α·drawn + (1 − α)·before; residual adds α·change;
        masked uses the mask α·m; warp resamples through α·field and adds α·colour. aux holds
        ``mask`` (B, 1, H, W) in [0, 1] and ``mask_logit`` (its pre-activation) for masked,
        ``flow`` (B, 2, H, W) in pixels (x then y) for warp, as applied; nothing otherwise.
        Outputs are float32 except in direct mode, which returns the generator's own output
        when α is 1.
        """
        alpha = 1.0 if intensity is None else float(intensity)
        if raw.shape[1] != self.channels or raw.shape[0] != before.shape[0] or raw.shape[2:] != before.shape[2:]:
            raise ValueError(f"{self.mode} head expects raw (B, {self.channels}, H, W) matching before "
                             f"{tuple(before.shape)}; got {tuple(raw.shape)}")
        if self.mode == "direct":
            if alpha == 1.0:
                return raw, {}
            return alpha * raw.float() + (1 - alpha) * before.float(), {}
        # Blending and resampling in float32: under bf16 a change of one level in 256 is lost.
        with torch.autocast(device_type=raw.device.type, enabled=False):
            return self._apply(self._change(raw.float(), alpha), before.float())

    def at_size(self, raw: torch.Tensor, before: torch.Tensor, photo: torch.Tensor,
                intensity: float | None = None) -> torch.Tensor:
        """The after image at another size than the generator's: the change applied to `photo`
        itself, so its own detail stays.

        raw: (B, channels, h, w) and before: (B, 3, h, w), at the generator's size; photo:
        (B, 3, H, W) in [-1, 1], the same images at their own size -> (B, 3, H, W) in [-1, 1],
        float32. The residual, the mask and drawing, or the field (in units of the image side,
        so the same motion at any size) and colour change are resized (bilinear) and applied to
        the photo's pixels; direct adds its drawing's change (`change_at_size`). At the
        generator's size this is exactly ``self(raw, before, intensity)[0]``, and a zero change
        returns `photo` bit for bit.
        """
        if photo.shape[2:] == before.shape[2:] or self.mode == "direct":
            return change_at_size(self(raw, before, intensity)[0], before, photo)
        alpha = 1.0 if intensity is None else float(intensity)
        with torch.autocast(device_type=raw.device.type, enabled=False):
            return self._apply(self._change(raw.float(), alpha), photo.float())[0]

    def _change(self, raw: torch.Tensor, alpha: float) -> Aux:
        """The change the raw channels (B, channels, h, w, float32) describe, scaled by α, at
        the generator's size: ``residual`` (residual), ``mask``, ``mask_logit``, ``drawn``
        (masked), ``field`` in units of half the image side and ``colour`` (warp)."""
        if self.mode == "residual":
            # 2·tanh reaches any value of [-1, 1] from any before value; zero at init.
            return {"residual": alpha * 2 * torch.tanh(raw)}
        if self.mode == "masked":
            logit = raw[:, 3:4]
            return {"mask": alpha * inward_clamp(logit), "mask_logit": logit, "drawn": torch.tanh(raw[:, :3])}
        # warp: the field in grid_sample's normalised units, bounded.
        change = {"field": alpha * (self.options.max_displacement * torch.tanh(raw[:, :2]))}
        if self.colour:
            change["colour"] = alpha * self.options.warp_colour * torch.tanh(raw[:, 2:5])
        return change

    def _apply(self, change: Aux, image: torch.Tensor) -> tuple[torch.Tensor, Aux]:
        """`change` (from `_change`) applied to `image` (B, 3, H, W) float32, its maps resized
        to H×W where the image is not at the generator's size -> (after, aux as `__call__`)."""
        size = tuple(image.shape[2:])
        resized = any(value.shape[2:] != size for value in change.values())

        def fit(maps: torch.Tensor) -> torch.Tensor:
            return resize(maps, size)

        if self.mode == "residual":
            return (image + fit(change["residual"])).clamp(-1, 1), {}
        if self.mode == "masked":
            mask = fit(change["mask"]).clamp(0, 1) if resized else change["mask"]
            return mask * fit(change["drawn"]) + (1 - mask) * image, {"mask": mask, "mask_logit": change["mask_logit"]}
        height, width = size
        half_size = torch.tensor([width / 2, height / 2], device=image.device).view(1, 2, 1, 1)
        flow = fit(change["field"]) * half_size
        # Photos run to megapixels: grid_sample's speed there, exact where the field is zero.
        out = (warp_fast if resized else warp)(image, flow)
        if "colour" in change:
            out = (out + fit(change["colour"])).clamp(-1, 1)
        return out, {"flow": flow}

    def regularizer(self, aux: Aux) -> tuple[torch.Tensor, dict[str, float]]:
        """The head's terms of the generator loss: `(scalar float32 loss, {"name": value})`,
        each logged value unweighted.

        - masked: mask_l1·mean(m) (``mask_l1``: the drawn region stays where the face changes;
          GANimation penalises the mask's keep part instead, to stop it saturating to the
          no-op, which here the paired L1 to the after photo already does) + mask_tv·TV(m)
          (``mask_tv``) + mask_guard·mean distance of the pre-activation outside [0, 1]
          (``mask_guard``: a mask held past a bound stays saturated there for many steps
          after the loss asks it back; the guard keeps it within reach).
        - warp: flow_smoothness·mean squared gradient of the field (``flow_smooth``).
        - direct, residual: zero, nothing logged.
        """
        o = self.options
        if "mask" in aux:
            mask = aux["mask"]
            l1, tv, guard = mask.float().mean(), total_variation(mask), bound_excess(aux["mask_logit"])
            total = o.mask_l1 * l1 + o.mask_tv * tv + o.mask_guard * guard
            return total, {"mask_l1": l1.item(), "mask_tv": tv.item(), "mask_guard": guard.item()}
        if "flow" in aux:
            smooth = gradient_energy(aux["flow"])
            return o.flow_smoothness * smooth, {"flow_smooth": smooth.item()}
        return torch.zeros(()), {}

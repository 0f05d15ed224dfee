"""What GAN training shares across families: the adversarial loss in its modes, the history pool
of generated images, the linear learning-rate decay and the initialised generator–discriminator
pair."""

from __future__ import annotations

from typing import get_args

import torch
import torch.nn.functional as F
from torch import nn

from svai.models.heads import OutputHead
from svai.models.layers import init_weights
from svai.models.options import GanMode

# The option type is the one list of choices; this tuple only serves error messages.
GAN_MODES: tuple[str, ...] = get_args(GanMode)


def gan_loss(prediction: torch.Tensor, target_is_real: bool, mode: str) -> torch.Tensor:
    """Adversarial loss of discriminator logits against an all-real or all-fake target.

    - ``vanilla``: binary cross-entropy on logits (Goodfellow et al. 2014), computed with
      `binary_cross_entropy_with_logits`, which is stable and autocast-safe;
    - ``lsgan``: least squares to 1 / 0 (Mao et al. 2017, eq. 2 with a=0, b=c=1);
    - ``wgan-gp``: the Wasserstein critic loss −E[D] for real, E[D] for fake (Gulrajani et
      al. 2017); add `svai.models.penalties.wgan_gradient_penalty` for the critic.

    prediction: any shape, unbounded logits -> scalar float32 loss.
    """
    prediction = prediction.float()
    if mode == "vanilla":
        target = torch.full_like(prediction, 1.0 if target_is_real else 0.0)
        return F.binary_cross_entropy_with_logits(prediction, target)
    if mode == "lsgan":
        target = torch.full_like(prediction, 1.0 if target_is_real else 0.0)
        return F.mse_loss(prediction, target)
    if mode == "wgan-gp":
        return -prediction.mean() if target_is_real else prediction.mean()
    raise ValueError(f"unknown gan mode {mode!r}; choose one of {', '.join(GAN_MODES)}")


class ImagePool(nn.Module):
    """History of generated images fed to a discriminator (Shrivastava et al. 2017; the
    CycleGAN reference keeps 50).

    Until the pool is full each queried image is stored and returned unchanged. After that
    each image, with probability 1/2, is swapped with a uniformly chosen stored one (the old
    image is returned, the new one stored); otherwise it is returned as is.

    The pool lives in buffers (``images``, ``count``), so it is part of ``state_dict`` and is
    saved and restored with the run. Random choices use torch's global RNG unless a
    generator is given, so a seeded run repeats exactly. A size of 0 disables the pool.
    """

    images: torch.Tensor
    count: torch.Tensor

    def __init__(self, size: int = 50) -> None:
        super().__init__()
        if size < 0:
            raise ValueError(f"pool size must be >= 0; got {size}")
        self.size = size
        # Allocated on first use, when the image shape is known; (0,) means empty.
        self.register_buffer("images", torch.zeros(0))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def _load_from_state_dict(
        self,
        state_dict: dict[str, torch.Tensor],
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # A fresh pool has not allocated yet: take the stored pool's shape so loading fits.
        stored = state_dict.get(prefix + "images")
        if isinstance(stored, torch.Tensor) and stored.shape != self.images.shape:
            if stored.numel() > 0 and stored.shape[0] != self.size:
                error_msgs.append(f"stored image pool holds {stored.shape[0]} images; this pool holds {self.size}")
                return
            self.images = torch.zeros(stored.shape, dtype=stored.dtype, device=self.images.device)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    @torch.no_grad()
    def query(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """images: (B, C, H, W) newly generated -> (B, C, H, W), same dtype, detached."""
        images = images.detach()
        if self.size == 0:
            return images
        if self.images.dim() != images.dim() or self.images.shape[1:] != images.shape[1:]:
            if int(self.count) > 0:
                raise ValueError(
                    f"image pool holds shape {tuple(self.images.shape[1:])}; got {tuple(images.shape[1:])}"
                )
            self.images = torch.zeros((self.size, *images.shape[1:]), dtype=torch.float32, device=images.device)
        elif self.images.device != images.device:
            self.images = self.images.to(images.device)
        out = []
        for image in images:
            filled = int(self.count)
            if filled < self.size:
                self.images[filled] = image
                self.count += 1
                out.append(image)
            elif float(torch.rand((), generator=generator)) > 0.5:
                index = int(torch.randint(self.size, (), generator=generator))
                out.append(self.images[index].to(images.dtype).clone())
                self.images[index] = image
            else:
                out.append(image)
        return torch.stack(out)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.query(images)

    def extra_repr(self) -> str:
        return f"size={self.size}"


def linear_decay_factor(step: int, total_steps: int, decay_fraction: float) -> float:
    """Learning-rate multiplier: 1 for the first ``(1 − decay_fraction)·total_steps`` steps,
    then linear down to 0 at `total_steps` (the reference ``--lr_policy linear`` over steps
    instead of epochs). Never negative; ``decay_fraction = 0`` keeps it constant.
    """
    if decay_fraction <= 0 or total_steps <= 0:
        return 1.0
    decay_steps = decay_fraction * total_steps
    start = total_steps - decay_steps
    if step <= start:
        return 1.0
    return max(0.0, (total_steps - step) / decay_steps)


def initialised_pair(generator: nn.Module, discriminator: nn.Module, gain: float, head: "OutputHead") -> dict[str, nn.Module]:
    """``{"G": generator, "D": discriminator}``, both initialised from N(0, gain), the
    generator's last layer prepared by its output head (zero for every mode but "direct")."""
    init_weights(generator, gain)
    init_weights(discriminator, gain)
    head.initialise(generator.output_layer)
    return {"G": generator, "D": discriminator}

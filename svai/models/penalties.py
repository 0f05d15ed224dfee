"""Gradient penalties on a critic's input, correct under mixed precision and several processes.

Both penalties differentiate the critic's output with respect to its *input* and keep that
graph (``create_graph=True``) so the penalty itself can be back-propagated into the critic.

Under fp16 the shared loop scales every loss by the grad scaler's factor before `backward`;
an input gradient taken from the unscaled output could underflow in half precision, so the
output is scaled first and the gradient divided by the same factor afterwards (the recipe of
PyTorch's automatic-mixed-precision notes). The norms are computed in fp32 whatever the
autocast dtype. Under DDP the input gradient never touches parameter gradients, so it does
not trigger the gradient all-reduce; only the final `backward` of the loop does.
"""

from __future__ import annotations

from typing import Any

import torch


def input_gradients(outputs: torch.Tensor, inputs: torch.Tensor, scaler: Any = None) -> torch.Tensor:
    """d(sum of outputs)/d(inputs) with the graph kept; `inputs` must require grad.

    outputs: any shape, the critic's scores of `inputs`; inputs: (B, ...) -> same shape, fp32.
    `scaler`: the loop's grad scaler (fp16) or None.
    """
    total = outputs.float().sum()
    if scaler is not None and scaler.is_enabled():
        scale = scaler.get_scale()
        (grads,) = torch.autograd.grad(total * scale, inputs, create_graph=True)
        return grads.float() / scale
    (grads,) = torch.autograd.grad(total, inputs, create_graph=True)
    return grads.float()


def wgan_gradient_penalty(
    critic: torch.nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    generator: torch.Generator | None = None,
    scaler: Any = None,
) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al. 2017, eq. 3): E[(‖∇D(x̂)‖₂ − 1)²] with x̂ = ε·real + (1 − ε)·fake.

    real, fake: (B, C, H, W); ε ~ U[0, 1] per sample. `critic` returns the score first when it
    returns a tuple (StarGAN's discriminator also returns class logits).
    """
    shape = (real.shape[0],) + (1,) * (real.dim() - 1)
    device = generator.device if generator is not None else real.device
    eps = torch.rand(shape, generator=generator, device=device).to(real.device, real.dtype)
    mixed = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    score = critic(mixed)
    if isinstance(score, (tuple, list)):
        score = score[0]
    grads = input_gradients(score, mixed, scaler).flatten(1)
    return ((grads.norm(2, dim=1) - 1) ** 2).mean()


def r1_penalty(scores: torch.Tensor, real: torch.Tensor, scaler: Any = None) -> torch.Tensor:
    """R1 (Mescheder et al. 2018, eq. 9) with γ = 1: ½·E[‖∇D(real)‖²].

    scores: the critic's output on `real`, which must require grad; real: (B, C, H, W).
    The caller multiplies by its own weight (StarGAN v2's λ_reg = 1 keeps the ½).
    """
    grads = input_gradients(scores, real, scaler)
    return 0.5 * grads.pow(2).flatten(1).sum(1).mean()

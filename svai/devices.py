"""The one reading of a `--device` value: cpu, cuda or cuda:N, refused in one line when this
machine does not have it, before anything is loaded."""

from __future__ import annotations

import torch

from svai.errors import SvaiError


def check_device(device: str | torch.device) -> torch.device:
    """`device` as a torch device, or SvaiError naming the option and the fix."""
    text = str(device)
    kind, _, index = text.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()) or (kind == "cpu" and index):
        raise SvaiError(f"--device {text!r}: use cpu, cuda or cuda:N")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise SvaiError(f"--device {text}: no CUDA GPU is available here; use --device cpu")
        if index and int(index) >= torch.cuda.device_count():
            raise SvaiError(f"--device {text}: this machine has {torch.cuda.device_count()} GPU(s)")
    return torch.device(text)

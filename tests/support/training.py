"""Resolved training configs of tiny runs."""

from __future__ import annotations

from pathlib import Path

from svai.run import resolve

TINY = ["data.image_size=32", "model.ngf=8", "model.ndf=8", "train.sample_every=0", "train.log_every=1"]


def config(model: str, data: Path, steps: int, *extra: str):
    return resolve(model, sets=[*TINY, f"train.steps={steps}", *extra], flags={"data.root": str(data)})

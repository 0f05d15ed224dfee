"""Inference: run a trained model over a folder of photos.

Every image under the input folder becomes a PNG at the same relative path in the output
folder, at the input's own size. Non-square photos are padded to a square by repeating
their border, resized to the model's size, translated, resized back and cropped, so the
face is never squashed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from svai.checkpoint import find_checkpoint, load_networks
from svai.config import RunConfig, load_run_config, resolve
from svai.data.dataset import resize, to_tensor, to_uint8
from svai.data.images import list_images, read_rgb
from svai.data.layout import PROCEDURE_SEPARATOR, PROCEDURES, png_bytes, write_atomic
from svai.data.layout import parse_procedures as parse_manifest_procedures
from svai.errors import SvaiError
from svai.models.base import ModelFamily, Networks
from svai.train import eval_mode, make_family

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    config: RunConfig
    family: ModelFamily
    nets: Networks
    step: int
    device: torch.device


@dataclass
class GenerateReport:
    written: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def load_model(run_dir: Path, checkpoint: str | int = "latest", device: str | torch.device | None = None) -> LoadedModel:
    """Build a run's model from its `config.yaml` and load the inference networks' weights."""
    config = resolve(base=load_run_config(run_dir))
    ref = find_checkpoint(run_dir, checkpoint)
    family = make_family(config)
    with torch.device("meta"):
        skeleton = family.build()
    names = family.inference_networks()
    # Only the networks needed for inference are materialised; discriminators stay on meta.
    torch_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    nets = {name: skeleton[name].to_empty(device="cpu") for name in names}
    load_networks(ref.path, nets, names)
    for net in nets.values():
        net.to(torch_device).eval()
    return LoadedModel(config, family, nets, ref.step, torch_device)


def parse_procedures(text: str | None) -> torch.Tensor | None:
    """"eyes+nose" (or "eyes,nose") -> multi-hot (P,) tensor; None -> None."""
    if not text:
        return None
    try:
        names = parse_manifest_procedures(text.replace(",", PROCEDURE_SEPARATOR))
    except SvaiError as error:
        raise SvaiError(f"--procedures: {error}") from None
    return torch.tensor([float(p in names) for p in PROCEDURES])


def pad_to_square(image: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """(B, C, H, W) -> (B, C, S, S) with S = max(H, W), border repeated; returns the padding."""
    height, width = image.shape[-2:]
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    padding = (left, side - width - left, top, side - height - top)
    if side == height == width:
        return image, padding
    return F.pad(image, padding, mode="replicate"), padding


def translate_batch(model: LoadedModel, images: list[np.ndarray], condition: torch.Tensor | None = None) -> list[np.ndarray]:
    size = model.config.data.image_size
    inputs, layouts = [], []
    for image in images:
        tensor, padding = pad_to_square(to_tensor(image)[None])
        layouts.append((image.shape[0], image.shape[1], tensor.shape[-1], padding))
        inputs.append(resize(tensor, size))
    before = torch.cat(inputs).to(model.device)
    cond = None
    if condition is not None:
        cond = condition.to(model.device).expand(len(images), -1)
    with torch.no_grad(), eval_mode(model.nets):
        fake = model.family.translate(model.nets, before, cond).float().cpu()
    outputs = []
    for prediction, (height, width, side, (left, _, top, _)) in zip(fake, layouts):
        restored = resize(prediction[None], side)[..., top:top + height, left:left + width]
        outputs.append(to_uint8(restored)[0])
    return outputs


def output_path(input_dir: Path, output_dir: Path, file: Path) -> Path:
    return (Path(output_dir) / file.relative_to(input_dir)).with_suffix(".png")


def check_output_folder(input_dir: Path, output_dir: Path) -> None:
    """Refuse an output folder that is, or lies inside, the input: inputs are never touched."""
    source, target = Path(input_dir).resolve(), Path(output_dir).resolve()
    if target == source or source in target.parents:
        raise SvaiError(f"--output {output_dir} is inside --input {input_dir}: choose a folder outside the input")
    if target.exists() and not target.is_dir():
        raise SvaiError(f"--output {output_dir} is a file: give a folder")


def generate_folder(
    model: LoadedModel,
    input_dir: Path,
    output_dir: Path,
    batch_size: int = 8,
    condition: torch.Tensor | None = None,
    progress: Callable[[int], None] | None = None,
    files: list[Path] | None = None,
) -> GenerateReport:
    """Translate every image under `input_dir` into `output_dir`; unreadable files are skipped.

    `files` is the input listing when the caller already has it (`list_images(input_dir)`).
    """
    if batch_size < 1:
        raise SvaiError(f"--batch-size must be at least 1; got {batch_size}")
    check_output_folder(input_dir, output_dir)
    files = list_images(input_dir) if files is None else files
    report = GenerateReport()
    seen: dict[Path, Path] = {}
    queue: list[tuple[Path, np.ndarray]] = []

    def flush() -> None:
        # Photos of different sizes batch fine: each is padded and resized to the model size.
        if not queue:
            return
        predictions = translate_batch(model, [image for _, image in queue], condition)
        for (file, _), prediction in zip(queue, predictions):
            target = output_path(input_dir, output_dir, file)
            write_atomic(target, png_bytes(prediction))
            report.written.append(target)
        if progress is not None:
            progress(len(queue))
        queue.clear()

    for file in files:
        target = output_path(input_dir, output_dir, file)
        if target in seen:
            report.skipped.append((file, f"same output name as {seen[target].relative_to(input_dir)}"))
            if progress is not None:
                progress(1)
            continue
        seen[target] = file
        try:
            image = read_rgb(file)
        except SvaiError as error:
            report.skipped.append((file, str(error).removeprefix(f"{file}: ")))
            if progress is not None:
                progress(1)
            continue
        queue.append((file, image))
        if len(queue) >= batch_size:
            flush()
    flush()
    return report


__all__ = ["LoadedModel", "GenerateReport", "load_model", "generate_folder", "parse_procedures"]

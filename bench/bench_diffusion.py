"""Training and generation speed of `sd-lora` / `sd-lora-concat` on this machine, without the
real Stable Diffusion weights.

    python bench/bench_diffusion.py                                 # tiny test model
    python bench/bench_diffusion.py --base sd15-random --steps 3    # SD 1.5's architecture, random weights

`--base tiny` uses the randomly initialised tiny model of the test suite
(tests/diffusion_fixtures.py): its figures say what the loop costs around a network of a few
hundred thousand parameters, nothing about Stable Diffusion. `--base sd15-random` writes a
diffusers folder holding Stable Diffusion 1.5's exact architecture (UNet 860M, VAE 84M, CLIP
ViT-L/14 text encoder 123M parameters) with random fp16 weights (about 2.1 GB, in a temporary
folder): speed and memory depend on the shapes only, so its figures are those of the real
model; its images mean nothing. A path to a real diffusers folder works too.

Each model trains through `svai.train.train` (the code path of `svai train`) on a small
synthetic dataset: one warm-up step, then `--steps` timed steps, the fastest taken (the least
disturbed by other work on the machine); then one batch is generated with `--sampler-steps`.
Peak RSS is that of the whole process. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def random_sd15(folder: Path) -> Path:
    """A diffusers folder with SD 1.5's configs, tokenizer-shaped vocabulary and random fp16 weights."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from svai.models.diffusion import SD15_TEXT_ENCODER, SD15_UNET, SD15_VAE
    from tests.diffusion_fixtures import SCHEDULER, write_tokenizer

    write_tokenizer(folder / "tokenizer")
    torch.manual_seed(0)
    UNet2DConditionModel(**SD15_UNET).half().save_pretrained(folder / "unet")
    AutoencoderKL(**SD15_VAE).half().save_pretrained(folder / "vae")
    CLIPTextModel(CLIPTextConfig(**SD15_TEXT_ENCODER)).half().save_pretrained(folder / "text_encoder")
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER), encoding="utf-8")
    # The tiny tokenizer's 16 tokens stand in for CLIP's 77: the text encoder is a small share of a step.
    return folder


def tiny(folder: Path) -> Path:
    from tests.diffusion_fixtures import write_tiny_base

    return write_tiny_base(folder)


def measure(model: str, base: Path, args: argparse.Namespace, tmp: Path) -> dict:
    import torch

    from svai.run import resolve
    from svai.data.synthetic import write_synthetic_dataset
    from svai.generate import load_model
    from svai.models.base import Request
    from svai.train import train

    stamps: list[float] = []

    def on_event(event: dict) -> None:
        if event["event"] in ("start", "step", "log"):
            stamps.append(time.perf_counter())

    data = tmp / f"data-{args.size}"
    if not data.exists():
        write_synthetic_dataset(data, count=max(4 * args.batch_size, 16), size=args.size, seed=0, test_fraction=0.2)
    config = resolve(model, sets=[
        f"data.image_size={args.size}", f"train.steps={1 + args.steps}", f"train.batch_size={args.batch_size}",
        f"train.mixed_precision={args.precision}", "train.sample_every=0", "train.log_every=1",
        "train.checkpoint_every=0", "train.evaluate=false", f"model.base={base}",
    ], flags={"data.root": str(data)})
    run = tmp / f"run-{model}"
    train(config, run, on_event=on_event)
    step = min(b - a for a, b in list(zip(stamps, stamps[1:]))[1:])
    loaded = load_model(run, device="cpu")
    before = torch.rand(args.batch_size, 3, args.size, args.size) * 2 - 1
    start = time.perf_counter()
    with torch.no_grad():
        loaded.family.translate(loaded.nets, before, Request(steps=args.sampler_steps))
    generation = time.perf_counter() - start
    return {"model": model, "seconds_per_step": round(step, 3),
            "generate_seconds_per_image": round(generation / args.batch_size, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="tiny", help="tiny | sd15-random | a diffusers folder")
    parser.add_argument("--models", default="sd-lora,sd-lora-concat")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--precision", default="bf16", choices=["no", "bf16"])
    parser.add_argument("--steps", type=int, default=5, help="timed training steps (after one warm-up)")
    parser.add_argument("--sampler-steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    sys.path.insert(0, str(ROOT))
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        if args.base == "tiny":
            base, label = tiny(tmp / "base"), "tiny random test model (not Stable Diffusion)"
        elif args.base == "sd15-random":
            base, label = random_sd15(tmp / "base"), "Stable Diffusion 1.5 architecture, random weights"
        else:
            base, label = Path(args.base), f"base {args.base}"
        print(f"{label}; {args.size} px, batch {args.batch_size}, {args.precision}, {args.threads} threads, "
              f"{args.sampler_steps} sampler steps")
        for model in args.models.split(","):
            print(json.dumps(measure(model, base, args, tmp)))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of the process: {peak:.0f} MiB")


if __name__ == "__main__":
    main()

"""Training throughput of every registered model: images/s of the shared loop.

    python bench/bench_train.py [--size 64] [--steps 6] [--batch-size 4] [--models pix2pix,cyclegan]

Builds a small synthetic dataset in a temporary folder, trains each model for a few steps
through `svai.train.train` (the same code path as `svai train`), and prints the steady-state
images/s from the run's log (the first step, which includes warm-up, is left out).
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from svai.data.synthetic import write_synthetic_dataset
from svai.models.registry import list_models
from svai.run import resolve
from svai.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--models", default=",".join(list_models()))
    parser.add_argument("--set", action="append", default=[], help="extra settings, e.g. model.ngf=32")
    parser.add_argument("--mixed-precision", default="no")
    args = parser.parse_args()

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {device}; torch {torch.__version__}; {args.size}px, batch {args.batch_size}, "
          f"{args.steps} steps, mixed precision {args.mixed_precision}")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_synthetic_dataset(data, count=32, size=args.size, seed=0)
        print(f"{'model':<20} {'images/s':>9} {'s/step':>8} {'wall s':>8}")
        for name in args.models.split(","):
            config = resolve(name, sets=[f"data.image_size={args.size}", f"train.steps={args.steps}",
                                         f"train.batch_size={args.batch_size}", "train.sample_every=0",
                                         "train.log_every=1", f"train.mixed_precision={args.mixed_precision}",
                                         *args.set],
                             flags={"data.root": str(data)})
            run = Path(tmp) / name
            start = time.perf_counter()
            train(config, run)
            wall = time.perf_counter() - start
            records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()][1:]
            rate = sum(r["images_per_s"] for r in records) / max(len(records), 1)
            print(f"{name:<20} {rate:>9.2f} {args.batch_size / rate:>8.2f} {wall:>8.1f}")


if __name__ == "__main__":
    main()

"""Training speed and memory of the `stargan` family: steps/s and peak RSS, fp32 and bf16.

    python bench/bench_stargan.py [--model stargan] [--size 128] [--batch-sizes 1,16]
                                  [--precisions no,bf16] [--steps 10] [--threads 2]

Each (precision, batch size) runs in a fresh process, so its peak resident memory is its
own. A run trains on a small synthetic dataset through `svai.train.train` (the code path of
`svai train`) for one warm-up step and `--steps` timed steps. StarGAN's steps are of two
kinds: critic-only steps, and every n_critic-th step (5), which also updates the generator.
The fastest step of each kind is taken (the least disturbed by other work on the machine),
and steps/s is that of a cycle of n_critic steps: n_critic / ((n_critic − 1)·critic + generator).
A batch of N pairs is 2N real images (before ∪ after). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def measure(args: argparse.Namespace, precision: str, batch_size: int) -> dict:
    """Train in this process and return its step times and peak RSS."""
    import torch

    from svai.run import resolve
    from svai.data.synthetic import write_synthetic_dataset
    from svai.train import train

    torch.set_num_threads(args.threads)
    stamps: list[float] = []

    def on_event(event: dict) -> None:
        if event["event"] in ("start", "step", "log"):
            stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_synthetic_dataset(data, count=max(2 * batch_size, 8), size=args.size, seed=0, test_fraction=0.2)
        config = resolve(args.model, sets=[
            f"data.image_size={args.size}", f"train.steps={1 + args.steps}", f"train.batch_size={batch_size}",
            f"train.mixed_precision={precision}", "train.sample_every=0", "train.log_every=1",
            "train.checkpoint_every=0", "train.evaluate=false", *args.set,
        ], flags={"data.root": str(data)})
        train(config, Path(tmp) / "run", on_event=on_event)
    n_critic = config.model.n_critic
    # Step k (from 0) updates the generator when k % n_critic == 0; step 0 is the warm-up.
    seconds = {k: b - a for k, (a, b) in enumerate(zip(stamps, stamps[1:])) if k >= 1}
    critic = min(s for k, s in seconds.items() if k % n_critic)
    generator = min((s for k, s in seconds.items() if k % n_critic == 0), default=critic)
    cycle = ((n_critic - 1) * critic + generator) / n_critic
    return {
        "precision": precision,
        "batch_size": batch_size,
        "real_images_per_step": 2 * batch_size,
        "critic_step_s": critic,
        "generator_step_s": generator,
        "steps_per_s": 1 / cycle,
        "images_per_s": 2 * batch_size / cycle,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "step_seconds": [round(s, 3) for s in seconds.values()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="stargan")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-sizes", default="1,16", help="pairs per step, comma-separated")
    parser.add_argument("--precisions", default="no,bf16", help="train.mixed_precision values, comma-separated")
    parser.add_argument("--steps", type=int, default=10, help="timed steps after one warm-up step")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], help="extra settings, e.g. model.ngf=32")
    parser.add_argument("--one", nargs=2, metavar=("PRECISION", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:
        print(json.dumps(measure(args, args.one[0], int(args.one[1]))))
        return

    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {args.threads} threads"
    print(f"{args.model}: {args.size}px, {device}, torch {torch.__version__}; 1 warm-up + {args.steps} timed "
          "steps, fastest of each kind; a batch of N pairs is 2N real images")
    print(f"{'precision':<10} {'pairs':>5} {'critic s':>9} {'G step s':>9} {'steps/s':>8} {'images/s':>9} "
          f"{'peak RSS MiB':>13}")
    base = [sys.executable, __file__, "--model", args.model, "--size", str(args.size), "--steps", str(args.steps),
            "--threads", str(args.threads), *[x for s in args.set for x in ("--set", s)]]
    for precision in args.precisions.split(","):
        for batch_size in (int(b) for b in args.batch_sizes.split(",")):
            done = subprocess.run([*base, "--one", precision, str(batch_size)], capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{precision:<10} {batch_size:>5} failed: {done.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{precision:<10} {batch_size:>5} {r['critic_step_s']:>9.2f} {r['generator_step_s']:>9.2f} "
                  f"{r['steps_per_s']:>8.3f} {r['images_per_s']:>9.2f} {r['peak_rss_mib']:>13.0f}")


if __name__ == "__main__":
    main()

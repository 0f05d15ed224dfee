"""Synthetic faces: pairs drawn per second on one core, and written per second at 128 px.

Run: .venv/bin/python bench/bench_synthetic.py [--pairs N]
Prints figures and asserts nothing; the issue's target is 100 pairs/s drawn at 128 px.
"""

from __future__ import annotations

import os

# One core: set before numpy (and any BLAS it loads) is imported.
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_name] = "1"

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from svai.data.synthetic import generate_pairs, write_synthetic_dataset  # noqa: E402


def _rate(action, pairs: int) -> tuple[float, float]:
    """(wall-clock pairs/s, CPU-time pairs/s); CPU time is steadier on a shared machine."""
    wall, cpu = time.perf_counter(), time.process_time()
    action()
    return pairs / (time.perf_counter() - wall), pairs / (time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=200, help="pairs per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per size; the best is shown")
    args = parser.parse_args()

    print(f"drawing {args.pairs} pairs, best of {args.repeats} (pairs/s; wall clock, CPU time)")
    for size in (64, 128, 256):
        count = max(10, args.pairs * 128 // size)
        list(generate_pairs(5, size, seed=0))  # warm-up
        rates = [_rate(lambda: list(generate_pairs(count, size, seed=1)), count) for _ in range(args.repeats)]
        print(f"  {size:4d} px: {max(r[0] for r in rates):7.1f} wall  {max(r[1] for r in rates):7.1f} cpu")

    count = args.pairs
    rates = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "synthetic"
            rates.append(_rate(lambda: write_synthetic_dataset(out, count=count, size=128, seed=1), count))
    print(f"writing {count} pairs at 128 px (PNG before/after/mask + manifest):")
    print(f"   128 px: {max(r[0] for r in rates):7.1f} wall  {max(r[1] for r in rates):7.1f} cpu")


if __name__ == "__main__":
    main()

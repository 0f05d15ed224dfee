"""Benchmark `svai prepare` against a plain Pillow loop on phone-sized JPEGs.

    .venv/bin/python bench/bench_prepare.py --pairs 1000      # the figure in docs/data.md
    .venv/bin/python bench/bench_prepare.py --pairs 50        # a quick look

Inputs: `--pairs` pairs of 4032x3024 JPEGs (quality 92, a third of them with an EXIF
rotation, like phone photos) written to a temporary folder. Sixteen distinct photos are
encoded and copied to make the rest, because encoding 2,000 twelve-megapixel JPEGs would
take longer than the benchmark; decoding cost does not depend on which photo it is.

Both sides write 512 px PNGs (compress level 1) and are timed end to end:
- plain loop: for each file, `Image.open` → `convert("RGB")` → `resize((512, 512))` → save;
- svai: `prepare_dataset` (JPEG draft decoding, same-crop framing, `--workers` processes).

CPU seconds (user + system, this process and every child it started) are printed too: on a
shared machine they say more about the work done than the wall clock does.
Peak memory is the largest sum of resident memory over the process and its children,
sampled every 20 ms (shared pages count once per process, so this is an upper bound).
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from svai.data.options import PrepareOptions
from svai.data.prepare import default_workers, prepare_dataset

WIDTH, HEIGHT = 4032, 3024
VARIANTS = 16


def _phone_photo(seed: int) -> Image.Image:
    """A smooth scene with shapes and sensor-like noise, so JPEG sizes resemble real photos."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:HEIGHT:8, 0:WIDTH:8].astype(np.float32)
    base = np.stack([
        120 + 60 * np.sin(x / (300 + 40 * c) + seed) * np.cos(y / (250 + 30 * c)) for c in range(3)
    ], axis=-1)
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).resize((WIDTH, HEIGHT), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        cx, cy = rng.integers(0, WIDTH), rng.integers(0, HEIGHT)
        r = int(rng.integers(100, 900))
        draw.ellipse((cx - r, cy - r * 1.3, cx + r, cy + r * 1.3), fill=tuple(int(v) for v in rng.integers(30, 230, 3)))
    noise = rng.normal(0, 4, (HEIGHT, WIDTH, 3))
    return Image.fromarray(np.clip(np.asarray(image) + noise, 0, 255).astype(np.uint8))


def make_inputs(folder: Path, pairs: int) -> None:
    variants = []
    for v in range(VARIANTS):
        path = folder / f".variant{v}.jpg"
        exif = Image.Exif()
        if v % 3 == 0:
            exif[0x0112] = 6
        _phone_photo(v).save(path, quality=92, exif=exif)
        variants.append(path)
    for i in range(pairs):
        shutil.copyfile(variants[(2 * i) % VARIANTS], folder / f"{i:05d}_before.jpg")
        shutil.copyfile(variants[(2 * i + 1) % VARIANTS], folder / f"{i:05d}_after.jpg")
    for path in variants:
        path.unlink()


class PeakMemory:
    """Samples the resident memory of this process plus its children in a thread."""

    def __init__(self, interval: float = 0.02) -> None:
        import psutil

        self.process = psutil.Process()
        self.interval = interval
        self.peak = 0
        self.child_cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        total = self.process.memory_info().rss
        for child in self.process.children(recursive=True):
            try:
                total += child.memory_info().rss
                times = child.cpu_times()
                self.child_cpu[child.pid] = times.user + times.system
            except Exception:  # a child that just ended
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            time.sleep(self.interval)

    def __enter__(self) -> "PeakMemory":
        self.cpu = -self._cpu()
        self.wall = -time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall += time.perf_counter()
        self._stop.set()
        self._thread.join()
        # Pool workers are children of the fork server, not ours: their CPU time comes from
        # the sampler's last look at each of them.
        self.cpu += self._cpu() + sum(self.child_cpu.values())

    @staticmethod
    def _cpu() -> float:
        own = resource.getrusage(resource.RUSAGE_SELF)
        return own.ru_utime + own.ru_stime


def plain_loop(source: Path, out: Path, size: int) -> int:
    out.mkdir(parents=True, exist_ok=True)
    count = 0
    for path in sorted(source.glob("*.jpg")):
        with Image.open(path) as image:
            image.convert("RGB").resize((size, size)).save(out / f"{path.stem}.png", compress_level=1)
        count += 1
    return count // 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="svai-bench-prepare-"))
    try:
        source = root / "photos"
        source.mkdir()
        started = time.perf_counter()
        make_inputs(source, args.pairs)
        megabytes = sum(p.stat().st_size for p in source.iterdir()) / 2**20
        print(f"inputs: {args.pairs} pairs of {WIDTH}x{HEIGHT} JPEG ({megabytes:.0f} MiB) "
              f"in {time.perf_counter() - started:.0f} s; {os.cpu_count()} CPUs, --workers {args.workers}")

        rows = []
        with PeakMemory() as run:
            done = plain_loop(source, root / "plain", args.size)
        rows.append(("plain PIL loop", done, run))

        options = PrepareOptions(size=args.size, workers=args.workers, test_fraction=0.1)
        with PeakMemory() as run:
            report = prepare_dataset(source, root / "svai", options)
        rows.append((f"svai prepare ({args.workers} workers)", report.total, run))

        with PeakMemory() as run:
            again = prepare_dataset(source, root / "svai", options)
        rows.append(("svai prepare, re-run (nothing changed)", again.kept, run))

        print(f"\n{'':40s} {'pairs':>6s} {'seconds':>8s} {'pairs/s':>8s} {'CPU s/pair':>10s} {'peak MiB':>9s}")
        for name, pairs, run in rows:
            print(f"{name:40s} {pairs:6d} {run.wall:8.1f} {pairs / run.wall:8.2f} "
                  f"{run.cpu / max(pairs, 1):10.3f} {run.peak / 2**20:9.0f}")
        plain, ours = rows[0][2], rows[1][2]
        print(f"\nsvai prepare vs the plain loop: {plain.wall / ours.wall:.1f}x faster by the clock, "
              f"{plain.cpu / ours.cpu:.1f}x less CPU time (same number of pairs: {rows[0][1] == rows[1][1]}); "
              f"load average now {os.getloadavg()[0]:.1f}")
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

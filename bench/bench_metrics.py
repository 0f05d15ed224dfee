"""Benchmark `svai evaluate` against the reference tools run one after another.

    .venv/bin/python bench/bench_metrics.py                   # 500 pairs at 256 px (the issue's setting)
    .venv/bin/python bench/bench_metrics.py --pairs 100       # a quicker look

Inputs: `--pairs` synthetic pairs (smooth colour fields with soft blobs; the prediction is
the target blurred, shifted by a pixel and slightly noisy), PNG, in a temporary folder.
Weights are made here, never downloaded: pytorch-fid's Inception with random weights and
batch-norm statistics calibrated on such images (so features do not vanish), and a random
torchvision AlexNet for LPIPS, saved under their real file names in a temporary TORCH_HOME.
Timings do not depend on the weights' values.

Every command runs as its own process, timed end to end (start-up included, as a user
would run it):
- reference suite: `python -m pytorch_fid PRED TARGET` (FID), a loop calling
  `lpips.LPIPS(net="alex")` per pair, and a loop calling scikit-image's SSIM (Gaussian 11x11,
  sigma 1.5) and PSNR per pair; its time is the sum of the three;
- svai full suite: `svai evaluate` with every metric (SSIM, PSNR, LPIPS, FID, KID, IS), with
  `--no-cache` (cold) and with the target features already cached (warm: the case of a second
  model evaluated against the same test set);
- FID alone: `svai evaluate --metrics fid --no-cache` against `python -m pytorch_fid`;
- peak memory of the cold svai full suite at `--small` pairs and at `--pairs` pairs.
With `--repeat R` the commands run in R interleaved rounds and each figure is the best
round, which filters out bursts of load from other work on a shared machine.

Wall seconds and CPU seconds (user + system of that process and its children, from
`os.wait4`) are printed: on a shared machine the CPU seconds say more about the work done.
Peak memory is the command's maximum resident set size (this script never loads torch
itself, since Linux counts the parent's size in a child's peak). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"

LPIPS_LOOP = """
import sys, warnings
from pathlib import Path
import numpy as np, torch, lpips
from PIL import Image
warnings.simplefilter("ignore")
model = lpips.LPIPS(net="alex", verbose=False)
pred, target = Path(sys.argv[1]), Path(sys.argv[2])
values = []
with torch.no_grad():
    for path in sorted(pred.glob("*.png")):
        a = lpips.im2tensor(np.asarray(Image.open(path).convert("RGB")))
        b = lpips.im2tensor(np.asarray(Image.open(target / path.name).convert("RGB")))
        values.append(model(a, b).item())
print("LPIPS", float(np.mean(values)))
"""

SKIMAGE_LOOP = """
import sys
from pathlib import Path
import numpy as np
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
pred, target = Path(sys.argv[1]), Path(sys.argv[2])
ssim, psnr = [], []
for path in sorted(pred.glob("*.png")):
    a = np.asarray(Image.open(path).convert("RGB"))
    b = np.asarray(Image.open(target / path.name).convert("RGB"))
    ssim.append(structural_similarity(a / 255.0, b / 255.0, gaussian_weights=True, sigma=1.5,
                                      use_sample_covariance=False, channel_axis=-1, data_range=1))
    psnr.append(peak_signal_noise_ratio(b, a))
print("SSIM", float(np.mean(ssim)), "PSNR", float(np.mean(psnr)))
"""


@dataclass
class Run:
    wall: float
    cpu: float
    peak_mb: float
    output: str


def run(command: list[str], env: dict[str, str]) -> Run:
    """Run a command to completion; wall and CPU seconds, peak resident memory, its output."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if process.returncode not in (0, 2):  # svai exits 2 only for data problems; show them anyway
        print(output[-2000:])
        raise SystemExit(f"{command[:3]} failed with exit code {process.returncode}")
    return Run(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, output)


def smooth_images(n: int, size: int, seed: int) -> np.ndarray:
    """(n, size, size, 3) uint8: a colour gradient plus soft blobs, like a blurry portrait."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        base = rng.uniform(0, 1, size=(2, 3)).astype(np.float32)
        angle = rng.uniform(0, 2 * np.pi)
        t = (np.cos(angle) * xx + np.sin(angle) * yy + 1.5) / 3.0
        image = (1 - t)[..., None] * base[0] + t[..., None] * base[1]
        for _ in range(int(rng.integers(3, 8))):
            cy, cx = rng.uniform(0, 1, size=2)
            radius = rng.uniform(0.05, 0.3)
            weight = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))[..., None]
            image = (1 - weight) * image + weight * rng.uniform(0, 1, size=3).astype(np.float32)
        out[i] = np.clip(np.round(image * 255), 0, 255).astype(np.uint8)
    return out


def write_pairs(root: Path, pairs: int, size: int) -> tuple[Path, Path]:
    pred, target = root / "pred", root / "target"
    pred.mkdir(parents=True)
    target.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for start in range(0, pairs, 100):
        batch = smooth_images(min(100, pairs - start), size, seed=start)
        for offset, pixels in enumerate(batch):
            name = f"{start + offset:05d}.png"
            image = Image.fromarray(pixels)
            image.save(target / name, compress_level=1)
            moved = np.roll(np.asarray(image.filter(ImageFilter.GaussianBlur(1.2))), 1, axis=1).astype(np.int16)
            noisy = np.clip(moved + rng.integers(-6, 7, moved.shape), 0, 255).astype(np.uint8)
            Image.fromarray(noisy).save(pred / name, compress_level=1)
    return pred, target


def make_weights(checkpoints: Path) -> None:
    """Test-made weights under their real names (see the module docstring)."""
    import torch
    import torchvision

    from svai.metrics.inception import build_fid_inception

    checkpoints.mkdir(parents=True)
    torch.manual_seed(0)
    net = build_fid_inception()
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average: one pass sets the statistics
    pixels = torch.from_numpy(smooth_images(24, 128, seed=999)).permute(0, 3, 1, 2).float() / 255
    x = torch.nn.functional.interpolate(pixels, size=(299, 299), mode="bilinear", align_corners=False) * 2 - 1
    net.train()
    with torch.no_grad():
        net(x)
    torch.save(net.eval().state_dict(), checkpoints / INCEPTION_FILE)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), checkpoints / ALEXNET_FILE)


def svai_command(pred: Path, target: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "svai.cli", "evaluate", "--pred", str(pred), "--target", str(target), "--json", str(out), *extra]


def line(label: str, result: Run) -> None:
    print(f"  {label:<34} {result.wall:8.1f} s wall {result.cpu:8.1f} s CPU {result.peak_mb:8.0f} MB peak")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=500)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--small", type=int, default=100, help="pairs of the smaller set for the memory figure")
    parser.add_argument("--repeat", type=int, default=1, help="interleaved rounds; the best of each is shown")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--make-weights", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_weights is not None:
        # In a child process: the peak memory Linux reports for a command includes that of
        # the process it was started from, so this one must never load torch itself.
        make_weights(args.make_weights)
        return

    work = Path(tempfile.mkdtemp(prefix="svai-bench-metrics-"))
    try:
        env = dict(os.environ)
        env.update(TORCH_HOME=str(work / "torch"), SVAI_CACHE_DIR=str(work / "cache"), PYTHONPATH=str(ROOT))
        env.pop("SVAI_WEIGHTS_DIR", None)
        started = time.perf_counter()
        run([sys.executable, __file__, "--make-weights", str(work / "torch" / "hub" / "checkpoints")], env)
        pred, target = write_pairs(work / "big", args.pairs, args.size)
        small_pred, small_target = write_pairs(work / "small", args.small, args.size)
        print(f"{args.pairs} pairs at {args.size} px, {os.cpu_count()} CPUs; set-up {time.perf_counter() - started:.0f} s")

        commands = {
            "python -m pytorch_fid": [sys.executable, "-m", "pytorch_fid", str(pred), str(target), "--device", "cpu"],
            "svai FID alone (--no-cache)": svai_command(pred, target, work / "fid.json", "--metrics", "fid", "--no-cache"),
            "lpips loop": [sys.executable, "-c", LPIPS_LOOP, str(pred), str(target)],
            "scikit-image SSIM/PSNR loop": [sys.executable, "-c", SKIMAGE_LOOP, str(pred), str(target)],
            "svai full suite, cold cache": svai_command(pred, target, work / "cold.json", "--no-cache"),
            "svai full suite, warm cache": svai_command(pred, target, work / "warm.json"),
        }
        # Rounds interleave the commands, so a burst of load from other work on the machine
        # hits both sides of a comparison; each figure is the best (lowest) of its rounds.
        best: dict[str, Run] = {}
        for round_index in range(args.repeat):
            for label, command in commands.items():
                if label.endswith("warm cache") and round_index == 0 and not (work / "cache").exists():
                    run(svai_command(pred, target, work / "prime.json", "--metrics", "fid"), env)  # fill the cache
                result = run(command, env)
                if label not in best or result.wall < best[label].wall:
                    best[label] = result
        small = run(svai_command(small_pred, small_target, work / "small.json", "--no-cache"), env)

        fid_ref, fid_only = best["python -m pytorch_fid"], best["svai FID alone (--no-cache)"]
        lpips_ref, skimage_ref = best["lpips loop"], best["scikit-image SSIM/PSNR loop"]
        cold, warm = best["svai full suite, cold cache"], best["svai full suite, warm cache"]
        print(f"best of {args.repeat} interleaved round(s):")
        for label, result in best.items():
            line(label, result)
        line(f"svai full suite, {args.small} pairs", small)
        reference_wall = fid_ref.wall + lpips_ref.wall + skimage_ref.wall
        reference_cpu = fid_ref.cpu + lpips_ref.cpu + skimage_ref.cpu
        print(f"  {'reference suite (sum of three)':<34} {reference_wall:8.1f} s wall {reference_cpu:8.1f} s CPU")

        result = json.loads((work / "cold.json").read_text())["metrics"]
        fid_printed = re.search(r"FID:\s+([0-9.eE+-]+)", fid_ref.output)
        print("values (svai vs reference):")
        print(f"  FID   {result['fid']['mean']:.4f} vs {float(fid_printed.group(1)) if fid_printed else float('nan'):.4f}")
        print(f"  LPIPS {result['lpips']['mean']:.6f} vs {lpips_ref.output.split()[-1]}")
        ssim_psnr = skimage_ref.output.split()
        print(f"  SSIM  {result['ssim']['mean']:.6f} vs {ssim_psnr[-3]}   PSNR {result['psnr']['mean']:.6f} vs {ssim_psnr[-1]}")

        print("speed-up (reference / svai), wall and CPU:")
        print(f"  full suite, cold        {reference_wall / cold.wall:5.2f}x  {reference_cpu / cold.cpu:5.2f}x   (target >= 2x)")
        print(f"  full suite, warm        {reference_wall / warm.wall:5.2f}x  {reference_cpu / warm.cpu:5.2f}x")
        print(f"  FID alone               {fid_ref.wall / fid_only.wall:5.2f}x  {fid_ref.cpu / fid_only.cpu:5.2f}x   (target >= 1.2x)")
        print(f"peak memory: {small.peak_mb:.0f} MB at {args.small} pairs, {cold.peak_mb:.0f} MB at {args.pairs} pairs")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

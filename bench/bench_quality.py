"""Which model simulates surgery best: every family and preset, trained on the built-in data
for one stated budget, scored against doing nothing.

    python bench/bench_quality.py                       # the CPU budget, writes docs/results.md
    python bench/bench_quality.py --budget gpu          # the larger budget (a GPU machine)
    python bench/bench_quality.py --rows pix2pix:residual,stargan --steps-scale 0.1 --docs none

Rows: each image-to-image family in each output mode (direct, residual, masked, warp), each
preset in its own settings (the research's presets keep the papers' direct output), each
generated as it is and with `--composite`. Each run generates the test split with the
manifest's procedure labels and is evaluated on the whole image and inside / outside the
dataset's change masks. The table, one grid per row (before | simulation | after | change
×4), the settings and the commit go to docs/results.md. Rows that lose to doing nothing are
shown with their figures, never dropped. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from svai.composite import CompositeOptions
from svai.config import resolve
from svai.data.images import read_rgb
from svai.data.synthetic import write_synthetic_dataset
from svai.generate import Generation, generate_folder, load_model
from svai.io import write_atomic, write_png
from svai.metrics.evaluate import evaluate_folders
from svai.models.registry import families, presets, resolve_model, recommended_model
from svai.report import comparison_table, format_table, load_results
from svai.train import train
from svai.weights import MissingWeights

ROOT = Path(__file__).resolve().parent.parent
MODES = ("direct", "residual", "masked", "warp")
METRICS = ["ssim", "psnr"]


@dataclass(frozen=True)
class Budget:
    """One training budget: data, size, batch and steps per family; widths chosen to fit."""

    pairs: int
    size: int
    batch_size: int
    steps: dict[str, int]
    widths: dict[str, tuple[str, ...]]
    precision: str


BUDGETS = {
    # About an hour on a 2-core CPU for every row (bf16 autocast; this CPU has AMX-bf16).
    "cpu": Budget(pairs=300, size=64, batch_size=4, precision="bf16",
                  steps={"pix2pix": 600, "cyclegan": 300, "stargan": 600, "stargan-v2": 200,
                         "ae": 800, "vae": 800, "vae-perceptual": 300, "gan": 1000, "style-transfer": 200,
                         "sd-lora": 200, "sd-lora-concat": 200},
                  widths={"pix2pix": ("model.ngf=32", "model.ndf=32"),
                          "ae": ("model.ngf=32",), "vae": ("model.ngf=32",), "vae-perceptual": ("model.ngf=32",),
                          "gan": ("model.ngf=32", "model.ndf=32"), "style-transfer": ("model.ngf=32",),
                          "cyclegan": ("model.ngf=16", "model.ndf=32"),
                          "stargan": ("model.ngf=32", "model.ndf=32"),
                          "stargan-v2": ("model.ngf=32", "model.ndf=32", "model.max_conv_dim=128")}),
    # Reference widths at 128 px: meant for one GPU.
    "gpu": Budget(pairs=2000, size=128, batch_size=16, precision="bf16",
                  steps={"pix2pix": 20000, "cyclegan": 20000, "stargan": 20000, "stargan-v2": 20000,
                         "ae": 20000, "vae": 20000, "vae-perceptual": 20000, "gan": 20000, "style-transfer": 20000,
                         "sd-lora": 5000, "sd-lora-concat": 5000},
                  widths={}),
}


def all_rows() -> list[str]:
    """`name:mode` for every family in every mode it has, and every preset as it is."""
    rows = []
    for name, cls in families().items():
        modes = MODES if "output" in getattr(cls.Options, "__dataclass_fields__", {}) else ("direct",)
        rows += [f"{name}:{mode}" for mode in modes]
    # The recommended preset is the row `pix2pix:warp` under every budget here (same settings).
    rows += [f"{name}:preset" for name in presets() if name not in families() and name != recommended_model()]
    # Beyond the papers: StarGAN also pulled towards the paired after photo.
    rows += ["stargan:direct:paired_l1=10", "stargan:warp:paired_l1=10"]
    # pix2pix told which procedures were done, and how strongly (procedure maps).
    rows += ["pix2pix:warp:procedure_maps=true"]
    return rows


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def train_row(row: str, budget: Budget, data: Path, runs: Path, scale: float) -> tuple[Path, float, int]:
    name, mode, *extra = row.split(":")
    family = resolve_model(name)[0].name
    steps = max(1, round(budget.steps[family] * scale))
    sets = [f"data.image_size={budget.size}", f"train.steps={steps}", f"train.batch_size={budget.batch_size}",
            f"train.mixed_precision={budget.precision}", "train.sample_every=0", "train.evaluate=false",
            "train.checkpoint_every=0", *budget.widths.get(family, ())]
    if mode not in ("preset", "direct"):
        sets.append(f"model.output={mode}")
    sets += [f"model.{setting}" for setting in extra]
    config = resolve(name, sets=sets, flags={"data.root": str(data)})
    run = prediction_folder(row, runs, composite=False)
    if run.exists():
        shutil.rmtree(run)  # a run cut short earlier: this benchmark's own folder, trained again
    start = time.perf_counter()
    train(config, run)
    return run, time.perf_counter() - start, steps


def row_label(row: str) -> str:
    """"stargan:warp:paired_l1=10" -> "stargan:warp paired_l1=10"; presets by their name."""
    name, mode, *extra = row.split(":")
    return " ".join([name if mode == "preset" else f"{name}:{mode}", *extra])


def prediction_folder(row: str, out: Path, composite: bool) -> Path:
    label = row_label(row) + (" +composite" if composite else "")
    return out / label.replace(":", "-").replace(" +", "-").replace(" ", "-")


def evaluate_row(row: str, run: Path, data: Path, out: Path, composite: bool, training: dict) -> dict:
    model = load_model(run, device="cpu")
    label = row_label(row) + (" +composite" if composite else "")
    folder = prediction_folder(row, out, composite)
    settings = Generation(batch_size=16, composite=CompositeOptions() if composite else None)
    generate_folder(model, data / "test" / "before", folder, settings)
    result = evaluate_folders(folder, data / "test" / "after", metrics=METRICS, masks=data / "test" / "masks",
                              baseline=data / "test" / "before", before=data / "test" / "before", name=label,
                              use_cache=False)
    result["training"] = training
    write_atomic(folder.with_suffix(".json"), json.dumps(result).encode())
    return result


def mean_change(pred: Path, data: Path) -> float:
    """Mean absolute difference between the predictions and their before photos, in grey levels."""
    diffs = [np.abs(read_rgb(file).astype(np.float64) - read_rgb(data / "test" / "before" / file.name)).mean()
             for file in sorted(pred.glob("*.png"))]
    return float(np.mean(diffs)) if diffs else float("nan")


def mean(metrics: dict, key: str) -> str:
    """A metric's mean for the progress line; PSNR of identical images has no finite mean."""
    value = metrics.get(key, {}).get("mean")
    return "—" if value is None else f"{value:.4f}"


def not_measured(error: MissingWeights) -> str:
    """Why a row has no figures, for the page."""
    if error.what.startswith("base model"):
        return f"not measured: base weights absent ({error.what})"
    return f"not measured: pretrained weights absent ({error.what})"


def unmeasured_section(unmeasured: dict[str, str]) -> list[str]:
    """Rows whose pretrained weights this machine lacks, as markdown lines: no stand-in figures."""
    if not unmeasured:
        return []
    return ["Rows without figures: a network with made-up weights would be another model.", "",
            "| row | |", "| --- | --- |", *[f"| {row} | {reason} |" for row, reason in sorted(unmeasured.items())], ""]


def seed_section(checks: list[dict]) -> list[str]:
    """The recommended model on datasets drawn with other seeds, as markdown lines."""
    if not checks:
        return []
    lines = ["## The recommended model on other built-in datasets", "",
             "The same budget on a dataset drawn with a seed the table above never used, generated",
             "with `--composite`; inside = within the dataset's change masks.", "",
             "| seed | row | SSIM | PSNR | SSIM inside | PSNR inside | beats doing nothing |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for check in checks:
        for side in ("model", "baseline"):
            values = check[side]
            beats = sum(check["model"][k] > check["baseline"][k] for k in CHECK_METRICS)
            label = check["row"] + " +composite" if side == "model" else "do nothing"
            lines.append(f"| {check['seed']} | {label} | " + " | ".join(
                f"{values[k]:.4f}" if k.startswith("ssim") else f"{values[k]:.2f}" for k in CHECK_METRICS)
                + f" | {f'{beats}/{len(CHECK_METRICS)}' if side == 'model' else '—'} |")
    return lines + [""]


def difference_grid(pred: Path, data: Path, ids: list[str]) -> np.ndarray:
    """Rows of before | simulation | after | |simulation − before| × 4, as one uint8 image."""
    rows = []
    for image_id in ids:
        before = read_rgb(data / "test" / "before" / f"{image_id}.png")
        after = read_rgb(data / "test" / "after" / f"{image_id}.png")
        sim = read_rgb(pred / f"{image_id}.png")
        change = np.clip(np.abs(sim.astype(int) - before.astype(int)) * 4, 0, 255).astype(np.uint8)
        rows.append(np.concatenate([before, sim, after, change], axis=1))
    return np.concatenate(rows, axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="cpu")
    parser.add_argument("--rows", default="", help="comma-separated name:mode rows (default: all)")
    parser.add_argument("--steps-scale", type=float, default=1.0, help="multiply every step count (quick trials)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the built-in dataset")
    parser.add_argument("--work", type=Path, default=None, help="keep runs and predictions here")
    parser.add_argument("--docs", default=str(ROOT / "docs" / "results.md"), help="results page, or 'none'")
    parser.add_argument("--check-seeds", default="7", help="seeds of further built-in datasets on which the "
                        "recommended model is trained and scored with --composite (comma-separated; '' for none)")
    args = parser.parse_args()
    torch.manual_seed(0)
    budget = BUDGETS[args.budget]
    rows = [r if ":" in r else f"{r}:preset" for r in args.rows.split(",") if r] or all_rows()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    print(f"budget {args.budget}: {budget.pairs} pairs at {budget.size}px, batch {budget.batch_size}, "
          f"{budget.precision}, seed {args.seed}; {device}; commit {commit()}")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        data = work / "data"
        if not (data / "manifest.csv").is_file():
            write_synthetic_dataset(data, count=budget.pairs, size=budget.size, seed=args.seed)
        out = work / "predictions"
        unmeasured: dict[str, str] = {}
        for row in rows:
            if all(prediction_folder(row, out, c).with_suffix(".json").is_file() for c in (False, True)):
                print(f"{row_label(row):<32} already measured in {out}", flush=True)
                continue
            try:
                run, seconds, steps = train_row(row, budget, data, work / "runs", args.steps_scale)
            except MissingWeights as error:
                # Figures of a stand-in network would be another model's: the row says why it has none.
                unmeasured[row_label(row)] = not_measured(error)
                print(f"{row_label(row):<32} {unmeasured[row_label(row)]}", flush=True)
                continue
            for composite in (False, True):
                result = evaluate_row(row, run, data, out, composite, {"steps": steps, "seconds": round(seconds)})
                m = result["metrics"]
                print(f"{result['name']:<32} steps {steps:>5} train {seconds:>6.0f}s  "
                      f"SSIM {mean(m, 'ssim')}  PSNR {mean(m, 'psnr')}  PSNR inside {mean(m, 'psnr_changed')}  "
                      f"PSNR outside {mean(m, 'psnr_kept')}", flush=True)
        files = sorted(out.glob("*.json"))
        table = comparison_table(load_results(files))
        markdown = format_table(table, "markdown")
        print(markdown)
        seeds = [int(s) for s in args.check_seeds.split(",") if s.strip()]
        checks = [check_seed(seed, budget, work, args.steps_scale) for seed in seeds if seed != args.seed]
        if args.docs != "none":
            write_page(Path(args.docs), args, budget, markdown, out, data, checks, unmeasured)


CHECK_METRICS = ("ssim", "psnr", "ssim_changed", "psnr_changed")


def check_seed(seed: int, budget: Budget, work: Path, scale: float) -> dict:
    """Train the recommended model on a built-in dataset drawn with `seed` and score it with
    --composite against doing nothing: {"seed", "row", "model": {metric: mean}, "baseline": {...}}."""
    row = f"{recommended_model()}:preset"
    data = work / f"data-seed{seed}"
    if not (data / "manifest.csv").is_file():
        write_synthetic_dataset(data, count=budget.pairs, size=budget.size, seed=seed)
    out = work / f"predictions-seed{seed}"
    cached = prediction_folder(row, out, True).with_suffix(".json")
    if cached.is_file():
        result = json.loads(cached.read_text())
    else:
        run, seconds, steps = train_row(row, budget, data, work / f"runs-seed{seed}", scale)
        result = evaluate_row(row, run, data, out, True, {"steps": steps, "seconds": round(seconds)})
    means = {"model": {k: result["metrics"][k]["mean"] for k in CHECK_METRICS},
             "baseline": {k: result["baseline"]["metrics"][k]["mean"] for k in CHECK_METRICS}}
    beats = sum(means["model"][k] > means["baseline"][k] for k in CHECK_METRICS)
    print(f"seed {seed}: {row_label(row)} +composite beats doing nothing on {beats}/{len(CHECK_METRICS)}: "
          + ", ".join(f"{k} {means['model'][k]:.4f} vs {means['baseline'][k]:.4f}" for k in CHECK_METRICS), flush=True)
    return {"seed": seed, "row": row_label(row), **means}


def write_page(page: Path, args: argparse.Namespace, budget: Budget, markdown: str, out: Path, data: Path,
               checks: list[dict], unmeasured: dict[str, str]) -> None:
    timings, changes = {}, {}
    for file in sorted(out.glob("*.json")):
        result = json.loads(file.read_text())
        changes[result["name"]] = mean_change(file.with_suffix(""), data)
        if "training" in result and not result["name"].endswith("+composite"):
            timings[result["name"]] = (result["training"]["steps"], result["training"]["seconds"])
    grids = page.parent / "results"
    ids = sorted(p.stem for p in (data / "test" / "before").glob("*.png"))[:4]
    lines = [
        "# Results on the built-in data",
        "",
        "Written by `python bench/bench_quality.py"
        + (f" --budget {args.budget}" if args.budget != "cpu" else "") + "`; do not edit by hand.",
        "",
        f"- data: `svai prepare synthetic` — {budget.pairs} pairs, {budget.size} px, seed {args.seed}; "
        "test split scored, with the manifest's procedure labels",
        f"- training: batch {budget.batch_size}, {budget.precision} autocast, widths "
        + "; ".join(f"{k}: {' '.join(v)}" for k, v in budget.widths.items()) + ", steps "
        + ", ".join(f"{k} {round(v * args.steps_scale)}" for k, v in budget.steps.items()),
        f"- commit {commit()}; {torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}",
        f"- the recommended model, `{recommended_model()}`, is the row `pix2pix:warp` (its preset holds these "
        "settings); `svai generate` composites its output by default, so its row is `pix2pix:warp +composite`",
        "- `do nothing` is the before photo used as the prediction; † marks a figure worse than it.",
        "  `_changed` / `_kept`: inside / outside the dataset's change masks.",
        "",
        markdown,
        "",
        *unmeasured_section(unmeasured),
        *seed_section(checks),
        "## How much each row changed the photo",
        "",
        "Mean |simulation − before| over the test split, in grey levels (0–255): a row near 0",
        "returned the before photo almost unchanged, so its ties with doing nothing say little.",
        "",
        "| row | steps | training s | change, whole image | change, +composite |",
        "| --- | --- | --- | --- | --- |",
        *[f"| {row} | {steps} | {seconds:.0f} | {changes.get(row, float('nan')):.2f} | "
          f"{changes.get(row + ' +composite', float('nan')):.2f} |" for row, (steps, seconds) in timings.items()],
        "",
        "## Grids",
        "",
        "before | simulation | after | change from the before photo × 4, on the first four test pairs.",
        "",
    ]
    for folder in sorted(p for p in out.iterdir() if p.is_dir()):
        write_png(grids / f"{folder.name}.png", difference_grid(folder, data, ids))
        lines += [f"### {folder.name}", "", f"![{folder.name}](results/{folder.name}.png)", ""]
    write_atomic(page, ("\n".join(lines) + "\n").encode())
    print(f"wrote {page} and {len(list(grids.glob('*.png')))} grids in {grids}")


if __name__ == "__main__":
    main()

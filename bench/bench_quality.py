"""Which model simulates surgery best: every family and preset, trained on the built-in data
for one stated budget, scored against doing nothing.

    python bench/bench_quality.py                       # the 128 px CPU budget, its section of docs/results.md
    python bench/bench_quality.py --budget cpu64        # every family and mode at 64 px (about an hour)
    python bench/bench_quality.py --budget gpu          # the larger budget (a GPU machine)
    python bench/bench_quality.py --rows pix2pix:residual,stargan --steps-scale 0.1 --docs none

Rows: each image-to-image family in each output mode (direct, residual, masked, warp), each
preset in its own settings (the research's presets keep the papers' direct output), each
generated as it is and with `--composite`. Each run generates the test split with the
manifest's procedure labels and is evaluated on the whole image and inside / outside the
dataset's change masks. The table, one grid per row (before | simulation | after | change
×4), the settings and the commit go to docs/results.md, each budget in its own section (a run
replaces its section and keeps the others). Also, per row: the face layer's identity score
(SFace cosine between simulation and before) and how much it changed the photo inside the
masks against the true after; for rows that take procedures, a control table (each
procedure alone: change inside and outside its region; intensity 0.5 against 1); for the
recommended model, the time to fit and generate the test split and to simulate a 12-megapixel
photo. The dataset is drawn with `svai prepare synthetic`'s landmarks when the face layer can
run (the landmark families need them). Rows that lose to doing nothing are shown with their
figures, never dropped. Prints figures; asserts nothing.
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
from svai.data.images import read_rgb
from svai.errors import SvaiError
from svai.generate import Generation, generate_folder, load_model
from svai.io import write_atomic, write_png
from svai.metrics.evaluate import evaluate_folders
from svai.metrics.options import EvaluateOptions
from svai.models.registry import families, presets, recommended_model, resolve_model
from svai.report import comparison_table, format_table, load_results
from svai.run import resolve
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
    # The rows measured by default (empty: every family in every mode and every preset); the
    # section of docs/results.md this budget writes.
    rows: tuple[str, ...] = ()
    title: str = ""


CPU_WIDTHS = {"pix2pix": ("model.ngf=32", "model.ndf=32"),
              "ae": ("model.ngf=32",), "vae": ("model.ngf=32",), "vae-perceptual": ("model.ngf=32",),
              "gan": ("model.ngf=32", "model.ndf=32"), "style-transfer": ("model.ngf=32",),
              "cyclegan": ("model.ngf=16", "model.ndf=32"),
              "stargan": ("model.ngf=32", "model.ndf=32"),
              "stargan-v2": ("model.ngf=32", "model.ndf=32", "model.max_conv_dim=128")}

BUDGETS = {
    # 128 px, the landmark families' size (64 px landmarks are too noisy): the recommended model,
    # its learned refinement, the model recommended before it and the learned families that
    # take procedures, at the 64 px budget's steps. About an hour on a 2-core CPU. A family
    # without steps here (landmark-warp) trains as its preset says.
    "cpu": Budget(pairs=300, size=128, batch_size=4, precision="bf16",
                  steps={"pix2pix": 600, "stargan": 600},
                  widths=CPU_WIDTHS,
                  rows=("landmark-warp:preset", "landmark-warp-refine:preset", "pix2pix-warp:preset",
                        "pix2pix:warp:procedure_maps=true", "stargan:direct", "stargan:warp:paired_l1=10"),
                  title="128 px: the landmark families against the learned ones"),
    # About an hour on a 2-core CPU for every row (bf16 autocast; this CPU has AMX-bf16).
    "cpu64": Budget(pairs=300, size=64, batch_size=4, precision="bf16",
                  steps={"pix2pix": 600, "cyclegan": 300, "stargan": 600, "stargan-v2": 200,
                         "ae": 800, "vae": 800, "vae-perceptual": 300, "gan": 1000, "style-transfer": 200,
                         "sd-lora": 200, "sd-lora-concat": 200},
                  widths={"pix2pix": ("model.ngf=32", "model.ndf=32"),
                          "ae": ("model.ngf=32",), "vae": ("model.ngf=32",), "vae-perceptual": ("model.ngf=32",),
                          "gan": ("model.ngf=32", "model.ndf=32"), "style-transfer": ("model.ngf=32",),
                          "cyclegan": ("model.ngf=16", "model.ndf=32"),
                          "stargan": ("model.ngf=32", "model.ndf=32"),
                          "stargan-v2": ("model.ngf=32", "model.ndf=32", "model.max_conv_dim=128")},
                  title="64 px: every family and mode"),
    # Reference widths at 128 px: meant for one GPU.
    "gpu": Budget(pairs=2000, size=128, batch_size=16, precision="bf16",
                  steps={"pix2pix": 20000, "cyclegan": 20000, "stargan": 20000, "stargan-v2": 20000,
                         "ae": 20000, "vae": 20000, "vae-perceptual": 20000, "gan": 20000, "style-transfer": 20000,
                         "sd-lora": 5000, "sd-lora-concat": 5000},
                  widths={}, title="128 px, reference widths (GPU)"),
}


def all_rows() -> list[str]:
    """`name:mode` for every family in every mode it has, and every preset as it is."""
    rows = []
    for name, cls in families().items():
        if "output" in getattr(cls.Options, "__dataclass_fields__", {}):
            rows += [f"{name}:{mode}" for mode in MODES]
        else:
            rows.append(f"{name}:preset" if name in presets() else f"{name}:direct")
    rows += [f"{name}:preset" for name in presets() if name not in families()]
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
    sets = [f"data.image_size={budget.size}", f"train.mixed_precision={budget.precision}", "train.sample_every=0",
            "train.evaluate=false", "train.checkpoint_every=0", *budget.widths.get(family, ())]
    if family in budget.steps:
        steps = max(1, round(budget.steps[family] * scale))
        sets += [f"train.steps={steps}", f"train.batch_size={budget.batch_size}"]
    else:
        preset_steps = resolve(name).train.steps
        steps = preset_steps if preset_steps == 1 else max(1, round(preset_steps * scale))
        sets.append(f"train.steps={steps}")
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
    start = time.perf_counter()
    generate_folder(model, data / "test" / "before", folder, settings)
    generation = time.perf_counter() - start
    options = EvaluateOptions(metrics=METRICS, masks=data / "test" / "masks", baseline=data / "test" / "before",
                              before=data / "test" / "before", name=label, use_cache=False)
    result = evaluate_folders(folder, data / "test" / "after", options)
    result["training"] = training
    result["generation_seconds"] = round(generation, 1)
    result["extras"] = identity_and_change(folder, data)
    write_atomic(folder.with_suffix(".json"), json.dumps(result).encode())
    return result


def mean_change(pred: Path, data: Path) -> float:
    """Mean absolute difference between the predictions and their before photos, in grey levels."""
    diffs = [np.abs(read_rgb(file).astype(np.float64) - read_rgb(data / "test" / "before" / file.name)).mean()
             for file in sorted(pred.glob("*.png"))]
    return float(np.mean(diffs)) if diffs else float("nan")


_SCORER: list = []


def identity_scorer():  # type: ignore[no-untyped-def]
    """The face layer's identity scorer, or None where it cannot run (then no identity column)."""
    if not _SCORER:
        from svai.face.finder import problem

        if problem() is None:
            from svai.face.identity import IdentityScorer

            _SCORER.append(IdentityScorer())
        else:
            _SCORER.append(None)
    return _SCORER[0]


def identity_and_change(pred: Path, data: Path) -> dict:
    """Per row: the identity score (SFace cosine between each simulation and its before photo,
    both aligned on the before photo's stored landmarks; the true after's for reference, on its
    own landmarks), and the mean change |x − before| inside the change masks, of the
    simulation and of the true after, in grey levels."""
    from svai.face.store import read_landmarks

    scorer = identity_scorer()
    stored = read_landmarks(data, "test")
    identity, true_identity, inside, true_inside = [], [], [], []
    for file in sorted(pred.glob("*.png")):
        before = read_rgb(data / "test" / "before" / file.name)
        after = read_rgb(data / "test" / "after" / file.name)
        sim = read_rgb(file)
        mask = read_rgb(data / "test" / "masks" / file.name)[..., 0] > 127
        if mask.any():
            inside.append(np.abs(sim.astype(float) - before).mean(axis=2)[mask].mean())
            true_inside.append(np.abs(after.astype(float) - before).mean(axis=2)[mask].mean())
        points, points_after = stored.before(file.stem), stored.after(file.stem)
        if scorer is not None and points is not None:
            identity.append(scorer.similarity(sim, before, points))
            if points_after is not None:
                true_identity.append(scorer.similarity(after, before, points_after, points))
    average = lambda values: float(np.mean(values)) if values else None  # noqa: E731
    return {"identity": average(identity), "identity_n": len(identity), "true_identity": average(true_identity),
            "change_inside": average(inside), "true_change_inside": average(true_inside)}


def control(run: Path, data: Path) -> dict | None:
    """For a model that takes procedures, on the test split without composite: each procedure
    alone at full strength (its change inside and outside its landmark region, the share of
    the change inside, how many photos changed any pixel outside), and the manifest's own
    procedures at intensity 0.5 and 1 (and 0: photos returned unchanged). None otherwise."""
    from svai.face import mesh
    from svai.face.store import read_landmarks
    from svai.generate import dataset_procedures, translate_batch
    from svai.models.base import Request

    model = load_model(run, device="cpu")
    if "procedures" not in model.family.uses:
        return None
    stored = read_landmarks(data, "test")
    ids = [i for i in sorted(stored.rows) if stored.before(i) is not None]
    images = [read_rgb(data / "test" / "before" / f"{i}.png") for i in ids]
    points = [stored.before(i) for i in ids]
    vocabulary = model.family.procedures
    result: dict = {"procedures": {}, "photos": len(ids)}
    for index, procedure in enumerate(vocabulary):
        if procedure not in mesh.REGION_SHAPES:
            continue
        strengths = torch.zeros(1, len(vocabulary))
        strengths[0, index] = 1.0
        inside, outside, share, leaked = [], [], [], 0
        for start in range(0, len(images), 16):
            chunk = slice(start, start + 16)
            outs = translate_batch(model, images[chunk], Request(procedures=strengths), points[chunk])
            for image, out, face in zip(images[chunk], outs, points[chunk]):
                region = mesh.region_mask(face, procedure, image.shape[1], image.shape[0]) > 0
                change = np.abs(out.astype(float) - image).mean(axis=2)
                inside.append(change[region].mean())
                outside.append(change[~region].mean())
                share.append(change[region].sum() / max(change.sum(), 1e-12) if change.sum() else float("nan"))
                leaked += int((change[~region] > 0).any())
        result["procedures"][procedure] = {"inside": float(np.mean(inside)), "outside": float(np.mean(outside)),
                                           "share_inside": float(np.nanmean(share)) if not np.isnan(share).all()
                                           else None, "photos_changed_outside": leaked}
    labels = dataset_procedures(data / "test" / "before", vocabulary)
    changes = {}
    for alpha in (0.0, 0.5, 1.0):
        values = []
        for start in range(0, len(images), 16):
            chunk = slice(start, start + 16)
            rows = torch.stack([labels[i] for i in ids[chunk]])
            outs = translate_batch(model, images[chunk], Request(procedures=rows, intensity=alpha), points[chunk])
            values += [np.abs(o.astype(float) - i).mean() for o, i in zip(outs, images[chunk])]
        changes[alpha] = float(np.mean(values))
    result["intensity"] = {"change_0": changes[0.0], "change_half": changes[0.5], "change_full": changes[1.0],
                           "ratio": changes[0.5] / changes[1.0] if changes[1.0] else None}
    return result


def photo_timing(run: Path) -> dict:
    """The recommended model on real photos: scikit-image's astronaut (512 px) with only the
    nose ticked (change inside and outside the nose region), and the same photo enlarged to a
    12-megapixel (4000 × 3000) JPEG, timed through `translate_batch` (face layer included,
    decoding excluded; median of three)."""
    import io

    from PIL import Image
    from skimage.data import astronaut

    from svai.face import mesh
    from svai.generate import parse_procedures, translate_batch
    from svai.models.base import Request
    from svai.models.face_input import find_landmarks

    model = load_model(run, device="cpu")
    if "procedures" not in model.family.uses:
        return {}
    nose = Request(procedures=parse_procedures("nose", model.family.procedures))
    photo = astronaut()
    points = find_landmarks(photo)
    out = translate_batch(model, [photo], nose)[0]
    result: dict = {}
    if points is not None:
        region = mesh.region_mask(points, "nose", photo.shape[1], photo.shape[0]) > 0
        change = np.abs(out.astype(float) - photo).mean(axis=2)
        result["astronaut"] = {"inside": float(change[region].mean()), "max": float(change.max()),
                               "pixels_changed_outside": int((change[~region] > 0).sum())}
    canvas = Image.new("RGB", (3000, 4000), (96, 104, 112))
    canvas.paste(Image.fromarray(photo).resize((3000, 3000), Image.BICUBIC), (0, 500))
    buffer = io.BytesIO()
    canvas.save(buffer, "JPEG", quality=92)
    big = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    seconds = []
    for _ in range(3):
        start = time.perf_counter()
        translate_batch(model, [big], nose)
        seconds.append(time.perf_counter() - start)
    result["photo_12mp_seconds"] = float(np.median(seconds))
    return result


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
    parser.add_argument("--rows", default="", help="comma-separated name:mode rows (default: the budget's)")
    parser.add_argument("--steps-scale", type=float, default=1.0, help="multiply every step count (quick trials)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the built-in dataset")
    parser.add_argument("--work", type=Path, default=None, help="keep runs and predictions here")
    parser.add_argument("--docs", default=str(ROOT / "docs" / "results.md"), help="results page, or 'none'")
    parser.add_argument("--check-seeds", default="7", help="seeds of further built-in datasets on which the "
                        "recommended model is trained and scored as generated by default (comma-separated; '' for none)")
    args = parser.parse_args()
    torch.manual_seed(0)
    budget = BUDGETS[args.budget]
    rows = [r if ":" in r else f"{r}:preset" for r in args.rows.split(",") if r] or list(budget.rows) or all_rows()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    print(f"budget {args.budget}: {budget.pairs} pairs at {budget.size}px, batch {budget.batch_size}, "
          f"{budget.precision}, seed {args.seed}; {device}; commit {commit()}")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        data = work / "data"
        draw_dataset(data, budget, args.seed)
        out = work / "predictions"
        unmeasured: dict[str, str] = {}
        controls: dict[str, dict] = {}
        timing: dict = {}
        for row in rows:
            cached = prediction_folder(row, out, False).with_suffix(".control.json")
            if all(prediction_folder(row, out, c).with_suffix(".json").is_file() for c in (False, True)) \
                    and cached.is_file():
                print(f"{row_label(row):<32} already measured in {out}", flush=True)
                controls.update(json.loads(cached.read_text()))
                continue
            try:
                run, seconds, steps = train_row(row, budget, data, work / "runs", args.steps_scale)
            except (MissingWeights, SvaiError) as error:
                # Figures of a stand-in network would be another model's: the row says why it has none.
                unmeasured[row_label(row)] = not_measured(error) if isinstance(error, MissingWeights) \
                    else f"not measured: {error}"
                print(f"{row_label(row):<32} {unmeasured[row_label(row)]}", flush=True)
                continue
            for composite in (False, True):
                result = evaluate_row(row, run, data, out, composite, {"steps": steps, "seconds": round(seconds, 1)})
                m = result["metrics"]
                print(f"{result['name']:<32} steps {steps:>5} train {seconds:>6.0f}s  "
                      f"SSIM {mean(m, 'ssim')}  PSNR {mean(m, 'psnr')}  PSNR inside {mean(m, 'psnr_changed')}  "
                      f"PSNR outside {mean(m, 'psnr_kept')}  identity {result['extras']['identity']}", flush=True)
            found = control(run, data)
            measured = {row_label(row): found} if found is not None else {}
            if row == f"{recommended_model()}:preset" and found is not None:
                measured[row_label(row)]["real_photos"] = photo_timing(run)
                print(f"{row_label(row):<32} real photos: {measured[row_label(row)]['real_photos']}", flush=True)
            write_atomic(cached, json.dumps(measured).encode())
            controls.update(measured)
        files = sorted(p for p in out.glob("*.json") if not p.name.endswith(".control.json"))
        table = comparison_table(load_results(files))
        markdown = format_table(table, "markdown")
        print(markdown)
        seeds = [int(s) for s in args.check_seeds.split(",") if s.strip()]
        checks = [check_seed(seed, budget, work, args.steps_scale) for seed in seeds if seed != args.seed]
        if args.docs != "none":
            write_page(Path(args.docs), args, budget, markdown, out, data, checks, unmeasured, controls)


def draw_dataset(data: Path, budget: Budget, seed: int) -> None:
    """The built-in dataset for a budget, with each pair's landmarks where the face layer runs."""
    if (data / "manifest.csv").is_file():
        return
    from svai.data.options import SyntheticOptions
    from svai.data.prepare import prepare_synthetic

    prepare_synthetic(data, SyntheticOptions(count=budget.pairs, size=budget.size, seed=seed))


CHECK_METRICS = ("ssim", "psnr", "ssim_changed", "psnr_changed")


def check_seed(seed: int, budget: Budget, work: Path, scale: float) -> dict:
    """Train the recommended model on a built-in dataset drawn with `seed` and score it as
    `svai generate` runs it by default (its preset's composite setting) against doing nothing:
    {"seed", "row", "model": {metric: mean}, "baseline": {...}, "extras": {...}}."""
    name = recommended_model()
    row = f"{name}:preset"
    composite = resolve(name).generate.composite
    data = work / f"data-seed{seed}"
    draw_dataset(data, budget, seed)
    out = work / f"predictions-seed{seed}"
    cached = prediction_folder(row, out, composite).with_suffix(".json")
    if cached.is_file():
        result = json.loads(cached.read_text())
    else:
        run, seconds, steps = train_row(row, budget, data, work / f"runs-seed{seed}", scale)
        result = evaluate_row(row, run, data, out, composite, {"steps": steps, "seconds": round(seconds, 1)})
    means = {"model": {k: result["metrics"][k]["mean"] for k in CHECK_METRICS},
             "baseline": {k: result["baseline"]["metrics"][k]["mean"] for k in CHECK_METRICS}}
    beats = sum(means["model"][k] > means["baseline"][k] for k in CHECK_METRICS)
    print(f"seed {seed}: {result['name']} beats doing nothing on {beats}/{len(CHECK_METRICS)}: "
          + ", ".join(f"{k} {means['model'][k]:.4f} vs {means['baseline'][k]:.4f}" for k in CHECK_METRICS)
          + f"; {result['extras']}", flush=True)
    return {"seed": seed, "row": result["name"], **means, "extras": result["extras"]}


SECTION = "<!-- budget {} -->"
SECTION_END = "<!-- end of budget {} -->"


def merge_sections(page: Path, budget: str, section: list[str]) -> str:
    """The page with `budget`'s section replaced by `section` (or added at the top), every other
    budget's section kept as the last run wrote it. A page from before sections existed is
    kept as the 64 px budget's section."""
    header = ["# Results on the built-in data", "",
              "Written by `python bench/bench_quality.py [--budget NAME]`, one section per budget; do not edit by hand.",
              ""]
    sections: dict[str, list[str]] = {}
    order: list[str] = []
    if page.is_file():
        lines = page.read_text(encoding="utf-8").splitlines()
        if not any(line.startswith("<!-- budget ") for line in lines):
            body = ["The last run of this budget, at the commit named below (then the default budget).", "",
                    *lines[4:]]
            body = ["#" + line if line.startswith("#") else line for line in body]
            sections["cpu64"] = [SECTION.format("cpu64"), f"## {BUDGETS['cpu64'].title} (`--budget cpu64`)", "",
                                 *body,
                                 SECTION_END.format("cpu64")]
            order.append("cpu64")
        else:
            current: str | None = None
            for line in lines:
                if line.startswith("<!-- budget "):
                    current = line[len("<!-- budget "):-len(" -->")]
                    sections[current] = []
                    order.append(current)
                if current is not None:
                    sections[current].append(line)
                if current is not None and line == SECTION_END.format(current):
                    current = None
    sections[budget] = [SECTION.format(budget), *section, SECTION_END.format(budget)]
    if budget not in order:
        order.insert(0, budget)
    return "\n".join(header + [line for name in order for line in sections[name] + [""]]).rstrip() + "\n"


def fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def seed_section(checks: list[dict]) -> list[str]:
    """The recommended model on datasets drawn with other seeds, as markdown lines."""
    if not checks:
        return []
    lines = ["### The recommended model on other built-in datasets", "",
             "The same budget on a dataset drawn with a seed the table above never used, generated as",
             "`svai generate` does by default; inside = within the dataset's change masks.", "",
             "| seed | row | SSIM | PSNR | SSIM inside | PSNR inside | beats doing nothing | change inside (true) | identity |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for check in checks:
        extras = check.get("extras", {})
        for side in ("model", "baseline"):
            values = check[side]
            beats = sum(check["model"][k] > check["baseline"][k] for k in CHECK_METRICS)
            label = check["row"] if side == "model" else "do nothing"
            tail = (f" | {beats}/{len(CHECK_METRICS)} | {fmt(extras.get('change_inside'))} "
                    f"({fmt(extras.get('true_change_inside'))}) | {fmt(extras.get('identity'), 3)} |"
                    if side == "model" else " | — | 0 | 1 |")
            lines.append(f"| {check['seed']} | {label} | " + " | ".join(
                f"{values[k]:.4f}" if k.startswith("ssim") else f"{values[k]:.2f}" for k in CHECK_METRICS) + tail)
    return lines + [""]


def control_section(controls: dict[str, dict]) -> list[str]:
    """The per-procedure control table and the intensity response, as markdown lines."""
    if not controls:
        return []
    lines = ["### Control: one procedure at a time, and intensity", "",
             "Each procedure alone at full strength on every test photo, without composite: mean change",
             "(grey levels) inside and outside its landmark region (`svai.face.mesh`, drawn on the before",
             "photo), the share of the change that falls inside, and how many photos changed any pixel",
             "outside. Intensity: the manifest's procedures at 0.5 and 1; ratio = change at 0.5 / at 1",
             "(proportional: 0.5); at 0 every family returns the photo byte for byte.", "",
             "| row | procedure | inside | outside | share inside | photos changed outside |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row, found in controls.items():
        for procedure, values in found["procedures"].items():
            lines.append(f"| {row} | {procedure} | {fmt(values['inside'])} | {fmt(values['outside'], 3)} | "
                         f"{fmt(values['share_inside'], 3)} | {values['photos_changed_outside']}/{found['photos']} |")
    lines += ["", "| row | change at 0 | at 0.5 | at 1 | ratio |", "| --- | --- | --- | --- | --- |"]
    for row, found in controls.items():
        i = found["intensity"]
        lines.append(f"| {row} | {fmt(i['change_0'], 3)} | {fmt(i['change_half'], 3)} | {fmt(i['change_full'], 3)} | "
                     f"{fmt(i['ratio'], 3)} |")
    photos = {row: found["real_photos"] for row, found in controls.items() if found.get("real_photos")}
    for row, found in photos.items():
        astronaut = found.get("astronaut", {})
        lines += ["", f"Real photos, `{row}`: scikit-image's astronaut (512 px) with `--procedures nose` changed the",
                  f"nose region by {fmt(astronaut.get('inside'))} grey levels on average (largest change "
                  f"{fmt(astronaut.get('max'), 0)}), {astronaut.get('pixels_changed_outside', '—')} pixels outside it; "
                  f"the same photo as a 12-megapixel JPEG took {fmt(found.get('photo_12mp_seconds'))} s "
                  "(`translate_batch`, face layer included, decoding excluded, median of 3)."]
    return lines + [""]


def write_page(page: Path, args: argparse.Namespace, budget: Budget, markdown: str, out: Path, data: Path,
               checks: list[dict], unmeasured: dict[str, str], controls: dict[str, dict]) -> None:
    timings, changes, extras, generation = {}, {}, {}, {}
    for file in sorted(p for p in out.glob("*.json") if not p.name.endswith(".control.json")):
        result = json.loads(file.read_text())
        changes[result["name"]] = mean_change(file.with_suffix(""), data)
        extras[result["name"]] = result.get("extras", {})
        generation[result["name"]] = result.get("generation_seconds")
        if "training" in result and not result["name"].endswith("+composite"):
            timings[result["name"]] = (result["training"]["steps"], result["training"]["seconds"])
    folder = "results" if args.budget == "cpu64" else f"results/{args.budget}"
    grids = page.parent / folder
    ids = sorted(p.stem for p in (data / "test" / "before").glob("*.png"))[:4]
    true_identity = next((e.get("true_identity") for e in extras.values() if e.get("true_identity")), None)
    true_inside = next((e.get("true_change_inside") for e in extras.values() if e.get("true_change_inside")), None)
    recommended = recommended_model()
    lines = [
        f"## {budget.title} (`--budget {args.budget}`)",
        "",
        f"- data: `svai prepare synthetic` — {budget.pairs} pairs, {budget.size} px, seed {args.seed}, with landmarks; "
        "test split scored, with the manifest's procedure labels",
        f"- training: batch {budget.batch_size}, {budget.precision} autocast, widths "
        + "; ".join(f"{k}: {' '.join(v)}" for k, v in budget.widths.items() if k in budget.steps) + ", steps "
        + ", ".join(f"{k} {round(v * args.steps_scale)}" for k, v in budget.steps.items())
        + "; landmark-warp presets as they are (the fit is one step)",
        f"- commit {commit()}; {torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}",
        f"- the recommended model is `{recommended}`; `svai generate` runs it "
        + ("with" if resolve(recommended).generate.composite else "without") + " composite by default",
        "- `do nothing` is the before photo used as the prediction; † marks a figure worse than it.",
        "  `_changed` / `_kept`: inside / outside the dataset's change masks.",
        "",
        markdown,
        "",
        *unmeasured_section(unmeasured),
        *seed_section(checks),
        *control_section(controls),
        "### How much each row changed the photo, and whose face it is",
        "",
        "Mean |simulation − before| in grey levels (0–255): over the whole image, and inside the",
        f"change masks (the true after: {fmt(true_inside)}). Identity: SFace cosine between the",
        "simulation and its before photo (`svai.face.identity`; same person above 0.363; the true",
        f"after scores {fmt(true_identity, 3)}). Seconds: training (the fit, for landmark-warp) and",
        "generating the 33 test photos.",
        "",
        "| row | steps | training s | generation s | change, whole image | change inside masks | identity |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in sorted(changes):
        steps, seconds = timings.get(row.removesuffix(" +composite"), ("", float("nan")))
        lines.append(f"| {row} | {steps} | {fmt(seconds, 1)} | {fmt(generation.get(row), 1)} | "
                     f"{fmt(changes[row])} | {fmt(extras[row].get('change_inside'))} | "
                     f"{fmt(extras[row].get('identity'), 3)} |")
    lines += ["", "### Grids", "",
              "before | simulation | after | change from the before photo × 4, on the first four test pairs.", ""]
    for folder_path in sorted(p for p in out.iterdir() if p.is_dir()):
        write_png(grids / f"{folder_path.name}.png", difference_grid(folder_path, data, ids))
        lines += [f"#### {folder_path.name}", "", f"![{folder_path.name}]({folder}/{folder_path.name}.png)", ""]
    write_atomic(page, merge_sections(page, args.budget, lines).encode())
    print(f"wrote the {args.budget} section of {page} and its grids in {grids}")


if __name__ == "__main__":
    main()

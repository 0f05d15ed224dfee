"""Evaluation results for the report tests, with numbers chosen so that every expectation can
be worked out by hand:

            fid ↓   lpips ↓   ssim ↑        psnr ↑
baseline    60      0.25      0.82 ± 0.05   23.0 ± 2.0
pix2pix     40      0.20      0.80 ± 0.05   24.0 ± 2.0     better on fid, lpips, psnr: 3/4
cyclegan    65      0.15      0.85 ± 0.04   22.0 ± 1.5     better on lpips, ssim:      2/4

Best: fid pix2pix, lpips cyclegan, ssim cyclegan, psnr pix2pix.

Fixtures:
    runs: two run folders (pix2pix, cyclegan) sharing one embedded baseline, and the image
        folders they name; a dict of paths ("p2p", "cg", "before", "after", "p2p_out",
        "cg_out", "tmp").
    kit: the numbers above and the builders that write variants of those runs (see `Kit`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from svai import report

IDS = [f"syn-{i:06d}" for i in range(9)] + ["sub/dir/img"]
SIZE = 48

BASELINE = {"fid": (60.0, None), "lpips": (0.25, 0.03), "ssim": (0.82, 0.05), "psnr": (23.0, 2.0)}
PIX2PIX = {"fid": (40.0, None), "lpips": (0.20, 0.03), "ssim": (0.80, 0.05), "psnr": (24.0, 2.0)}
CYCLEGAN = {"fid": (65.0, None), "lpips": (0.15, 0.02), "ssim": (0.85, 0.04), "psnr": (22.0, 1.5)}
HIGHER = {"fid": False, "lpips": False, "ssim": True, "psnr": True}


def metrics(values: dict, n: int = 10, directions: bool = True) -> dict:
    out = {}
    for name, (mean, std) in values.items():
        entry: dict = {"mean": mean, "n": n, "per_image": {image_id: mean for image_id in IDS}}
        if std is not None:
            entry["std"] = std
        if directions:
            entry["higher_is_better"] = HIGHER[name]
        out[name] = entry
    return out


def write_images(folder: Path, seed: int, ext: str = ".png", ids: list[str] = IDS) -> Path:
    """Random noise images, different in every folder and for every id."""
    rng = np.random.default_rng(seed)
    for image_id in ids:
        path = folder / f"{image_id}{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(path)
    return folder


def evaluation(name: str, values: dict, pred: Path, target: Path, before: Path | None, baseline: dict | None) -> dict:
    return {
        "svai_version": "0.1.0", "name": name, "role": "model",
        "pred": str(pred), "target": str(target), "masks": None, "before": str(before) if before else None,
        "metrics": metrics(values), "baseline": baseline,
        "unavailable": {"is": "no Inception weights: run `svai weights fetch`"},
        "unmatched": {"pred_only": [], "target_only": []}, "skipped": [],
        "settings": {"ssim": {"window": 11, "gaussian": True}, "fid_dims": 2048, "lpips_net": "alex"},
        "weights": {"inception": "6726825d"}, "versions": {"torch": "2.4.0"},
    }


def baseline_json(before: Path, target: Path, values: dict = BASELINE) -> dict:
    return {"name": "baseline", "role": "baseline", "pred": str(before), "target": str(target),
            "metrics": metrics(values)}


def write_run(folder: Path, data: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "evaluation.json").write_text(json.dumps(data, indent=1))
    (folder / "config.yaml").write_text("model: {name: x}\n")
    return folder


def table_for(runs: dict, sort: str | None = None) -> report.ComparisonTable:
    return report.comparison_table(report.load_results([runs["p2p"], runs["cg"]]), sort=sort)


def row(table: report.ComparisonTable, label: str) -> report.TableRow:
    return next(r for r in table.rows if r.label == label)


def load_rgb(path: Path) -> Image.Image:
    return Image.open(path).convert("RGB")


@dataclass(frozen=True)
class Kit:
    """The fixture numbers and builders, shared by the report test modules."""

    IDS: list[str]
    BASELINE: dict
    PIX2PIX: dict
    CYCLEGAN: dict
    HIGHER: dict
    metrics: Callable[..., dict]
    write_images: Callable[..., Path]
    evaluation: Callable[..., dict]
    baseline_json: Callable[..., dict]
    write_run: Callable[[Path, dict], Path]
    table_for: Callable[..., report.ComparisonTable]
    row: Callable[[report.ComparisonTable, str], report.TableRow]
    load_rgb: Callable[[Path], Image.Image]


@pytest.fixture(scope="session")
def kit() -> Kit:
    return Kit(IDS, BASELINE, PIX2PIX, CYCLEGAN, HIGHER, metrics, write_images, evaluation, baseline_json,
               write_run, table_for, row, load_rgb)


@pytest.fixture()
def runs(tmp_path: Path) -> dict:
    before = write_images(tmp_path / "data" / "before", 1)
    after = write_images(tmp_path / "data" / "after", 2)
    p2p_out = write_images(tmp_path / "out" / "p2p", 3)
    cg_out = write_images(tmp_path / "out" / "cg", 4, ext=".jpg")  # matched by id, whatever the extension
    base = baseline_json(before, after)
    p2p = write_run(tmp_path / "runs" / "p2p", evaluation("pix2pix", PIX2PIX, p2p_out, after, before, base))
    cg = write_run(tmp_path / "runs" / "cg", evaluation("cyclegan", CYCLEGAN, cg_out, after, before, base))
    return {"p2p": p2p, "cg": cg, "before": before, "after": after,
            "p2p_out": p2p_out, "cg_out": cg_out, "tmp": tmp_path}

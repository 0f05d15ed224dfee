"""`svai evaluate`: paired and set metrics of generated images against targets."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from svai.cli.app import app, console, err_console, fail, user_errors
from svai.metrics.options import EvaluateOptions
from svai.metrics.specs import get_spec, metric_label, metric_names

_LISTED = 10  # file names shown per list before "and N more"


def _format(metric: str, entry: dict[str, Any]) -> str:
    """The "mean ± std" cell at the metric's decimals (the JSON keeps full precision); "-" without a mean."""
    from svai.report.formats import summary_text

    if entry.get("mean") is None:
        return "-"
    return summary_text(entry["mean"], entry.get("std"), get_spec(metric).decimals).inline()


def _table(result: dict[str, Any]) -> Table:
    rows = [result] + ([result["baseline"]] if result.get("baseline") else [])
    table = Table(title=escape(f"{result['name']} vs {result['target']}"), title_justify="left")
    if len(rows) > 1:
        table.add_column("run")
    table.add_column("metric")
    table.add_column("", justify="center")
    table.add_column("mean ± std", justify="right")
    table.add_column("N", justify="right")
    metrics = list(result["metrics"]) + [m for row in rows[1:] for m in row["metrics"] if m not in result["metrics"]]
    for metric in metrics:
        for row in rows:
            entry = row["metrics"].get(metric)
            if entry is None:
                continue
            n = str(entry["n"])
            if entry.get("identical"):
                n += f" (+{entry['identical']} identical)"
            if "n_target" in entry:
                n += f" / {entry['n_target']}"
            cells = [metric_label(metric), "↑" if entry["higher_is_better"] else "↓", _format(metric, entry), n]
            if len(rows) > 1:
                cells.insert(0, escape(row["name"]) if row["role"] == "model" else "baseline (do nothing)")
            table.add_row(*cells)
    return table


def _listing(files: list[str]) -> str:
    shown = ", ".join(files[:_LISTED])
    return shown + (f" and {len(files) - _LISTED} more" if len(files) > _LISTED else "")


def _report(result: dict[str, Any]) -> None:
    """Everything besides the table, on stderr: warnings, unavailable metrics, unmatched, skipped."""
    for row in [result] + ([result["baseline"]] if result.get("baseline") else []):
        prefix = "" if row["role"] == "model" else "baseline: "
        for metric, entry in row["metrics"].items():
            if entry.get("warning"):
                err_console.print(f"[yellow]warning:[/] {prefix}{metric_label(metric)}: {escape(entry['warning'])}")
        by_reason: dict[str, list[str]] = {}
        for metric, reason in row["unavailable"].items():
            # The baseline shares the model's weights: say each missing file once.
            if row is not result and result["unavailable"].get(metric) == reason:
                continue
            by_reason.setdefault(reason, []).append(metric_label(metric))
        for reason, labels in by_reason.items():
            err_console.print(f"[yellow]unavailable:[/] {prefix}{', '.join(labels)}: {escape(reason)}")
        for side, root in (("pred_only", row["pred"]), ("target_only", row["target"])):
            files = row["unmatched"][side]
            if files:
                err_console.print(
                    f"[yellow]unmatched:[/] {prefix}{len(files)} file(s) only in {escape(root)}: {escape(_listing(files))}"
                )
        for item in row["skipped"]:
            err_console.print(f"[red]skipped:[/] {prefix}{escape(item['file'])}: {escape(item['reason'])}")


@app.command(
    epilog=(
        "Examples:\n\n"
        "  svai evaluate --pred out/p2p --target data/test/after --json runs/p2p/evaluation.json\n\n"
        "  svai evaluate --pred out/p2p --target data/test/after --baseline data/test/before\n\n"
        "  svai evaluate --pred out/p2p --target data/test/after --metrics ssim,psnr\n\n"
        "Conventions (SSIM window, PSNR on 8-bit data, regions, FID sample size): docs/metrics.md."
    ),
)
@user_errors
def evaluate(
    pred: Path = typer.Option(..., "--pred", help="Folder of generated images."),
    target: Path = typer.Option(..., "--target", help="Folder of ground-truth images (paired by relative path without extension)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the full results (per image, settings, versions) here."),
    metrics: Optional[list[str]] = typer.Option(
        None, "--metrics", help=f"Metrics to compute, comma-separated or repeated: {', '.join(metric_names())} (default: all)."
    ),
    masks: Optional[Path] = typer.Option(
        None, "--masks", help="Masks (255 = changed region) for region metrics; default TARGET/../masks when it exists."
    ),
    baseline: Optional[Path] = typer.Option(
        None, "--baseline", help="Do-nothing images (usually the before images), evaluated alike as a reference row."
    ),
    before: Optional[Path] = typer.Option(None, "--before", help="The input images, recorded for grids (default: --baseline)."),
    name: Optional[str] = typer.Option(None, "--name", help="Name of this evaluation (default: the --pred folder's name)."),
    lpips_net: str = typer.Option(EvaluateOptions.lpips_net, "--lpips-net", help="LPIPS backbone: alex, vgg or squeeze."),
    fid_dims: int = typer.Option(EvaluateOptions.fid_dims, "--fid-dims", help="Inception features for FID/KID: 64, 192, 768 or 2048."),
    weights_dir: Optional[Path] = typer.Option(None, "--weights-dir", help="Folder searched first for pretrained weights."),
    batch_size: int = typer.Option(EvaluateOptions.batch_size, "--batch-size", help="Images decoded and measured together."),
    device: str = typer.Option(EvaluateOptions.device, "--device", help="cpu or cuda."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Recompute the target features even when cached."),
) -> None:
    """Measure generated images against targets: SSIM, PSNR, LPIPS (also per region), FID, KID, IS."""
    from svai.io import check_output_file
    from svai.metrics.evaluate import evaluate_folders, write_json

    options = EvaluateOptions(
        metrics=metrics, masks=masks, baseline=baseline, before=before, name=name, lpips_net=lpips_net,
        fid_dims=fid_dims, weights_dir=weights_dir, batch_size=batch_size, device=device, use_cache=not no_cache,
    )
    if json_path is not None:
        # Before any work: the results may not replace a file this command reads.
        check_output_file({"--pred": pred, "--target": target, "--masks": masks or target.parent / "masks",
                           "--baseline": baseline, "--before": before}, json_path, "--json")
    with Progress(
        TextColumn("[bold]evaluate"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err_console, transient=True,
    ) as bar:
        task = bar.add_task("evaluate", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        result = evaluate_folders(pred, target, options, progress)
    if json_path is not None:
        write_json(result, json_path)
    console.print(_table(result))
    _report(result)
    if json_path is not None:
        err_console.print(f"wrote {escape(str(json_path))}")

    rows = [result] + ([result["baseline"]] if result.get("baseline") else [])
    missing = sorted({m for row in rows for m in options.metrics or () if m in row["unavailable"]})
    skipped = sum(len(row["skipped"]) for row in rows)
    if missing:
        raise fail(f"could not compute {', '.join(metric_label(m) for m in missing)} (reasons above); the other metrics are reported")
    if skipped:
        raise fail(f"{skipped} file(s) could not be used (listed above); the other images were evaluated")

"""`svai prepare`: write a prepared paired dataset from photos, a CSV, or synthetic faces."""

from __future__ import annotations

import contextlib
import shlex
from pathlib import Path
from typing import Callable, Iterator, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from svai.cli.app import app, console, err_console, user_errors
from svai.data.options import PrepareOptions, SyntheticOptions
from svai.errors import SvaiError


def _again(source: str, out: Path) -> str:
    return f"svai prepare {shlex.quote(source)} {shlex.quote(str(out))} with the same options"


@contextlib.contextmanager
def _progress_bar(label: str) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar driven by `update(done, total)`."""
    with Progress(
        TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, transient=True,
    ) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _stopped(command: str) -> typer.Exit:
    err_console.print(f"stopped; what is done is kept. Finish it by running the same command again: {command} "
                      "(or rebuild it with --force)")
    return typer.Exit(code=130)


def _prepare_synthetic(out: Path, options: SyntheticOptions) -> None:
    from svai.data.prepare import prepare_synthetic

    with _progress_bar("drawing pairs") as update:
        summary = prepare_synthetic(out, options, progress=lambda done: update(done, options.count))
    if summary is None:
        raise _stopped(_again("synthetic", out))
    console.print(
        f"wrote {summary['pairs']['train']} train and {summary['pairs']['test']} test pairs "
        f"({options.size}x{options.size}) to {out}"
    )
    _landmark_line(summary)


def _landmark_line(summary: dict) -> None:
    marks = summary.get("landmarks")
    if marks:
        pairs = marks["found"] + len(marks["missing"])
        missing = f"; no face in {', '.join(marks['missing'][:5])}{' ...' if len(marks['missing']) > 5 else ''}" \
            if marks["missing"] else ""
        console.print(f"landmarks: {marks['found']} of {pairs} pairs{missing}", highlight=False)


def _summary_table(report) -> Table:  # type: ignore[no-untyped-def]
    table = Table(title=f"svai prepare → {report.out}", show_header=True, header_style="bold")
    table.add_column("")
    table.add_column("count", justify="right")
    table.add_row("pairs written (new or changed)", str(report.written))
    table.add_row("pairs kept from the last run", str(report.kept))
    if report.removed:
        table.add_row("pairs removed (gone from the source)", str(report.removed))
    table.add_row("dataset: train / test pairs", f"{report.pairs['train']} / {report.pairs['test']}")
    for reason, number in report.skipped_by_reason().items():
        table.add_row(f"[yellow]skipped: {reason}", str(number))
    return table


@app.command(
    epilog=(
        "Examples:\n\n"
        "  svai prepare photos/ data/ --size 512\n\n"
        "  svai prepare pairs.csv data/ --crop face --align\n\n"
        "  svai prepare pix2pix_aligned/ data/ --pairing side-by-side --order after-before\n\n"
        "  svai prepare synthetic data/synth --count 300 --size 128 --seed 0\n\n"
        "SOURCE `synthetic` draws the built-in synthetic faces; write ./synthetic for a folder of that name. "
        "Running again on the same OUT processes only new or changed pairs. See docs/data.md."
    ),
)
@user_errors
def prepare(
    source: str = typer.Argument(..., help="Photo folder or CSV of pairs, or `synthetic` for the built-in dataset."),
    out: Path = typer.Argument(..., help="Output folder: empty, absent, or an earlier prepare of SOURCE."),
    size: Optional[int] = typer.Option(
        None, "--size", help=f"Output image size in pixels, square (default {PrepareOptions.size}; synthetic "
        f"{SyntheticOptions.size}).",
    ),
    seed: int = typer.Option(PrepareOptions.seed, "--seed", help="Random seed (synthetic drawing and the train/test split)."),
    test_fraction: float = typer.Option(PrepareOptions.test_fraction, "--test-fraction", help="Share of subjects put in the test split."),
    count: int = typer.Option(SyntheticOptions.count, "--count", help="Synthetic only: number of pairs."),
    pairing: str = typer.Option(
        PrepareOptions.pairing, "--pairing", help="How pairs are found: auto, dirs, names, side-by-side or csv."
    ),
    pairs: Optional[Path] = typer.Option(
        None, "--pairs", help="CSV with columns before,after[,subject,procedures,id]; paths relative to the CSV."
    ),
    order: str = typer.Option(
        PrepareOptions.order, "--order", help="Side-by-side composites: before-after (before on the left) or after-before."
    ),
    labels: Optional[Path] = typer.Option(
        None, "--labels", help="YAML mapping folder names to procedures (extends or overrides the built-in aliases)."
    ),
    crop: str = typer.Option(
        PrepareOptions.crop, "--crop", help="center (square from the middle), face (the face square from its landmarks; "
        "a photo without a face is skipped) or none (pad)."
    ),
    align: bool = typer.Option(False, "--align", help="Register each after photo onto its before photo (similarity)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Worker processes (default: the CPU count); results do not depend on it."),
    force: bool = typer.Option(False, "--force", help="Rebuild OUT from scratch (only an OUT made by svai prepare)."),
    regions: Optional[Path] = typer.Option(
        None, "--regions", help="Folder of procedure regions drawn on the before photos: <procedure>/<pair id>.png "
        "(white = region); copied into OUT/{split}/regions, cropped and resized like the photos."
    ),
    landmarks: Optional[bool] = typer.Option(
        None, "--landmarks/--no-landmarks", help="Store each pair's 478 face landmarks (OUT/{split}/landmarks.npz) and, "
        "for photos, draw the procedure regions from them where --regions gives none. Default: when the face "
        "layer (svai[face] and its weights) is here."
    ),
) -> None:
    """Pair, clean, resize and split photos into OUT/{train,test}/{before,after}/<id>.png."""
    from svai.data.prepare import SKIPPED_FILE, prepare_dataset

    sized = {} if size is None else {"size": size}  # else the default of photos or of synthetic data
    if source == "synthetic":
        if regions is not None:
            raise SvaiError("--regions is for photos: synthetic data draws its own procedure regions")
        _prepare_synthetic(out, SyntheticOptions(count=count, seed=seed, test_fraction=test_fraction, force=force,
                                                 landmarks=landmarks, **sized))
        return
    options = PrepareOptions(
        pairing=pairing, pairs_csv=pairs, order=order, labels=labels, crop=crop, align=align, workers=workers,
        seed=seed, test_fraction=test_fraction, force=force, regions=regions, landmarks=landmarks, **sized,
    )
    with _progress_bar("preparing pairs") as update:
        report = prepare_dataset(Path(source), out, options, progress=update)
    if report.interrupted:
        err_console.print(f"prepared {report.processed} of {report.to_process} pairs before the stop")
        raise _stopped(_again(source, out))
    console.print(_summary_table(report))
    _landmark_line(report.summary)
    if report.skipped:
        console.print(f"every skipped file and why: {out / SKIPPED_FILE}")
    if report.total == 0:
        raise SvaiError(
            f"no pair could be prepared from {source} ({len(report.skipped)} files skipped): see {out / SKIPPED_FILE}"
        )

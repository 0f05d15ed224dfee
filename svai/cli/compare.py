"""`svai compare`: the metric table across models, image grids and the HTML report."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Optional

import typer

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from svai.cli.app import app, console, err_console, user_errors
from svai.errors import SvaiError


@app.command(
    epilog=(
        "Examples:\n\n"
        "  svai compare runs/p2p runs/cyclegan --sort fid\n\n"
        "  svai compare runs/* --format markdown > results.md\n\n"
        "  svai compare runs/p2p runs/cyclegan --grid grid.png --rows 6 --report report.html\n\n"
        "Bold marks the best value of each column; † marks a model value worse than the baseline "
        "(the unedited before image scored as the prediction). Below the table: what differs between the "
        "runs' environment.json (versions, commit, device, precision, seed). The report also draws each "
        "run's loss curves from its log.jsonl and its sample grids over training."
    ),
)
@user_errors
def compare(
    results: list[Path] = typer.Argument(
        ..., help="Run folders holding evaluation.json, or evaluation JSON files.", show_default=False,
        metavar="RESULTS",
    ),
    fmt: str = typer.Option("table", "--format", "-f", help="table (terminal), markdown, csv or json, on stdout."),
    sort: Optional[str] = typer.Option(None, "--sort", help="Order rows by this metric, best first."),
    grid: Optional[Path] = typer.Option(None, "--grid", help="Write a PNG grid: before | each model | real after."),
    ids: Optional[str] = typer.Option(
        None, "--ids", help="Comma-separated image ids for the grid (relative path without extension)."
    ),
    rows: int = typer.Option(4, "--rows", help="Grid rows when --ids is not given, spread evenly over the test set."),
    before: Optional[Path] = typer.Option(None, "--before", help="Folder of before images, if the results name none."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write a self-contained HTML report."),
    cell: int = typer.Option(128, "--cell", help="Grid cell size in pixels."),
) -> None:
    """Compare evaluated models: one row per model plus the do-nothing baseline."""
    from svai import report as rp

    from svai.io import OPEN, Privacy, check_output_file

    _check_options(fmt, grid, report, rows, cell, before)
    loaded = rp.load_results(results)
    reads = rp.read_paths(loaded, before)
    for option, output in (("--grid", grid), ("--report", report)):
        if output is not None:
            check_output_file(reads, output, option)
    # Grids and the report show the photos: no more readable than the folders they come from.
    privacy = OPEN
    for path in reads.values():
        if path.is_dir():
            privacy &= Privacy.of(path)
    table = rp.comparison_table(loaded, sort=sort)
    if fmt == "table":
        _print_full_width(rp.rich_table(table))
        differences = rp.environment_differences(loaded)
        if differences:
            console.print("runs differ in:\n" + "\n".join(f"  {line}" for line in differences),
                          markup=False, highlight=False)
    else:
        typer.echo(rp.format_table(table, fmt), nl=False)
    warned: set[str] = set()
    for line in table.warnings:
        _warn(line, warned)
    for line in table.notes:
        err_console.print(f"[dim]note:[/] {escape(line)}", markup=True, highlight=False)

    # Grid columns follow the table's order, so a sorted table gives a sorted grid.
    by_label = {row["_label"]: row for row in loaded}
    ordered = [by_label[row.label] for row in table.rows]
    id_list = [part for part in ids.split(",") if part.strip()] if ids else None
    if grid is not None:
        plan = rp.plan_grid(ordered, ids=id_list, k=rows, before_dir=before)
        for line in plan.warnings:
            _warn(line, warned)
        rp.save_png(rp.render_grid(plan, cell), grid, privacy)
        _done(f"wrote {grid} ({len(plan.ids)} image(s): {', '.join(plan.ids)})")
    if report is not None:
        grids = _report_grids(ordered, id_list, rows, before, cell, warned)
        rp.html_report(loaded, table, grids, report, privacy, histories=rp.load_histories(ordered))
        _done(f"wrote {report}")


def _check_options(
    fmt: str, grid: Path | None, report: Path | None, rows: int, cell: int, before: Path | None
) -> None:
    from svai.report import FORMATS

    if fmt not in FORMATS:
        raise SvaiError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    if grid is not None and grid.suffix.lower() != ".png":
        raise SvaiError(f"--grid {grid}: the grid is written as PNG; give a file name ending in .png")
    if report is not None and report.suffix.lower() not in (".html", ".htm"):
        raise SvaiError(f"--report {report}: give a file name ending in .html")
    if not 1 <= rows <= 100:
        raise SvaiError(f"--rows {rows}: give 1 to 100")
    if not 16 <= cell <= 1024:
        raise SvaiError(f"--cell {cell}: give a size from 16 to 1024 pixels")
    if before is not None and not before.is_dir():
        raise SvaiError(f"--before {before}: not a folder; give the folder of before images")


def _report_grids(
    rows: list[dict], ids: list[str] | None, k: int, before: Path | None, cell: int, warned: set[str]
) -> dict:
    """One grid per target folder (models scored on different test sets share no images).

    A grid that cannot be drawn (folders moved since evaluation) leaves the report without it.
    """
    from svai import report as rp

    groups: dict[str | None, list[dict]] = defaultdict(list)
    for row in rows:
        if row["role"] != "baseline":
            groups[row.get("target")].append(row)
    grids = {}
    for target, group in groups.items():
        try:
            plan = rp.plan_grid(group, ids=ids, k=k, before_dir=before)
            image = rp.render_grid(plan, cell)
        except SvaiError as error:
            _warn(f"report without an image grid for {target}: {error}", warned)
            continue
        for line in plan.warnings:
            _warn(line, warned)
        where = f"{target} — " if len(groups) > 1 else ""
        grids[f"{where}test images: {', '.join(plan.ids)}"] = image
    return grids


def _print_full_width(table: Table) -> None:
    """Print a wide table whole: rich would truncate numbers to fit a narrow terminal."""
    full = console.measure(table, options=console.options.update_width(10_000)).maximum
    if full <= console.width:
        console.print(table)
        return
    wide = Console(
        file=console.file, width=full, color_system=console.color_system,
        force_terminal=console.is_terminal, highlight=False,
    )
    wide.print(table)


def _warn(line: str, warned: set[str]) -> None:
    """Print a warning on stderr once, however many outputs run into it."""
    if line not in warned:
        warned.add(line)
        err_console.print(f"[yellow]warning:[/] {escape(line)}", markup=True, highlight=False)


def _done(line: str) -> None:
    err_console.print(line, markup=False, highlight=False)

"""`svai prepare`: write a prepared paired dataset."""

from __future__ import annotations

from pathlib import Path

import typer

from svai.cli.app import app, console, user_errors
from svai.errors import SvaiError


@app.command(
    epilog=(
        "Examples:\n\n"
        "  svai prepare synthetic data/synth --count 300 --size 128 --seed 0\n\n"
        "SOURCE `synthetic` draws the built-in synthetic faces; write ./synthetic for a folder of that name."
    ),
)
@user_errors
def prepare(
    source: str = typer.Argument(..., help="Photo folder or CSV, or `synthetic` for the built-in dataset."),
    out: Path = typer.Argument(..., help="Output folder (empty or absent)."),
    count: int = typer.Option(300, "--count", help="Synthetic only: number of pairs."),
    size: int = typer.Option(128, "--size", help="Output image size in pixels (square)."),
    seed: int = typer.Option(0, "--seed", help="Random seed (drawing and train/test split)."),
    test_fraction: float = typer.Option(0.1, "--test-fraction", help="Share of subjects put in the test split."),
) -> None:
    """Pair, clean, resize and split photos into OUT/{train,test}/{before,after}/<id>.png."""
    if source != "synthetic":
        raise SvaiError("preparing real photo folders is not available yet: use `svai prepare synthetic OUT`")
    from svai.data.synthetic import write_synthetic_dataset

    if out.exists() and any(out.iterdir()):
        raise SvaiError(f"{out} is not empty: choose a new output folder")
    summary = write_synthetic_dataset(out, count=count, size=size, seed=seed, test_fraction=test_fraction)
    console.print(
        f"wrote {summary['pairs']['train']} train and {summary['pairs']['test']} test pairs "
        f"({size}x{size}) to {out}"
    )

"""`svai generate`: run a trained model over a folder of photos."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from svai.cli.app import app, console, err_console, fail, user_errors
from svai.errors import SvaiError


@app.command(
    epilog=(
        "Examples:\n\n"
        "  svai generate --run runs/p2p --input data/synth/test/before --output out/p2p\n\n"
        "  svai generate --run runs/p2p --input photos/ --output out/ --checkpoint 1000 --batch-size 16\n\n"
        "Every image under --input (png, jpg, jpeg, webp, bmp, tif; any letter case; recursively) becomes a PNG "
        "with the same relative path under --output, at the input's size."
    ),
)
@user_errors
def generate(
    run: Path = typer.Option(..., "--run", help="Run folder made by `svai train`."),
    input: Path = typer.Option(..., "--input", help="Folder of 'before' photos (searched recursively)."),
    output: Path = typer.Option(..., "--output", help="Folder for the predicted 'after' PNGs."),
    checkpoint: str = typer.Option("latest", "--checkpoint", help="latest, or a step number."),
    batch_size: int = typer.Option(8, "--batch-size", help="Images per forward pass."),
    procedures: Optional[str] = typer.Option(None, "--procedures", help="For procedure-conditioned models: e.g. eyes+nose."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)."),
) -> None:
    """Predict the 'after' photo for every image in a folder with a trained model."""
    from svai.data.images import list_images
    from svai.generate import check_output_folder, generate_folder, load_model, parse_procedures

    files = list_images(input)
    total = len(files)
    check_output_folder(input, output)
    condition = parse_procedures(procedures)
    if batch_size < 1:
        raise SvaiError(f"--batch-size must be at least 1; got {batch_size}")
    model = load_model(run, checkpoint, device)
    if condition is not None and model.family.condition != "procedures":
        raise SvaiError(f"--procedures: {model.config.name} is not conditioned on procedures; leave the option out")
    with Progress(TextColumn("generating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err_console) as progress:
        task = progress.add_task("generate", total=total)
        report = generate_folder(model, input, output, batch_size, condition,
                                 progress=lambda n: progress.advance(task, n), files=files)
    for file, reason in report.skipped:
        err_console.print(f"skipped {file}: {reason}")
    console.print(f"wrote {len(report.written)} images to {output} ({model.config.name}, step {model.step})")
    if report.skipped:
        raise fail(f"{len(report.skipped)} of {total} inputs were skipped (listed above); fix or remove them")

"""`svai generate`: run a trained model over a folder of photos."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from svai.cli.app import app, console, err_console, fail, user_errors
from svai.errors import SvaiError


def _references(reference: Path) -> list[Path]:
    """The photos `--reference` names: one photo, or every photo of a folder."""
    from svai.data.images import list_images

    try:
        return [reference] if reference.is_file() else list_images(reference)
    except SvaiError as error:
        raise SvaiError(f"--reference: {error}; give a photo or a folder of photos") from None


@app.command(
    epilog=(
        "Examples:\n\n"
        "  svai generate --run runs/p2p --input data/synth/test/before --output out/p2p\n\n"
        "  svai generate --run runs/p2p --input photos/ --output out/ --checkpoint 1000 --batch-size 16\n\n"
        "  svai generate --run runs/stargan --input photos/ --output out/ --procedures nose+jaw --intensity 0.5\n\n"
        "  svai generate --run runs/sg2 --input photos/ --output out/ --reference refs/   (or --seed 7)\n\n"
        "  svai generate --run runs/sd --input photos/ --output out/ --strength 0.6 --steps 30 --seed 0\n\n"
        "Every image under --input (png, jpg, jpeg, webp, bmp, tif; any letter case; recursively) becomes a PNG "
        "with the same relative path under --output, at the input's size. When --input is a split of a "
        "prepared dataset (DATA/test/before), procedure-conditioned models take each image's labels from "
        "the dataset's manifest unless --procedures is given. `svai models` lists the controls each model takes.\n\n"
        "--composite blends each output into its input inside the feathered region of the chosen procedures "
        "(--procedures, else the manifest's labels): pixels outside it stay the input's, byte for byte. The "
        "region comes from DATA/{split}/regions for a dataset split, else from --regions DIR "
        "(<procedure>/<relative path>.png, white = region), else from where the model changed the photo."
    ),
)
@user_errors
def generate(
    run: Path = typer.Option(..., "--run", help="Run folder made by `svai train`."),
    input: Path = typer.Option(..., "--input", help="Folder of 'before' photos (searched recursively)."),
    output: Path = typer.Option(..., "--output", help="Folder for the predicted 'after' PNGs."),
    checkpoint: str = typer.Option("latest", "--checkpoint", help="latest, or a step number."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per forward pass, 1 to 4096 (default 8)."),
    procedures: Optional[str] = typer.Option(
        None, "--procedures", help="Procedures to simulate on every image, e.g. nose+jaw (or nose,jaw; nose:0.5 for half strength)."),
    intensity: Optional[float] = typer.Option(
        None, "--intensity", help="0..1: how strong the change is (1 = as trained)."),
    reference: Optional[Path] = typer.Option(
        None, "--reference", help="Reference 'after' photo, or a folder of them (same name first, else in turn)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the random style draws: repeatable output."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Diffusion models: sampler steps over the whole schedule."),
    guidance: Optional[float] = typer.Option(
        None, "--guidance", help="Diffusion models: classifier-free guidance scale on the text (1 = off)."),
    strength: Optional[float] = typer.Option(
        None, "--strength", help="Diffusion models: 0..1, how far the before photo is noised before denoising (1 = from pure noise)."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="Diffusion models: the text, instead of the run's model.prompt."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)."),
    composite: Optional[bool] = typer.Option(
        None, "--composite/--no-composite",
        help="Keep every pixel outside the procedures' region identical to the input "
             "(default: the run's generate.composite, on for the recommended model)."),
    regions: Optional[Path] = typer.Option(
        None, "--regions", help="With --composite: folder of regions drawn on the inputs, <procedure>/<relative path>.png."),
    face_crop: Optional[bool] = typer.Option(
        None, "--face-crop/--no-face-crop",
        help="Photos over twice the model's size: simulate the largest face's square (found by the face layer) and "
             "keep the rest of the photo as it is; a photo without a face is skipped. Default: when svai[face] is here."),
) -> None:
    """Predict the 'after' photo for every image in a folder with a trained model."""
    from dataclasses import replace

    import torch

    from svai.composite import CompositeOptions
    from svai.config import MAX_INT
    from svai.generate import Generation, InputFolder, generate_folder, generation_reads, load_model, parse_procedures
    from svai.models.base import Request

    if seed is not None and not 0 <= seed <= MAX_INT:
        raise SvaiError(f"--seed must be between 0 and {MAX_INT}; got {seed}")
    references = _references(reference) if reference is not None else None
    request = Request(intensity=intensity, generator=torch.Generator().manual_seed(seed) if seed is not None else None,
                      steps=steps, guidance=guidance, strength=strength, prompt=prompt)
    # The settings are checked before anything loads (a composite assumed unless refused);
    # the model's procedure names and its composite default fill them in once it has loaded.
    settings = Generation(request=request, references=references,
                          composite=None if composite is False else CompositeOptions(), regions=regions,
                          face_crop=face_crop, **({} if batch_size is None else {"batch_size": batch_size}))
    # Every path generation reads is known now: no output may land in one.
    folder = InputFolder.open(input)
    folder.check_output(output, generation_reads(references, regions))
    model = load_model(run, checkpoint, device)
    request = replace(request, procedures=parse_procedures(procedures, model.family.procedures))
    model.family.check_request([*request.given(), *(["reference"] if references else [])])
    use_composite = model.composite_default if composite is None else composite
    settings = replace(settings, request=request, composite=CompositeOptions() if use_composite else None)
    listing = folder.listing
    with Progress(TextColumn("generating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err_console, transient=True) as progress:
        task = progress.add_task("generate", total=len(listing.images))
        report = generate_folder(model, input, output, settings,
                                 progress=lambda n: progress.advance(task, n), folder=folder)
    for file, note in report.notes:
        console.print(f"note: {file}: {note}", highlight=False, markup=False)
    for file, reason in report.skipped:
        err_console.print(f"skipped {file}: {reason}")
    console.print(f"wrote {len(report.written)} images to {output} ({model.config.name}, step {model.step})")
    if report.composited:
        console.print("composited inside " + ", ".join(
            f"{where} ({count})" for where, count in sorted(report.composited.items())))
    if report.skipped:
        total = len(listing.images) + len(listing.passed_over)
        raise fail(f"{len(report.skipped)} of {total} inputs were skipped (listed above); fix or remove them")

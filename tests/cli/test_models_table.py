"""`svai models` in an 80-column terminal: whole names, numbers and options; --json unchanged."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console
from typer.testing import CliRunner

from svai.cli import app


@pytest.fixture(scope="module")
def listing() -> tuple[list[dict], str]:
    import svai.cli.models as command

    rows = json.loads(CliRunner().invoke(app, ["models", "--json"]).stdout)
    screen = io.StringIO()
    narrow = Console(file=screen, width=80, color_system=None, force_terminal=False)
    original = command.console
    command.console = narrow
    try:
        result = CliRunner().invoke(app, ["models"])
    finally:
        command.console = original
    assert result.exit_code == 0, result.output
    return rows, screen.getvalue()


def cells(text: str, column: int) -> list[str]:
    """The stripped text of one table column, line by line (rows of the body only)."""
    out = []
    for line in text.splitlines():
        if line.startswith("│"):
            parts = line.split("│")
            out.append(parts[column + 1].strip())
    return out


def test_the_table_fits_80_columns_without_breaking_names_numbers_or_options(listing) -> None:
    rows, text = listing
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" not in text  # nothing cut short
    names = [cell for cell in cells(text, 0) if cell]
    for row in rows:
        assert row["name"] in names  # a whole name on one line
    totals = [cell for cell in cells(text, 2) if cell.endswith(("M", "B"))]
    assert len(totals) == len(rows)
    descriptions = " ".join(cells(text, 3)).split()
    for row in rows:
        for option in row["controls"]:
            assert option in descriptions, (row["name"], option)
    # The description wraps at spaces into lines of several words, not one word a line.
    body = [cell for cell in cells(text, 3) if cell]
    assert sum(len(cell.split()) for cell in body) / len(body) >= 3
    recommended = [row["name"] for row in rows if row["recommended"]]
    assert recommended and "recommended" in names


def test_the_table_shows_each_models_total_parameters(listing) -> None:
    rows, text = listing
    pix2pix = next(row for row in rows if row["name"] == "pix2pix")
    assert sum(pix2pix["parameters"].values()) == 54_413_955 + 2_768_705
    assert "57.2M" in cells(text, 2) and "at 256 px" in cells(text, 2)


def test_json_keeps_every_network_for_machines(listing) -> None:
    rows, _ = listing
    assert all(isinstance(row["parameters"], dict) for row in rows)
    # Every model has trained networks but the closed-form landmark fit, which has none.
    assert [row["name"] for row in rows if not row["parameters"]] == ["landmark-warp"]
    assert {"name", "family", "paired", "controls", "image_size", "parameters", "description",
            "recommended"} <= set(rows[0])

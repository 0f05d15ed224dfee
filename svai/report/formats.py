"""The comparison table as text: markdown, CSV, JSON, and a rich table for the terminal.

Every "mean ± std (n)" shown anywhere (these formats, the HTML report, `svai evaluate`) is
laid out from one `SummaryText`, so rounding, infinities and missing values read alike.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.table import Table
from rich.text import Text

from svai import __version__
from svai.errors import SvaiError
from svai.report.table import MISSING, WORSE_MARK, Cell, Column, ComparisonTable, TableRow

FORMATS: tuple[str, ...] = ("table", "markdown", "csv", "json")


def format_number(value: float | None, decimals: int) -> str:
    """`value` with `decimals` digits after the point; "inf"/"-inf" for infinities, — for None."""
    if value is None:
        return MISSING
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{decimals}f}"


@dataclass(frozen=True)
class SummaryText:
    """A summary's numbers as text, ready to lay out: `std` and `n` None when not shown."""

    mean: str
    std: str | None = None
    n: int | None = None

    def inline(self) -> str:
        """One line: "mean ± std (n=N)", with only the parts there are."""
        text = self.mean
        if self.std is not None:
            text += f" ± {self.std}"
        if self.n is not None:
            text += f" (n={self.n})"
        return text

    def detail(self, plus_minus: str = "±") -> str:
        """The second line of a two-line cell: "±std n=N", "" when there is neither."""
        parts = []
        if self.std is not None:
            parts.append(f"{plus_minus}{self.std}")
        if self.n is not None:
            parts.append(f"n={self.n}")
        return " ".join(parts)


def summary_text(mean: float | None, std: float | None, decimals: int, n: int | None = None) -> SummaryText:
    """Format a mean, its std and its count alike everywhere; a missing mean shows alone as —."""
    if mean is None:
        return SummaryText(MISSING)
    return SummaryText(format_number(mean, decimals), None if std is None else format_number(std, decimals), n)


def cell_summary(cell: Cell, column: Column) -> SummaryText:
    """A table cell's text parts; N only in columns where it differs between rows."""
    return summary_text(cell.mean, cell.std, column.decimals, cell.n if column.show_n else None)


def cell_text(cell: Cell, column: Column) -> str:
    """The plain text of a cell: "mean", "mean ± std", with " (n=N)" when N differs by row."""
    return cell_summary(cell, column).inline()


def legend(table: ComparisonTable) -> str:
    """One sentence per mark used in the table."""
    parts = ["↑/↓: higher/lower is better.", "Bold: best in the column."]
    if table.has_baseline:
        parts.append(
            f"{WORSE_MARK}: worse than the baseline (the unedited before image scored as the prediction). "
            "beats baseline k/m: better than the baseline on k of the m metrics both have."
        )
    return " ".join(parts)


def format_table(table: ComparisonTable, fmt: str) -> str:
    """The table as "markdown", "csv" or "json" text (for the terminal use `rich_table`)."""
    formatters = {"markdown": _markdown, "csv": _csv, "json": _json}
    if fmt not in formatters:
        raise SvaiError(f"unknown table format {fmt!r}: use one of {', '.join(formatters)}")
    return formatters[fmt](table)


def _markdown_escape(text: str) -> str:
    for char in "\\`*_|<[":
        text = text.replace(char, "\\" + char)
    return " ".join(text.split())


def _markdown(table: ComparisonTable) -> str:
    header = ["model"] + [column.title for column in table.columns]
    align = [":---"] + ["---:"] * len(table.columns)
    if table.has_baseline:
        header.append("beats baseline")
        align.append(":---:")
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    for row in table.rows:
        cells = [_markdown_escape(row.label)]
        for column in table.columns:
            cell = row.cells[column.metric]
            text = cell_text(cell, column)
            text = f"**{text}**" if cell.best else text
            cells.append(text + (f" {WORSE_MARK}" if cell.vs_baseline == "worse" else ""))
        if table.has_baseline:
            cells.append(row.beats_baseline or MISSING)
        lines.append("| " + " | ".join(cells) + " |")
    footer = [legend(table)] + [f"Warning: {_markdown_escape(w)}" for w in table.warnings]
    return "\n".join(lines) + "\n\n" + "\n\n".join(footer) + "\n"


def csv_fields(table: ComparisonTable) -> list[str]:
    """CSV header: one row per model; per metric its mean, std, n, best flag and baseline verdict."""
    fields = ["name", "role", "baseline", "baseline_wins", "baseline_compared"]
    for column in table.columns:
        m = column.metric
        fields += [m, f"{m}_std", f"{m}_n", f"{m}_best", f"{m}_vs_baseline"]
    return fields + ["target", "source"]


def _csv(table: ComparisonTable) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=csv_fields(table), lineterminator="\n")
    writer.writeheader()

    def plain(value: Any) -> str:
        # repr keeps every digit, so reading the CSV back gives the same floats.
        return "" if value is None else repr(value) if isinstance(value, float) else str(value)

    for row in table.rows:
        record = {
            "name": row.label, "role": row.role, "baseline": row.baseline or "",
            "baseline_wins": plain(row.wins), "baseline_compared": plain(row.compared),
            "target": row.target or "", "source": row.source,
        }
        for column in table.columns:
            cell, m = row.cells[column.metric], column.metric
            record.update({
                m: plain(cell.mean), f"{m}_std": plain(cell.std), f"{m}_n": plain(cell.n),
                f"{m}_best": "true" if cell.best else "false", f"{m}_vs_baseline": cell.vs_baseline or "",
            })
        writer.writerow(record)
    return buffer.getvalue()


def table_dict(table: ComparisonTable) -> dict:
    """The table as plain JSON-ready data (the `--format json` document)."""
    return {
        "svai_version": __version__,
        "sort": table.sort,
        "columns": [{"metric": c.metric, "higher_is_better": c.higher_is_better} for c in table.columns],
        "rows": [
            {
                "name": row.label,
                "role": row.role,
                "baseline": row.baseline,
                "beats_baseline": None if row.compared is None else {"wins": row.wins, "compared": row.compared},
                "metrics": {
                    metric: {"mean": c.mean, "std": c.std, "n": c.n, "best": c.best, "vs_baseline": c.vs_baseline}
                    for metric, c in row.cells.items() if c.mean is not None
                },
                "target": row.target,
                "source": row.source,
            }
            for row in table.rows
        ],
        "warnings": table.warnings,
        "notes": table.notes,
    }


def _json(table: ComparisonTable) -> str:
    return json.dumps(table_dict(table), indent=2, ensure_ascii=False) + "\n"


def rich_table(table: ComparisonTable) -> Table:
    """A rich Table: best values bold green, cells worse than the baseline red with †.

    The std goes on a second, dim line so that columns stay narrow. Columns never wrap or
    truncate a number: print it at its full measured width when the terminal is narrower.
    """
    out = Table(box=box.SIMPLE_HEAD, caption=legend(table), caption_justify="left", header_style="bold")
    out.add_column("model", no_wrap=True)
    for column in table.columns:
        out.add_column(column.title, justify="right", no_wrap=True)
    if table.has_baseline:
        out.add_column("beats baseline", justify="center", no_wrap=True)
    for row in table.rows:
        cells: list[Text] = [Text(row.label, style="italic" if row.role == "baseline" else "")]
        cells += [_rich_cell(row.cells[column.metric], column) for column in table.columns]
        if table.has_baseline:
            cells.append(_rich_beats(row))
        out.add_row(*cells)
    return out


def _rich_cell(cell: Cell, column: Column) -> Text:
    if cell.mean is None:
        return Text(MISSING, style="dim")
    parts = cell_summary(cell, column)
    style = "bold green" if cell.best else "red" if cell.vs_baseline == "worse" else ""
    text = Text()
    text.append(parts.mean, style=style)
    if cell.vs_baseline == "worse":
        text.append(f" {WORSE_MARK}", style="red")
    detail = parts.detail("±")
    if detail:
        text.append("\n" + detail, style="dim")
    return text


def _rich_beats(row: TableRow) -> Text:
    if row.compared is None:
        return Text(MISSING, style="dim")
    style = "green" if row.wins == row.compared else "red" if row.wins == 0 else "yellow"
    return Text(row.beats_baseline, style=style)

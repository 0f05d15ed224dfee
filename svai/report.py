"""Compare evaluated models: the metric table, image grids and a self-contained HTML report.

The input is the evaluation JSON that `svai evaluate` writes, one per run. Every run may embed
a *baseline*: the same metrics computed with the unedited before image as the prediction, the
"do nothing" answer a model has to beat. A table row is one model or one baseline.

Rows are the JSON objects themselves (shallow copies, inputs never modified) with a few keys
added, all starting with an underscore:

- ``_source``: the JSON file the row came from;
- ``_label``: the unique name shown in tables and grids (``name``, plus a hint when two runs
  share a name);
- ``_baseline``: for a model, the ``_label`` of the baseline it is compared with, else None;
- ``_notes``: extra remarks found while loading (for example two baselines that disagree).
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import html
import io
import json
import logging
import math
import os
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from PIL import Image, ImageDraw, ImageFont
from rich import box
from rich.table import Table
from rich.text import Text

from svai import __version__
from svai.data.images import IMAGE_EXTENSIONS, list_images, read_rgb
from svai.data.layout import write_atomic
from svai.errors import SvaiError

logger = logging.getLogger(__name__)

RESULT_FILE = "evaluation.json"
FORMATS: tuple[str, ...] = ("table", "markdown", "csv", "json")
# Distribution metrics first (they judge realism), then paired ones, then the rest.
PREFERRED_ORDER: tuple[str, ...] = ("fid", "kid", "is", "lpips", "ssim", "psnr")
REGION_SUFFIXES: tuple[str, ...] = ("_changed", "_kept")
# Used only when a JSON leaves out `higher_is_better`.
DEFAULT_DIRECTIONS: dict[str, bool] = {
    "fid": False, "kid": False, "is": True, "lpips": False, "ssim": True, "psnr": True,
}
WORSE_MARK = "†"
MISSING = "—"
VS_BASELINE = ("better", "worse", "equal")
_DIRS = ("pred", "target", "masks", "before")


# --------------------------------------------------------------------------------------------
# Loading


def load_results(paths: Sequence[Path]) -> list[dict]:
    """Read run folders or evaluation JSON files into table rows, baselines included.

    A path is a run folder holding ``evaluation.json`` or a JSON file. A baseline embedded in
    several files with the same pred and target folders becomes one row, and so does a file
    whose ``role`` is ``"baseline"`` for those folders. The same file given twice is read once.
    Relative folder paths inside a JSON are taken relative to that JSON's folder.
    """
    if not paths:
        raise SvaiError("nothing to compare: give one or more run folders or evaluation JSON files")
    rows: list[dict] = []
    seen: set[Path] = set()
    for path in paths:
        file = _result_file(Path(path))
        if file.resolve() in seen:
            continue
        seen.add(file.resolve())
        rows.extend(_rows_from_result(_read_result(file), file))
    rows = _dedupe_baselines(rows)
    _label_rows(rows)
    _link_baselines(rows)
    return rows


def _result_file(path: Path) -> Path:
    if not path.exists():
        raise SvaiError(f"{path} does not exist: give a run folder holding {RESULT_FILE} or an evaluation JSON file")
    if path.is_dir():
        file = path / RESULT_FILE
        if not file.is_file():
            raise SvaiError(
                f"{path} is a folder without {RESULT_FILE}: run `svai evaluate ... --json {file}` first, "
                "or give the evaluation JSON file itself"
            )
        return file
    return path


def _read_result(file: Path) -> dict:
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise SvaiError(f"{file}: cannot read it ({error}); give an evaluation JSON from `svai evaluate`") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise SvaiError(
            f"{file}: not valid JSON (line {error.lineno}: {error.msg}); give an evaluation JSON from `svai evaluate`"
        ) from None
    _check_result(data, file, "")
    if data.get("baseline") is not None:
        _check_result(data["baseline"], file, "baseline ")
    return data


def _check_result(data: Any, file: Path, what: str) -> None:
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
        raise SvaiError(
            f'{file}: not an svai evaluation JSON (its {what}object has no "metrics"); '
            "give the file `svai evaluate --json` wrote"
        )
    for name, entry in data["metrics"].items():
        if not isinstance(entry, dict):
            raise SvaiError(f'{file}: {what}metric "{name}" is not an object with "mean"; re-run `svai evaluate`')
    role = data.get("role", "model")
    if role not in ("model", "baseline"):
        raise SvaiError(f'{file}: unknown role {role!r}: expected "model" or "baseline"')


def _rows_from_result(data: dict, file: Path) -> list[dict]:
    row = {key: value for key, value in data.items() if key != "baseline"}
    row["role"] = data.get("role") or "model"
    row["name"] = str(data.get("name") or _default_name(file, row["role"]))
    row["_source"] = str(file)
    _resolve_dirs(row, file.parent)
    embedded = data.get("baseline")
    if embedded is None:
        return [row]
    baseline = dict(embedded)
    baseline["role"] = "baseline"
    baseline["name"] = str(embedded.get("name") or "baseline")
    # An embedded baseline was scored by the same run, so it shares that run's settings.
    for key in ("svai_version", "settings", "weights", "versions"):
        if baseline.get(key) is None and data.get(key) is not None:
            baseline[key] = data[key]
    baseline["_source"] = str(file)
    _resolve_dirs(baseline, file.parent)
    row["_baseline_key"] = _dir_key(baseline)
    return [row, baseline]


def _default_name(file: Path, role: str) -> str:
    if role == "baseline":
        return "baseline"
    return file.parent.name if file.name == RESULT_FILE else file.stem


def _resolve_dirs(row: dict, base: Path) -> None:
    for key in _DIRS:
        value = row.get(key)
        if isinstance(value, str) and value:
            path = Path(value)
            row[key] = os.path.normpath(path if path.is_absolute() else base / path)
        else:
            row[key] = None


def _dir_key(row: dict) -> tuple[str | None, str | None]:
    return row.get("pred"), row.get("target")


def _dedupe_baselines(rows: list[dict]) -> list[dict]:
    kept: list[dict] = []
    first_for: dict[tuple, dict] = {}
    for row in rows:
        if row["role"] != "baseline":
            kept.append(row)
            continue
        first = first_for.get(_dir_key(row))
        if first is None:
            first_for[_dir_key(row)] = row
            kept.append(row)
        elif _means(first) != _means(row):
            first.setdefault("_notes", []).append(
                f"another baseline for the same folders ({row['_source']}) has different numbers "
                f"(other settings?); this row shows the one from {first['_source']}"
            )
    return kept


def _means(row: dict) -> dict[str, float | None]:
    return {name: _number(entry.get("mean")) for name, entry in row["metrics"].items()}


def _label_rows(rows: list[dict]) -> None:
    by_name: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        row["_label"] = row["name"]
        by_name[row["name"]].append(row)
    for name, group in by_name.items():
        if len(group) > 1:
            for row, label in zip(group, _distinct_labels(name, group)):
                row["_label"] = label
    # A hint could still collide with another run's literal name; numbering settles it.
    counts: dict[str, int] = defaultdict(int)
    for row in rows:
        counts[row["_label"]] += 1
        if counts[row["_label"]] > 1:
            row["_label"] = f"{row['_label']} #{counts[row['_label']]}"


def _distinct_labels(name: str, group: list[dict]) -> list[str]:
    """Add the shortest trailing part of a path that tells same-named rows apart."""
    hints = [_hint_path(row, group) for row in group]
    for depth in range(1, max(len(hint.parts) for hint in hints) + 1):
        labels = [f"{name} ({'/'.join(hint.parts[-depth:])})" for hint in hints]
        if len(set(labels)) == len(labels):
            return labels
    return [f"{name} #{index}" for index in range(1, len(group) + 1)]


def _hint_path(row: dict, group: list[dict]) -> Path:
    if row["role"] == "baseline":
        targets = {other.get("target") for other in group}
        return Path((row.get("target") if len(targets) == len(group) else row.get("pred")) or "?")
    source = Path(row["_source"])
    return source.parent if source.name == RESULT_FILE else source.with_suffix("")


def _link_baselines(rows: list[dict]) -> None:
    baselines = [row for row in rows if row["role"] == "baseline"]
    by_dirs = {_dir_key(row): row for row in baselines}
    for row in rows:
        key = row.pop("_baseline_key", None)
        if row["role"] == "baseline":
            row["_baseline"] = None
            continue
        match = by_dirs.get(key) or next((b for b in baselines if b.get("target") == row.get("target")), None)
        row["_baseline"] = match["_label"] if match else None


# --------------------------------------------------------------------------------------------
# The table


@dataclass(frozen=True)
class Column:
    """One metric column. `higher_is_better` None means the direction is unknown: no marks."""

    metric: str
    higher_is_better: bool | None
    decimals: int
    show_n: bool

    @property
    def arrow(self) -> str:
        return {True: "↑", False: "↓", None: ""}[self.higher_is_better]

    @property
    def title(self) -> str:
        return f"{self.metric} {self.arrow}".strip()


@dataclass(frozen=True)
class Cell:
    """One metric of one row; `mean` None when the row lacks the metric."""

    mean: float | None = None
    std: float | None = None
    n: int | None = None
    best: bool = False
    vs_baseline: str | None = None  # "better", "worse", "equal", or None (no baseline to compare)


@dataclass(frozen=True)
class TableRow:
    label: str
    role: str
    baseline: str | None
    source: str
    target: str | None
    cells: dict[str, Cell]
    wins: int | None
    compared: int | None

    @property
    def beats_baseline(self) -> str:
        """ "k/m": better than the baseline on k of the m metrics both have; "" without one."""
        return f"{self.wins}/{self.compared}" if self.compared is not None else ""


@dataclass(frozen=True)
class ComparisonTable:
    """Everything a table, CSV, JSON or HTML report shows; rows already in display order."""

    columns: list[Column]
    rows: list[TableRow]
    sort: str | None
    warnings: list[str]
    notes: list[str]

    @property
    def has_baseline(self) -> bool:
        return any(row.role == "baseline" for row in self.rows)


def comparison_table(rows: list[dict], sort: str | None = None) -> ComparisonTable:
    """Build the table from `load_results` rows.

    Default order: baselines first, then models as given. `sort` orders every row by that metric,
    best first; rows without it go last. The best value of a column is marked when at least two
    rows have it (ties all marked); a model cell is compared with its baseline's mean.
    """
    if not rows:
        raise SvaiError("nothing to compare: no rows were loaded")
    warnings: list[str] = []
    metrics = ordered_metrics(rows)
    columns = [_column(metric, rows, warnings) for metric in metrics]
    by_label = {row["_label"]: row for row in rows}
    table_rows = [_table_row(row, columns, by_label.get(row.get("_baseline") or "")) for row in rows]
    table_rows = _mark_best(table_rows, columns)
    table_rows = _order_rows(table_rows, columns, sort)
    warnings.extend(_target_warnings(rows))
    differing = differing_settings(rows)
    if differing:
        warnings.append(
            f"evaluation settings differ between rows ({', '.join(differing)}): their numbers may not be comparable"
        )
    return ComparisonTable(
        columns=columns,
        rows=table_rows,
        sort=sort.strip().lower() if sort else None,
        warnings=warnings,
        notes=_notes(rows),
    )


def ordered_metrics(rows: Iterable[dict]) -> list[str]:
    """fid, kid, is, lpips, ssim, psnr; then region metrics (`*_changed`, `*_kept`); then A–Z."""
    names = {name for row in rows for name in row["metrics"]}

    def key(name: str) -> tuple:
        if name in PREFERRED_ORDER:
            return (0, PREFERRED_ORDER.index(name), 0, name)
        for index, suffix in enumerate(REGION_SUFFIXES):
            base = name[: -len(suffix)]
            if name.endswith(suffix) and base:
                rank = PREFERRED_ORDER.index(base) if base in PREFERRED_ORDER else len(PREFERRED_ORDER)
                return (1, rank, index, name)
        return (2, 0, 0, name)

    return sorted(names, key=key)


def _column(metric: str, rows: list[dict], warnings: list[str]) -> Column:
    entries = [row["metrics"][metric] for row in rows if metric in row["metrics"]]
    stated = {entry["higher_is_better"] for entry in entries if isinstance(entry.get("higher_is_better"), bool)}
    if len(stated) > 1:
        warnings.append(
            f"{metric}: the results disagree on whether higher is better; its best and baseline marks are left out"
        )
        direction = None
    elif stated:
        direction = stated.pop()
    else:
        base = next((metric[: -len(s)] for s in REGION_SUFFIXES if metric.endswith(s)), metric)
        direction = DEFAULT_DIRECTIONS.get(base)
    values = [_number(entry.get(key)) for entry in entries for key in ("mean", "std")]
    counts = {entry.get("n") for entry in entries if _number(entry.get("mean")) is not None}
    return Column(metric, direction, _decimals(values), len(counts) > 1)


def _decimals(values: Iterable[float | None]) -> int:
    """Decimals that give the column's largest value four significant digits (at most 6)."""
    finite = [abs(v) for v in values if v is not None and math.isfinite(v) and v != 0]
    if not finite:
        return 4
    return min(6, max(0, 3 - math.floor(math.log10(max(finite)))))


def _number(value: Any) -> float | None:
    """A finite or infinite float; None for missing, NaN, booleans and non-numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def _cell(row: dict, metric: str) -> Cell:
    entry = row["metrics"].get(metric)
    if entry is None or _number(entry.get("mean")) is None:
        return Cell()
    n = entry.get("n")
    return Cell(mean=_number(entry["mean"]), std=_number(entry.get("std")), n=n if isinstance(n, int) else None)


def _table_row(row: dict, columns: list[Column], baseline: dict | None) -> TableRow:
    cells: dict[str, Cell] = {}
    wins = compared = 0
    for column in columns:
        cell = _cell(row, column.metric)
        if baseline is not None:
            verdict = _versus(cell.mean, _cell(baseline, column.metric).mean, column.higher_is_better)
            if verdict is not None:
                compared += 1
                wins += verdict == "better"
                cell = Cell(cell.mean, cell.std, cell.n, vs_baseline=verdict)
        cells[column.metric] = cell
    linked = baseline is not None
    return TableRow(
        label=row["_label"],
        role=row["role"],
        baseline=baseline["_label"] if linked else None,
        source=row["_source"],
        target=row.get("target"),
        cells=cells,
        wins=wins if linked else None,
        compared=compared if linked else None,
    )


def _versus(value: float | None, reference: float | None, higher_is_better: bool | None) -> str | None:
    if value is None or reference is None or higher_is_better is None:
        return None
    if value == reference:
        return "equal"
    return "better" if (value > reference) == higher_is_better else "worse"


def _mark_best(rows: list[TableRow], columns: list[Column]) -> list[TableRow]:
    best_of: dict[str, float] = {}
    for column in columns:
        values = [row.cells[column.metric].mean for row in rows if row.cells[column.metric].mean is not None]
        if len(values) >= 2 and column.higher_is_better is not None:
            best_of[column.metric] = max(values) if column.higher_is_better else min(values)
    marked = []
    for row in rows:
        cells = {
            metric: Cell(c.mean, c.std, c.n, best=True, vs_baseline=c.vs_baseline)
            if metric in best_of and c.mean == best_of[metric] else c
            for metric, c in row.cells.items()
        }
        marked.append(dataclasses.replace(row, cells=cells))
    return marked


def _order_rows(rows: list[TableRow], columns: list[Column], sort: str | None) -> list[TableRow]:
    if sort is None:
        return [row for row in rows if row.role == "baseline"] + [row for row in rows if row.role != "baseline"]
    metric = sort.strip().lower()
    column = next((c for c in columns if c.metric == metric), None)
    if column is None:
        available = ", ".join(c.metric for c in columns) or "no metrics"
        raise SvaiError(f"cannot sort by {sort!r}: these results have {available}")
    sign = -1.0 if column.higher_is_better else 1.0

    def key(row: TableRow) -> tuple[bool, float]:
        value = row.cells[metric].mean
        return (value is None, sign * value if value is not None else 0.0)

    return sorted(rows, key=key)


def _target_warnings(rows: list[dict]) -> list[str]:
    by_target: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        by_target[row.get("target") or "unknown"].append(row["_label"])
    if len(by_target) < 2:
        return []
    groups = "; ".join(f"{', '.join(labels)}: {target}" for target, labels in by_target.items())
    return [f"rows are scored against different target folders ({groups}): their numbers are not comparable"]


def _notes(rows: list[dict]) -> list[str]:
    """Per-row remarks; the same remark for several rows becomes one line naming them all."""
    labels_for: dict[str, list[str]] = {}
    for row in rows:
        for text in _row_notes(row):
            labels_for.setdefault(text, []).append(row["_label"])
    return [f"{', '.join(labels)}: {text}" for text, labels in labels_for.items()]


def _row_notes(row: dict) -> list[str]:
    notes = []
    unavailable = row.get("unavailable") or {}
    if isinstance(unavailable, dict):
        # FID, KID and IS share one network, so one missing file makes three entries: one line.
        metrics_for: dict[str, list[str]] = {}
        for metric, reason in unavailable.items():
            metrics_for.setdefault(str(reason), []).append(metric)
        notes += [f"{', '.join(metrics)} unavailable: {reason}" for reason, metrics in metrics_for.items()]
    for metric, entry in row["metrics"].items():
        if entry.get("warning"):
            notes.append(f"{metric}: {entry['warning']}")
        if isinstance(entry.get("identical"), int) and entry["identical"] > 0:
            notes.append(f"{metric}: {entry['identical']} prediction(s) identical to their target")
        if entry.get("mean") is not None and _number(entry.get("mean")) is None:
            notes.append(f"{metric}: no usable mean ({entry.get('mean')!r}), shown as {MISSING}")
    unmatched = row.get("unmatched") or {}
    pred_only, target_only = len(unmatched.get("pred_only") or []), len(unmatched.get("target_only") or [])
    if pred_only or target_only:
        notes.append(
            f"{pred_only} prediction(s) without a target and {target_only} target(s) without a prediction were left out"
        )
    if row.get("skipped"):
        notes.append(f"{len(row['skipped'])} file(s) skipped while evaluating")
    return notes + list(row.get("_notes") or [])


# --------------------------------------------------------------------------------------------
# Text formats


def format_number(value: float | None, decimals: int) -> str:
    if value is None:
        return MISSING
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{decimals}f}"


def cell_text(cell: Cell, column: Column) -> str:
    """The plain text of a cell: "mean", "mean ± std", with " (n=N)" when N differs by row."""
    text = format_number(cell.mean, column.decimals)
    if cell.mean is None:
        return text
    if cell.std is not None:
        text += f" ± {format_number(cell.std, column.decimals)}"
    if column.show_n and cell.n is not None:
        text += f" (n={cell.n})"
    return text


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
    style = "bold green" if cell.best else "red" if cell.vs_baseline == "worse" else ""
    text = Text()
    text.append(format_number(cell.mean, column.decimals), style=style)
    if cell.vs_baseline == "worse":
        text.append(f" {WORSE_MARK}", style="red")
    extra = []
    if cell.std is not None:
        extra.append(f"±{format_number(cell.std, column.decimals)}")
    if column.show_n and cell.n is not None:
        extra.append(f"n={cell.n}")
    if extra:
        text.append("\n" + " ".join(extra), style="dim")
    return text


def _rich_beats(row: TableRow) -> Text:
    if row.compared is None:
        return Text(MISSING, style="dim")
    style = "green" if row.wins == row.compared else "red" if row.wins == 0 else "yellow"
    return Text(row.beats_baseline, style=style)


# --------------------------------------------------------------------------------------------
# Image grid


@dataclass(frozen=True)
class GridPlan:
    """Which file goes in which cell: `files[r][c]` for image `ids[r]` under `titles[c]`."""

    titles: list[str]
    ids: list[str]
    files: list[list[Path]]
    warnings: list[str]


def plan_grid(
    rows: list[dict],
    ids: Sequence[str] | None = None,
    k: int = 4,
    before_dir: Path | None = None,
) -> GridPlan:
    """Choose the grid's columns (before | each model | real after) and its test images.

    Images are matched across folders by relative path without extension. Without `ids`, `k`
    ids are spread evenly over the sorted ids every folder has. Baseline rows draw no column:
    their "prediction" is the before image.
    """
    models = [row for row in rows if row["role"] != "baseline"]
    if not models:
        raise SvaiError("no model results to draw: the grid needs at least one evaluated model")
    if k < 1:
        raise SvaiError(f"--rows {k}: give at least 1 image row")
    warnings: list[str] = []
    columns = _grid_columns(models, before_dir, warnings)
    indexes = [_index_images(title, folder, warnings) for title, folder in columns]
    chosen = _choose_ids(columns, indexes, ids, k)
    files = [[index[image_id] for index in indexes] for image_id in chosen]
    return GridPlan([title for title, _ in columns], chosen, files, warnings)


def _grid_columns(models: list[dict], before_dir: Path | None, warnings: list[str]) -> list[tuple[str, Path]]:
    targets = list(dict.fromkeys(row.get("target") for row in models))
    if len(targets) > 1:
        warnings.append(f"models use different target folders; the grid's real after images come from {targets[0]}")
    if targets[0] is None:
        raise SvaiError(f"{models[0]['_source']}: no \"target\" folder, so the grid has no real after images")
    before = before_dir
    if before is None:
        known = list(dict.fromkeys(row["before"] for row in models if row.get("before")))
        if len(known) > 1:
            warnings.append(f"models name different before folders; the grid uses {known[0]}")
        before = Path(known[0]) if known else None
    columns: list[tuple[str, Path]] = []
    if before is None:
        warnings.append(
            'before images unknown (the results name no "before" folder): the grid leaves that column out; '
            "give --before DIR"
        )
    else:
        columns.append(("before", Path(before)))
    for row in models:
        if not row.get("pred"):
            raise SvaiError(f"{row['_source']}: no \"pred\" folder, so {row['_label']} cannot be drawn")
        columns.append((row["_label"], Path(row["pred"])))
    columns.append(("real after", Path(targets[0])))
    return columns


def _index_images(title: str, folder: Path, warnings: list[str]) -> dict[str, Path]:
    try:
        files = list_images(folder)
    except SvaiError as error:
        raise SvaiError(f"grid column {title!r}: {error}") from None
    index: dict[str, Path] = {}
    for file in files:
        key = file.relative_to(folder).with_suffix("").as_posix()
        if key in index:
            warnings.append(f"{folder}: {key} exists with two extensions; the grid uses {index[key].name}")
            continue
        index[key] = file
    return index


def _normalize_id(image_id: str) -> str:
    image_id = image_id.strip().replace("\\", "/")
    suffix = Path(image_id).suffix
    return image_id[: -len(suffix)] if suffix.lower() in IMAGE_EXTENSIONS else image_id


def _choose_ids(
    columns: list[tuple[str, Path]], indexes: list[dict[str, Path]], ids: Sequence[str] | None, k: int
) -> list[str]:
    if ids:
        chosen = [_normalize_id(image_id) for image_id in ids if image_id.strip()]
        for image_id in chosen:
            for (title, folder), index in zip(columns, indexes):
                if image_id not in index:
                    example = next(iter(sorted(index)), "")
                    raise SvaiError(
                        f"--ids {image_id!r}: no such image in {folder} ({title}); ids look like {example!r}"
                    )
        return chosen
    common = sorted(set.intersection(*(set(index) for index in indexes)))
    if not common:
        folders = ", ".join(str(folder) for _, folder in columns)
        raise SvaiError(
            f"no image id is present in every grid folder ({folders}): check that they hold the same test set"
        )
    return spread(common, k)


def spread(items: Sequence[str], k: int) -> list[str]:
    """`k` items evenly spaced over `items`, first and last included (all when k >= len)."""
    n = len(items)
    if k >= n:
        return list(items)
    if k == 1:
        return [items[n // 2]]
    return [items[round(i * (n - 1) / (k - 1))] for i in range(k)]


def title_bar_height(cell: int) -> int:
    """Height in pixels of the title strip above the grid, for cells of `cell` pixels."""
    size = _font_size(cell)
    return size + 2 * max(4, size // 2)


def _font_size(cell: int) -> int:
    return max(10, cell // 10)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):
        # Pillow without FreeType (or older than 10.1) only has the fixed bitmap font.
        return ImageFont.load_default()


def fit_cell(image: Image.Image, cell: int) -> Image.Image:
    """Resize to fit a `cell`×`cell` square, centred on white when not square.

    Enlarging uses nearest neighbour (a small image shows its real pixels); shrinking uses
    Lanczos (no aliasing).
    """
    width, height = image.size
    if (width, height) == (cell, cell):
        return image.copy()
    scale = cell / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = image.resize(size, Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS)
    if size == (cell, cell):
        return resized
    square = Image.new("RGB", (cell, cell), "white")
    square.paste(resized, ((cell - size[0]) // 2, (cell - size[1]) // 2))
    return square


def render_grid(plan: GridPlan, cell: int = 128) -> Image.Image:
    """Draw the planned grid: a title strip, then one row of `cell`-pixel squares per image id.

    Size: width = columns × cell, height = title_bar_height(cell) + rows × cell.
    """
    if cell < 16:
        raise SvaiError(f"grid cell size {cell}: give at least 16 pixels")
    bar = title_bar_height(cell)
    grid = Image.new("RGB", (len(plan.titles) * cell, bar + len(plan.ids) * cell), (246, 246, 246))
    _draw_titles(grid, plan.titles, cell, bar)
    for r, files in enumerate(plan.files):
        for c, file in enumerate(files):
            grid.paste(fit_cell(Image.fromarray(read_rgb(file)), cell), (c * cell, bar + r * cell))
    return grid


def _draw_titles(grid: Image.Image, titles: list[str], cell: int, bar: int) -> None:
    draw = ImageDraw.Draw(grid)
    font = _font(_font_size(cell))
    # One vertical position for every title (from letters with ascender and descender), so
    # that "before" and "pix2pix" sit on the same baseline.
    _, top, _, bottom = draw.textbbox((0, 0), "Ag", font=font)
    y = (bar - (bottom - top)) / 2 - top
    for c, title in enumerate(titles):
        text = _fit_text(draw, title, font, cell - 6)
        left, _, right, _ = draw.textbbox((0, 0), text, font=font)
        x = c * cell + (cell - (right - left)) / 2 - left
        draw.text((x, y), text, fill=(34, 34, 34), font=font)
        if c:
            draw.line([(c * cell, 3), (c * cell, bar - 4)], fill=(200, 200, 200))


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while len(text) > 1 and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def image_grid(
    rows: list[dict],
    ids: Sequence[str] | None = None,
    k: int = 4,
    before_dir: Path | None = None,
    cell: int = 128,
) -> Image.Image:
    """Grid of test images: before | each model's output | real after, titles on top.

    See `plan_grid` for how images are found and chosen (its warnings are logged here) and
    `render_grid` for the layout.
    """
    plan = plan_grid(rows, ids=ids, k=k, before_dir=before_dir)
    for warning in plan.warnings:
        logger.warning(warning)
    return render_grid(plan, cell)


def png_data(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def save_png(image: Image.Image, path: Path) -> None:
    """Write a PNG atomically: a crash leaves the old file or the new one, never half."""
    write_atomic(Path(path), png_data(image))


# --------------------------------------------------------------------------------------------
# HTML report

_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#1d1d1f;
background:#fafafa;margin:0}
main{max-width:1180px;margin:0 auto;padding:24px 28px 48px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:32px 0 10px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#666;margin:0 0 16px}
.warn{background:#fff6da;border:1px solid #e8cf7a;border-radius:6px;padding:8px 14px;margin:12px 0}
.warn li,.notes li{margin:2px 0}
table{border-collapse:collapse;background:#fff;font-variant-numeric:tabular-nums}
table.metrics th,table.metrics td{padding:6px 12px;border-bottom:1px solid #e5e5e5;text-align:right;white-space:nowrap;
vertical-align:top}
table.metrics th{background:#f0f0f3;font-weight:600}
table.metrics th:first-child,table.metrics td:first-child{text-align:left}
table.metrics tr.baseline td:first-child{font-style:italic;color:#555}
td.best{font-weight:700;background:#e2f4e1;color:#14612b}
td.worse{color:#b3261e}
table.metrics td.center{text-align:center}
.std{color:#888;font-weight:400;font-size:12px}
.scroll{overflow-x:auto}
.legend{color:#555;font-size:13px;margin:8px 0 0;max-width:900px}
figure{margin:12px 0 24px}figure img{max-width:100%;height:auto;border:1px solid #ddd;background:#fff}
figcaption{color:#555;font-size:13px;margin-top:4px}
.details{overflow-x:auto}
table.settings td,table.settings th{padding:4px 10px;border-bottom:1px solid #eee;text-align:left;vertical-align:top;
font-size:13px}
table.settings td{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;word-break:break-all;max-width:360px}
table.settings th{background:#f0f0f3}
table.settings tr.differs td{background:#fff1e0}
"""


def html_report(
    rows: list[dict],
    table: ComparisonTable,
    grids: Mapping[str, Image.Image] | Sequence[Image.Image],
    path: Path,
) -> None:
    """Write one self-contained HTML page: table, grids (embedded PNG), settings, warnings.

    `grids` maps a caption to an image (a plain list gets no captions). Nothing is loaded from
    elsewhere: styles are inline and images are data URIs, so the file can be mailed as is.
    """
    write_atomic(Path(path), report_html(rows, table, grids).encode("utf-8"))


def report_html(
    rows: list[dict],
    table: ComparisonTable,
    grids: Mapping[str, Image.Image] | Sequence[Image.Image],
) -> str:
    """The page `html_report` writes, as text."""
    captioned = list(grids.items()) if isinstance(grids, Mapping) else [("", image) for image in grids]
    models = sum(row.role != "baseline" for row in table.rows)
    baselines = len(table.rows) - models
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>svai model comparison</title>",
        f"<style>{_CSS}</style></head><body><main>",
        "<h1>Model comparison</h1>",
        f'<p class="meta">{models} model(s), {baselines} baseline(s) · svai {_e(__version__)} · {when}</p>',
        _html_list("warn", table.warnings, "Warning"),
        "<h2>Metrics</h2>",
        _html_table(table),
        f'<p class="legend">{_e(legend(table))}</p>',
    ]
    if captioned:
        parts.append("<h2>Images</h2>")
        parts += [_html_figure(caption, image) for caption, image in captioned]
    if table.notes:
        parts += ["<h2>Notes</h2>", _html_list("notes", table.notes, "")]
    parts += ["<h2>Settings and provenance</h2>", _html_settings(rows, table), "</main></body></html>"]
    return "\n".join(part for part in parts if part) + "\n"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _html_list(css: str, items: list[str], prefix: str) -> str:
    if not items:
        return ""
    lead = f"<strong>{_e(prefix)}:</strong> " if prefix else ""
    return f'<div class="{css}"><ul>' + "".join(f"<li>{lead}{_e(item)}</li>" for item in items) + "</ul></div>"


def _html_table(table: ComparisonTable) -> str:
    head = "<th>model</th>" + "".join(f"<th>{_e(c.title)}</th>" for c in table.columns)
    if table.has_baseline:
        head += "<th>beats baseline</th>"
    body = []
    for row in table.rows:
        cells = [f"<td>{_e(row.label)}</td>"]
        cells += [_html_cell(row.cells[c.metric], c) for c in table.columns]
        if table.has_baseline:
            cells.append(f'<td class="center">{_e(row.beats_baseline or MISSING)}</td>')
        body.append(f'<tr class="{_e(row.role)}">' + "".join(cells) + "</tr>")
    return (
        f'<div class="scroll"><table class="metrics"><thead><tr>{head}</tr></thead>'
        f'<tbody>{"".join(body)}</tbody></table></div>'
    )


def _html_cell(cell: Cell, column: Column) -> str:
    if cell.mean is None:
        return f"<td>{MISSING}</td>"
    classes = [name for name, on in (("best", cell.best), ("worse", cell.vs_baseline == "worse")) if on]
    text = _e(format_number(cell.mean, column.decimals))
    if cell.vs_baseline == "worse":
        text += f" {WORSE_MARK}"
    extra = []
    if cell.std is not None:
        extra.append(f"± {_e(format_number(cell.std, column.decimals))}")
    if column.show_n and cell.n is not None:
        extra.append(f"n={cell.n}")
    if extra:
        text += f'<br><span class="std">{" ".join(extra)}</span>'
    title = f' title="{_e(cell.vs_baseline)} than the baseline"' if cell.vs_baseline in ("better", "worse") else ""
    return f'<td class="{" ".join(classes)}"{title}>{text}</td>' if classes else f"<td{title}>{text}</td>"


def _html_figure(caption: str, image: Image.Image) -> str:
    data = base64.b64encode(png_data(image)).decode("ascii")
    alt = _e(caption or "image grid")
    figcaption = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    return (
        f'<figure><img alt="{alt}" width="{image.width}" height="{image.height}" '
        f'src="data:image/png;base64,{data}">{figcaption}</figure>'
    )


_FIXED_KEYS = ("role", "source", *_DIRS, "svai_version")
# Keys that differ between rows by design; only the others are flagged when they differ.
_PER_RUN_KEYS = frozenset({"role", "source", "pred", "before", "masks"})


def settings_rows(rows: list[dict], labels: list[str]) -> list[tuple[str, list[str]]]:
    """(key, one value per label) for the provenance table; nested settings flattened with dots."""
    by_label = {row["_label"]: row for row in rows}
    flat = [_provenance(by_label[label]) for label in labels if label in by_label]
    found = dict.fromkeys(key for values in flat for key in values)
    keys = [key for key in _FIXED_KEYS if key in found] + [key for key in found if key not in _FIXED_KEYS]
    return [(key, [values.get(key, "") for values in flat]) for key in keys]


def differing_settings(rows: list[dict]) -> list[str]:
    """settings.* and weights.* keys whose values differ between rows that state them."""
    labels = [row["_label"] for row in rows]
    return [
        key for key, values in settings_rows(rows, labels)
        if key.startswith(("settings.", "weights.")) and len({v for v in values if v}) > 1
    ]


def _provenance(row: dict) -> dict[str, str]:
    values = {"role": row["role"], "source": row["_source"]}
    values.update({key: row[key] for key in _DIRS if row.get(key)})
    if row.get("svai_version"):
        values["svai_version"] = row["svai_version"]
    for section in ("settings", "weights", "versions"):
        values.update(_flatten(row.get(section), section))
    unmatched = row.get("unmatched") or {}
    for key in ("pred_only", "target_only"):
        if unmatched.get(key):
            values[f"unmatched.{key}"] = str(len(unmatched[key]))
    if row.get("skipped"):
        values["skipped"] = str(len(row["skipped"]))
    return {key: str(value) for key, value in values.items()}


def _flatten(value: Any, prefix: str) -> dict[str, str]:
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key, inner in value.items():
            out.update(_flatten(inner, f"{prefix}.{key}"))
        return out
    if value is None:
        return {}
    if isinstance(value, (list, tuple)):
        return {prefix: ", ".join(str(item) for item in value)}
    return {prefix: str(value)}


def _html_settings(rows: list[dict], table: ComparisonTable) -> str:
    labels = [row.label for row in table.rows]
    head = "<th></th>" + "".join(f"<th>{_e(label)}</th>" for label in labels)
    body = []
    for key, values in settings_rows(rows, labels):
        present = {value for value in values if value}
        differs = ' class="differs"' if len(present) > 1 and key not in _PER_RUN_KEYS else ""
        body.append(f"<tr{differs}><th>{_e(key)}</th>" + "".join(f"<td>{_e(v)}</td>" for v in values) + "</tr>")
    note = '<p class="legend">Highlighted: values that differ between rows.</p>'
    return (
        f'<div class="details"><table class="settings"><thead><tr>{head}</tr></thead>'
        f'<tbody>{"".join(body)}</tbody></table></div>{note}'
    )

"""The comparison table: one column per metric, one row per model or baseline.

Built from `load_results` rows; every output format (terminal, markdown, CSV, JSON, HTML)
renders this one model, so they always agree on order, best values and baseline verdicts.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable

from svai.errors import SvaiError
from svai.metrics.specs import REGIONS, spec_of, split_region
from svai.report.results import as_number, differing_settings

# Distribution metrics first (they judge realism), then paired ones, perceptual before pixel-wise.
PREFERRED_ORDER: tuple[str, ...] = ("fid", "kid", "is", "lpips", "ssim", "psnr", "identity", "identity_target")
REGION_SUFFIXES: tuple[str, ...] = tuple(f"_{region}" for region in REGIONS)
WORSE_MARK = "†"
MISSING = "—"


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
        base, region = split_region(name)
        if region is not None:
            rank = PREFERRED_ORDER.index(base) if base in PREFERRED_ORDER else len(PREFERRED_ORDER)
            return (1, rank, REGIONS.index(region), name)
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
        # Older or hand-written results may leave the direction out; known metrics have one.
        spec = spec_of(metric)
        direction = spec.higher_is_better if spec is not None else None
    values = [as_number(entry.get(key)) for entry in entries for key in ("mean", "std")]
    counts = {entry.get("n") for entry in entries if as_number(entry.get("mean")) is not None}
    return Column(metric, direction, _decimals(values), len(counts) > 1)


def _decimals(values: Iterable[float | None]) -> int:
    """Decimals that give the column's largest value four significant digits (at most 6)."""
    finite = [abs(v) for v in values if v is not None and math.isfinite(v) and v != 0]
    if not finite:
        return 4
    return min(6, max(0, 3 - math.floor(math.log10(max(finite)))))


def _cell(row: dict, metric: str) -> Cell:
    entry = row["metrics"].get(metric)
    if entry is None or as_number(entry.get("mean")) is None:
        return Cell()
    n = entry.get("n")
    return Cell(mean=as_number(entry["mean"]), std=as_number(entry.get("std")), n=n if isinstance(n, int) else None)


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
        if entry.get("mean") is not None and as_number(entry.get("mean")) is None:
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

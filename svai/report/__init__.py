"""Compare evaluated models: the metric table, image grids and a self-contained HTML report.

One module per concern; everything public is importable from `svai.report`:

- `results`: evaluation JSON files -> rows (baselines deduplicated, labels made unique),
  and the provenance those rows carry;
- `table`: the comparison table model (columns, cells, best values, baseline verdicts);
- `formats`: markdown, CSV, JSON and the rich terminal table, and the one "mean ± std (n)"
  formatter every output uses;
- `grid`: image grids (before | each model | real after);
- `curves`: training histories (log.jsonl curves as inline SVG, sample grids over time);
- `html`: the self-contained HTML page.
"""

from __future__ import annotations

from svai.report.curves import History, load_histories, training_html
from svai.report.formats import (
    FORMATS,
    SummaryText,
    cell_summary,
    cell_text,
    csv_fields,
    format_number,
    format_table,
    legend,
    rich_table,
    summary_text,
    table_dict,
)
from svai.report.grid import GridPlan, fit_cell, image_grid, plan_grid, render_grid, save_png, spread, title_bar_height
from svai.report.html import html_report, report_html
from svai.report.results import (
    RESULT_FILE, as_number, differing_settings, environment_differences, load_results, read_paths, settings_rows,
)
from svai.report.table import (
    MISSING,
    PREFERRED_ORDER,
    REGION_SUFFIXES,
    VS_BASELINE,
    WORSE_MARK,
    Cell,
    Column,
    ComparisonTable,
    TableRow,
    comparison_table,
    ordered_metrics,
)

__all__ = [
    "FORMATS", "MISSING", "PREFERRED_ORDER", "REGION_SUFFIXES", "RESULT_FILE", "VS_BASELINE", "WORSE_MARK",
    "Cell", "Column", "ComparisonTable", "GridPlan", "History", "SummaryText", "TableRow",
    "as_number", "cell_summary", "cell_text", "comparison_table", "csv_fields", "differing_settings", "fit_cell",
    "environment_differences", "format_number", "format_table", "html_report", "image_grid", "legend",
    "load_histories", "load_results", "ordered_metrics", "read_paths",
    "plan_grid", "render_grid", "report_html", "rich_table", "save_png", "settings_rows", "spread",
    "summary_text", "table_dict", "title_bar_height", "training_html",
]

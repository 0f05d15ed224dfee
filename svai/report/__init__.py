"""Compare evaluated models: the metric table, image grids and a self-contained HTML report.

One module per concern; what the commands and the tests use is importable from `svai.report`:

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

from svai.report.curves import load_histories
from svai.report.formats import FORMATS, cell_text, format_table, rich_table, summary_text
from svai.report.grid import image_grid, plan_grid, render_grid, save_png, spread, title_bar_height
from svai.report.html import html_report, report_html
from svai.report.results import environment_differences, load_results, read_paths
from svai.report.table import PREFERRED_ORDER, REGION_SUFFIXES, ComparisonTable, TableRow, comparison_table

__all__ = [
    "FORMATS", "PREFERRED_ORDER", "REGION_SUFFIXES", "ComparisonTable", "TableRow", "cell_text", "comparison_table",
    "environment_differences", "format_table", "html_report", "image_grid", "load_histories", "load_results",
    "plan_grid", "read_paths", "render_grid", "report_html",
    "rich_table", "save_png", "spread", "summary_text", "title_bar_height",
]

"""The HTML report: one self-contained page with the table, image grids, notes and provenance."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, Sequence

from PIL import Image

from svai import __version__
from svai.io import Privacy, write_atomic
from svai.report.curves import History, escape, png_data_uri, training_html
from svai.report.formats import cell_summary, legend
from svai.report.results import environment_differences, settings_rows
from svai.report.table import MISSING, WORSE_MARK, Cell, Column, ComparisonTable

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
div.differs{background:#fff1e0;border-radius:6px;padding:6px 14px;margin:8px 0}
h3{font-size:15px;margin:20px 0 8px}
.charts,.samples{display:flex;flex-wrap:wrap;gap:12px}
svg.chart{background:#fff;border:1px solid #e5e5e5}
svg.chart .title{font-size:13px;font-weight:600;fill:#1d1d1f}svg.chart .tick{font-size:11px;fill:#555}
svg.chart .grid{stroke:#eee}svg.chart .axis{stroke:#999}
.samples figure{margin:0}
"""


def html_report(
    rows: list[dict],
    table: ComparisonTable,
    grids: Mapping[str, Image.Image] | Sequence[Image.Image],
    path: Path,
    privacy: Privacy | None = None,
    histories: Sequence[History] = (),
) -> None:
    """Write one self-contained HTML page: table, grids (embedded PNG), training curves and
    sample grids over time (`histories`, see `svai.report.curves`), settings, warnings.

    `grids` maps a caption to an image (a plain list gets no captions). Nothing is loaded from
    elsewhere: styles are inline, charts are inline SVG and images are data URIs, so the file
    can be mailed as is. `privacy`: that of the photos the grids show (`svai.io.Privacy`).
    """
    write_atomic(Path(path), report_html(rows, table, grids, histories).encode("utf-8"), privacy)


def report_html(
    rows: list[dict],
    table: ComparisonTable,
    grids: Mapping[str, Image.Image] | Sequence[Image.Image],
    histories: Sequence[History] = (),
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
        f'<p class="meta">{models} model(s), {baselines} baseline(s) · svai {escape(__version__)} · {when}</p>',
        _html_list("warn", table.warnings, "Warning"),
        "<h2>Metrics</h2>",
        _html_table(table),
        f'<p class="legend">{escape(legend(table))}</p>',
    ]
    if captioned:
        parts.append("<h2>Images</h2>")
        parts += [_html_figure(caption, image) for caption, image in captioned]
    parts.append(training_html(histories))
    if table.notes:
        parts += ["<h2>Notes</h2>", _html_list("notes", table.notes, "")]
    parts += ["<h2>Settings and provenance</h2>", _html_list("differs", environment_differences(rows), "Runs differ in"),
              _html_settings(rows, table), "</main></body></html>"]
    return "\n".join(part for part in parts if part) + "\n"


def _html_list(css: str, items: list[str], prefix: str) -> str:
    if not items:
        return ""
    lead = f"<strong>{escape(prefix)}:</strong> " if prefix else ""
    return f'<div class="{css}"><ul>' + "".join(f"<li>{lead}{escape(item)}</li>" for item in items) + "</ul></div>"


def _html_table(table: ComparisonTable) -> str:
    head = "<th>model</th>" + "".join(f"<th>{escape(c.title)}</th>" for c in table.columns)
    if table.has_baseline:
        head += "<th>beats baseline</th>"
    body = []
    for row in table.rows:
        cells = [f"<td>{escape(row.label)}</td>"]
        cells += [_html_cell(row.cells[c.metric], c) for c in table.columns]
        if table.has_baseline:
            cells.append(f'<td class="center">{escape(row.beats_baseline or MISSING)}</td>')
        body.append(f'<tr class="{escape(row.role)}">' + "".join(cells) + "</tr>")
    return (
        f'<div class="scroll"><table class="metrics"><thead><tr>{head}</tr></thead>'
        f'<tbody>{"".join(body)}</tbody></table></div>'
    )


def _html_cell(cell: Cell, column: Column) -> str:
    if cell.mean is None:
        return f"<td>{MISSING}</td>"
    classes = [name for name, on in (("best", cell.best), ("worse", cell.vs_baseline == "worse")) if on]
    parts = cell_summary(cell, column)
    text = escape(parts.mean)
    if cell.vs_baseline == "worse":
        text += f" {WORSE_MARK}"
    detail = parts.detail("± ")
    if detail:
        text += f'<br><span class="std">{escape(detail)}</span>'
    title = f' title="{escape(cell.vs_baseline)} than the baseline"' if cell.vs_baseline in ("better", "worse") else ""
    return f'<td class="{" ".join(classes)}"{title}>{text}</td>' if classes else f"<td{title}>{text}</td>"


def _html_figure(caption: str, image: Image.Image) -> str:
    alt = escape(caption or "image grid")
    figcaption = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
    return (
        f'<figure><img alt="{alt}" width="{image.width}" height="{image.height}" '
        f'src="{png_data_uri(image)}">{figcaption}</figure>'
    )


# Keys that differ between rows by design; only the others are flagged when they differ.
_PER_RUN_KEYS = frozenset({"role", "source", "pred", "before", "masks", "environment.command", "environment.started"})


def _html_settings(rows: list[dict], table: ComparisonTable) -> str:
    labels = [row.label for row in table.rows]
    head = "<th></th>" + "".join(f"<th>{escape(label)}</th>" for label in labels)
    body = []
    for key, values in settings_rows(rows, labels):
        present = {value for value in values if value}
        differs = ' class="differs"' if len(present) > 1 and key not in _PER_RUN_KEYS else ""
        body.append(f"<tr{differs}><th>{escape(key)}</th>" + "".join(f"<td>{escape(v)}</td>" for v in values) + "</tr>")
    note = '<p class="legend">Highlighted: values that differ between rows.</p>'
    return (
        f'<div class="details"><table class="settings"><thead><tr>{head}</tr></thead>'
        f'<tbody>{"".join(body)}</tbody></table></div>{note}'
    )
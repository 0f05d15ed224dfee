"""Training histories for the report: loss curves as inline SVG and sample grids over time.

A run's `log.jsonl` (one record per `train.log_every` steps) and `samples/step-*.png` are the
source, whether or not a tracker ran, so any run can be looked at after the fact. Charts are
drawn here as plain SVG text, without a plotting library, and the grids are embedded as data
URIs: the page needs nothing from anywhere.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from svai.io import png_bytes
from svai.report.grid import spread
from svai.report.results import RESULT_FILE
from svai.run import LOG_FILE, SAMPLES_DIR

_SAMPLE_NAME = re.compile(r"step-(\d+)\.png$")
# Keys of a log record that are not losses; they are drawn after the losses, in this order.
_TRAILING = ("lr_factor", "images_per_s")
_TITLES = {"lr_factor": "learning-rate factor", "images_per_s": "images per second"}
# Okabe–Ito colours: told apart with the common colour-vision deficiencies.
PALETTE = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000", "#f0e442")
MAX_POINTS = 600  # per line; longer logs are averaged over equal windows of records


@dataclass
class History:
    """One run's training record: `records` from log.jsonl, `samples` as (step, PNG path)."""

    label: str
    run_dir: Path
    records: list[dict[str, Any]] = field(default_factory=list)
    samples: list[tuple[int, Path]] = field(default_factory=list)

    def series(self, key: str) -> list[tuple[float, float]]:
        """(step, value) for every record holding a finite number under `key`."""
        points = []
        for record in self.records:
            value, step = record.get(key), record.get("step")
            if _number(value) and _number(step) and math.isfinite(value):
                points.append((float(step), float(value)))
        return points

    def keys(self) -> list[str]:
        found = dict.fromkeys(k for record in self.records for k, v in record.items() if k != "step" and _number(v))
        return list(found)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_log(path: Path) -> list[dict[str, Any]]:
    """The records of a log.jsonl; a line that is not a JSON object (a torn last line after a
    crash) is left out."""
    records = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def list_samples(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of a run's sample grids, by step."""
    folder = Path(run_dir) / SAMPLES_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _SAMPLE_NAME.search(p.name))]
    return sorted(found)


def load_histories(rows: Sequence[dict]) -> list[History]:
    """The training history of every model row read from a run folder (`RUN/evaluation.json`)
    that has a log or samples; rows from other JSON files and baselines have none."""
    histories = []
    for row in rows:
        source = Path(row.get("_source", ""))
        if row.get("role") == "baseline" or source.name != RESULT_FILE:
            continue
        run_dir = source.parent
        history = History(str(row.get("_label", run_dir.name)), run_dir, read_log(run_dir / LOG_FILE),
                          list_samples(run_dir))
        if history.records or history.samples:
            histories.append(history)
    return histories


# -- charts -----------------------------------------------------------------------------------

def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high]: steps of 1, 2, 2.5 or 5 times a power of ten."""
    if not high > low:
        pad = abs(low) * 0.1 or 1.0
        low, high = low - pad, high + pad
    raw = (high - low) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.floor(low / step + 1e-9)
    last = math.ceil(high / step - 1e-9)
    return [round(index * step, 12) for index in range(first, last + 1)]


def _tick_text(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or abs(value) < 1e-3:
        return f"{value:.1e}"
    return f"{value:.4g}"


def thin(points: list[tuple[float, float]], limit: int = MAX_POINTS) -> list[tuple[float, float]]:
    """At most `limit` points: the means of equal consecutive windows when there are more."""
    if len(points) <= limit:
        return points
    bounds = np.linspace(0, len(points), limit + 1).round().astype(int)
    array = np.asarray(points, dtype=np.float64)
    return [tuple(array[lo:hi].mean(axis=0)) for lo, hi in zip(bounds, bounds[1:]) if hi > lo]


def line_chart(title: str, lines: Sequence[tuple[str, list[tuple[float, float]]]],
               width: int = 520, height: int = 240) -> str:
    """An SVG line chart: one polyline per (name, [(x, y), …]) in `lines`, value axes with
    round ticks, a legend. Empty lines are left out; no line at all gives ""."""
    lines = [(name, thin(points)) for name, points in lines if points]
    if not lines:
        return ""
    left, right, top, bottom = 58, 12, 30, 34
    xs = [x for _, points in lines for x, _ in points]
    ys = [y for _, points in lines for _, y in points]
    yticks = nice_ticks(min(ys), max(ys))
    xticks = nice_ticks(min(xs), max(xs)) if max(xs) > min(xs) else [min(xs)]
    x0, x1 = min(xticks[0], min(xs)), max(xticks[-1], max(xs))
    y0, y1 = yticks[0], yticks[-1]
    plot_w, plot_h = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / ((x1 - x0) or 1.0) * plot_w

    def sy(y: float) -> float:
        return top + plot_h - (y - y0) / ((y1 - y0) or 1.0) * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)} by training step">',
        f'<text x="{left}" y="16" class="title">{escape(title)}</text>',
    ]
    for tick in yticks:
        y = sy(tick)
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">{_tick_text(tick)}</text>')
    for tick in xticks:
        if x0 <= tick <= x1:
            x = sx(tick)
            parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top + plot_h}" y2="{top + plot_h + 4}" class="axis"/>')
            parts.append(f'<text x="{x:.1f}" y="{top + plot_h + 16}" class="tick" text-anchor="middle">'
                         f'{_tick_text(tick)}</text>')
    parts.append(f'<line x1="{left}" x2="{width - right}" y1="{top + plot_h}" y2="{top + plot_h}" class="axis"/>')
    parts.append(f'<text x="{width - right}" y="{height - 4}" class="tick" text-anchor="end">step</text>')
    for index, (name, points) in enumerate(lines):
        colour = PALETTE[index % len(PALETTE)]
        if len(points) == 1:
            x, y = points[0]
            parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{colour}"><title>{escape(name)}</title>'
                         "</circle>")
        else:
            coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
            parts.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="1.5" '
                         f'data-run="{escape(name)}"><title>{escape(name)}</title></polyline>')
    if len(lines) > 1:
        x = left + 8 * len(title) + 24  # after the title (about 8 px a character at 13 px)
        for index, (name, _) in enumerate(lines):
            colour = PALETTE[index % len(PALETTE)]
            parts.append(f'<rect x="{x}" y="8" width="10" height="10" fill="{colour}"/>'
                         f'<text x="{x + 14}" y="17" class="tick">{escape(name)}</text>')
            x += 24 + 7 * len(name)
    parts.append("</svg>")
    return "".join(parts)


def chart_keys(histories: Sequence[History]) -> list[str]:
    """Every key logged by any run: losses first (in the order first logged), then the
    learning-rate factor and images per second."""
    found = dict.fromkeys(key for history in histories for key in history.keys())
    return [k for k in found if k not in _TRAILING] + [k for k in _TRAILING if k in found]


def curve_charts(histories: Sequence[History]) -> list[str]:
    """One SVG per logged key, each with a line per run."""
    charts = []
    for key in chart_keys(histories):
        chart = line_chart(_TITLES.get(key, key), [(h.label, h.series(key)) for h in histories])
        if chart:
            charts.append(chart)
    return charts


# -- the report section ---------------------------------------------------------------------

def _thumbnail(path: Path, height: int) -> tuple[str, int, int] | None:
    """A sample grid scaled to `height` pixels (never enlarged), as a PNG data URI."""
    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
    except (OSError, ValueError):
        return None
    if image.height > height:
        image = image.resize((max(1, round(image.width * height / image.height)), height), Image.Resampling.LANCZOS)
    return png_data_uri(image), image.width, image.height


def training_html(histories: Sequence[History], samples_per_run: int = 6, thumbnail_height: int = 240) -> str:
    """The report's training section: the curves, then each run's sample grids (before |
    generated | after rows) at up to `samples_per_run` steps spread over its training."""
    if not histories:
        return ""
    parts = ["<h2>Training</h2>",
             '<p class="legend">From each run\'s log.jsonl (means over the log_every steps before each point) '
             "and its samples/ folder.</p>"]
    charts = curve_charts(histories)
    if charts:
        parts.append('<div class="charts">' + "".join(charts) + "</div>")
    for history in histories:
        if not history.samples:
            continue
        figures = []
        for step, path in spread(history.samples, samples_per_run):
            thumb = _thumbnail(path, thumbnail_height)
            if thumb is None:
                continue
            uri, width, height = thumb
            figures.append(f'<figure><img alt="{escape(history.label)} samples at step {step}" width="{width}" '
                           f'height="{height}" src="{uri}"><figcaption>step {step}</figcaption></figure>')
        if figures:
            parts.append(f"<h3>Samples during training: {escape(history.label)}</h3>")
            parts.append('<div class="samples">' + "".join(figures) + "</div>")
    return "\n".join(parts)


def escape(value: Any) -> str:
    """`value` as HTML text or attribute value."""
    return html.escape(str(value), quote=True)


def png_data_uri(image: Image.Image) -> str:
    """A metadata-free PNG of `image` as a data: URI, for pages that must not fetch anything."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(np.asarray(image))).decode("ascii")


__all__ = ["History", "PALETTE", "chart_keys", "curve_charts", "escape", "line_chart", "list_samples",
           "load_histories", "nice_ticks", "png_data_uri", "read_log", "thin", "training_html"]

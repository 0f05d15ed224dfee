"""Image grids: before | each model's output | real after, one row per test image.

Images are matched across folders by relative path without extension, so a model that saved
JPEGs lines up with PNG targets.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, TypeVar

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from svai.data.images import IMAGE_EXTENSIONS, list_images, read_rgb
from svai.errors import SvaiError
from svai.io import Privacy, write_png

logger = logging.getLogger(__name__)

T = TypeVar("T")


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


def spread(items: Sequence[T], k: int) -> list[T]:
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


def save_png(image: Image.Image, path: Path, privacy: Privacy | None = None) -> None:
    """Write a grid as a metadata-free PNG atomically: a crash leaves the old file or the new one.
    `privacy`: that of the photos it shows (`svai.io.Privacy`)."""
    write_png(Path(path), np.asarray(image), privacy)

"""The image "save" gives: before | simulation side by side, stamped, as a PNG with no metadata.

The stamp is drawn into the pixels, so it survives any copy: "Simulation — not a prediction
of the surgical result". The PNG holds its header, pixels and end chunk only (`svai.io.png_bytes`: no
text, time, EXIF, colour profile or physical size), so nothing about the photo, the machine or the
patient travels with it.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from svai.io import png_bytes
from svai.serve.photo import shrink

STAMP = "Simulation — not a prediction of the surgical result"
LABELS = ("Before", "Simulation")
# Each panel's longest side in the export: enough to print, small enough to send.
EXPORT_SIDE = 2048
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)


Font = ImageFont.ImageFont | ImageFont.FreeTypeFont
Colour = tuple[int, int, int]


def _font(size: int) -> Font:
    return ImageFont.load_default(size=size)


def _draw_text(draw: ImageDraw.ImageDraw, x: float, y: float, text: str, font: Font, fill: Colour) -> float:
    """Draw one line and return its width. Pillow's built-in font has no em dash, so each "—"
    is drawn as a bar 0.9 em wide, halfway up the letter x."""
    start = x
    parts = text.split("—")
    size = getattr(font, "size", 12)
    for index, part in enumerate(parts):
        if part:
            draw.text((x, y), part, font=font, fill=fill)
            x += draw.textlength(part, font=font)
        if index < len(parts) - 1:
            letter = draw.textbbox((x, y), "x", font=font)
            middle = letter[1] + 0.45 * (letter[3] - letter[1])
            thickness = max(1.0, size / 14)
            draw.rectangle((x, middle - thickness / 2, x + 0.9 * size, middle + thickness / 2), fill=fill)
            x += 0.9 * size
    return x - start


def _text_width(draw: ImageDraw.ImageDraw, text: str, font: Font) -> float:
    size = getattr(font, "size", 12)
    parts = text.split("—")
    return sum(draw.textlength(part, font=font) for part in parts) + 0.9 * size * (len(parts) - 1)


def side_by_side(before: np.ndarray, after: np.ndarray, longest: int = EXPORT_SIDE,
                 caption: list[str] | None = None) -> np.ndarray:
    """before | simulation with their labels above, the stamp below and under it `caption`,
    one line each (what was simulated): (H, W, 3) uint8.

    before, after: (h, w, 3) uint8 of one size, shrunk so the longest side is at most `longest`.
    """
    caption = caption or []
    if before.shape != after.shape:
        raise ValueError(f"before {before.shape} and after {after.shape} differ")
    before, after = shrink(before, longest), shrink(after, longest)
    height, width = before.shape[:2]
    size = max(14, round(max(width, height) / 30))
    gap = max(4, size // 2)
    font = _font(size)
    label_band, stamp_band = round(size * 1.8), round(size * 2.2)
    caption_font, stamp_font = _font(max(12, round(size * 0.8))), _font(round(size * 1.1))
    line_height = round(max(12, size * 0.8) * 1.35)
    canvas_width = 2 * width + 3 * gap
    # Narrow photos: the caption needs room for its lines whatever the photo's size.
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    needed = max([_text_width(probe, line, caption_font) for line in caption] + [0]) + 2 * gap
    stamp_width = _text_width(probe, STAMP, stamp_font)
    canvas_width = max(canvas_width, round(needed), round(stamp_width + 2 * gap))
    canvas = Image.new("RGB", (canvas_width, height + label_band + stamp_band + gap + line_height * len(caption)),
                       BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for index, (pixels, label) in enumerate(zip((before, after), LABELS)):
        left = gap + index * (width + gap)
        canvas.paste(Image.fromarray(pixels), (left, label_band))
        _draw_text(draw, left, round(size * 0.4), label, font, INK)
    x = max(gap, (canvas.width - stamp_width) / 2)
    _draw_text(draw, x, label_band + height + round(size * 0.5), STAMP, stamp_font, INK)
    top = label_band + height + stamp_band
    for index, line in enumerate(caption):
        _draw_text(draw, gap, top + index * line_height, line, caption_font, INK)
    return np.asarray(canvas, dtype=np.uint8)


def export_png(before: np.ndarray, after: np.ndarray, caption: list[str] | None = None) -> bytes:
    """The stamped before | simulation image (with `caption` lines) as PNG bytes, no metadata."""
    return png_bytes(side_by_side(before, after, caption=caption))


def caption_of(model: str, step: int, settings: dict, date: str) -> list[str]:
    """The lines an export states: model and step, procedures with strengths, intensity,
    composite, and the date (UTC) of the simulation."""
    lines = [f"Model: {model}, step {step}"]
    procedures = settings.get("procedures")
    if procedures is not None:
        ticked = ", ".join(f"{name} {strength:.2f}" for name, strength in procedures.items()) or "none"
        lines.append(f"Procedures: {ticked}")
    if "intensity" in settings:
        lines.append(f"Intensity: {settings['intensity']:.2f}")
    lines.append(f"Composite: {'on' if settings.get('composite') else 'off'}")
    lines.append(f"Simulated: {date.replace('T', ' ')[:16]} UTC")
    return lines


__all__ = ["EXPORT_SIDE", "STAMP", "caption_of", "export_png", "side_by_side"]

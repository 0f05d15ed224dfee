"""The options of `svai prepare`, with their defaults: read by the command (which must start
fast, so this module imports nothing heavy), the Python API and the library alike."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Pillow's own limit warns at ~89 Mpx and raises at twice that; we refuse anything over it
# explicitly so that a decompression bomb is a skipped file, not a warning or a crash.
MAX_PIXELS: int = 16384 * 16384


@dataclass(frozen=True)
class PrepareOptions:
    """Settings of `svai prepare` for real photos (see docs/data.md)."""

    size: int = 512
    pairing: str = "auto"
    pairs_csv: Path | None = None
    order: str = "before-after"
    labels: Path | None = None
    crop: str = "center"
    align: bool = False
    workers: int | None = None
    seed: int = 0
    test_fraction: float = 0.1
    force: bool = False
    max_pixels: int = MAX_PIXELS
    # A folder of procedure regions, `<procedure>/<pair id>.<ext>` (see svai.data.regions).
    regions: Path | None = None
    # Store each pair's face landmarks and draw procedure regions from them (face layer);
    # None: when the face layer can run.
    landmarks: bool | None = None

    def image_settings(self) -> dict:
        """The settings that change output pixels: a change reprocesses every pair.

        `order` is not among them: it only concerns composites, whose fingerprint holds it.
        The face crop frames by landmarks with the face layer, else by skin colour.
        """
        settings: dict = {"size": self.size, "crop": self.crop, "align": self.align}
        if self.crop == "face":
            from svai.face.finder import problem

            settings["framing"] = "landmarks" if problem() is None else "skin"
        return settings


@dataclass(frozen=True)
class SyntheticOptions:
    """Settings of `svai prepare synthetic` (see docs/data.md); `landmarks` as for photos."""

    count: int = 300
    size: int = 128
    seed: int = 0
    test_fraction: float = 0.1
    force: bool = False
    landmarks: bool | None = None

"""Procedure regions given as files: finding, reading and fitting them to a photo.

A folder of regions holds one subfolder per procedure, named like the procedures of the
labels (`eyes`, `nose`, `jaw`, or any name `--labels` adds), and in it one image per photo:

```
REGIONS/eyes/<key>.png      white (grey >= 128) where the eye surgery works, black elsewhere
REGIONS/nose/<key>.jpg
```

The key is the pair id for `svai prepare --regions` (the ids of manifest.csv; a prepared
dataset's own `DATA/train/regions` folder is such a folder), and the input's path relative
to `--input` without its extension for `svai generate --regions`. Keys are compared ignoring
letter case. A region is drawn on the before photo as it is displayed (EXIF rotation
applied); transparency is ignored. It must be known before surgery: the anatomy the procedure
works on, never a difference between a before and an after photo.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from svai.data.images import is_image_file
from svai.data.layout import check_procedure_name
from svai.errors import SvaiError

RegionIndex = dict[str, dict[str, Path]]


def index_regions(folder: Path, option: str = "--regions") -> RegionIndex:
    """procedure -> {key (casefolded): file} for every region image under `folder`.

    A subfolder whose name is not a procedure name, or two files for one key (say
    `a.png` and `a.jpg`), is an error naming them and `option`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SvaiError(f"{option} {folder} is not a folder: give a folder with one subfolder per procedure "
                        "(eyes/, nose/, jaw/ ...)")
    index: RegionIndex = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            procedure = check_procedure_name(sub.name)
        except SvaiError as error:
            raise SvaiError(f"{option} {sub}: {error}") from None
        files: dict[str, Path] = {}
        for path in sorted(sub.rglob("*")):
            relative = path.relative_to(sub)
            if not path.is_file() or not is_image_file(path) or any(p.startswith(".") for p in relative.parts):
                continue
            key = region_key(relative.with_suffix("").as_posix())
            if key in files:
                raise SvaiError(f"{option}: {files[key]} and {path} are both the {procedure} region of "
                                f"{relative.with_suffix('').as_posix()!r}: keep one")
            files[key] = path
        index[procedure] = files
    return index


def region_key(text: str) -> str:
    """The key a region file is looked up by (see `index_regions`)."""
    return text.casefold()


def read_region(path: Path) -> np.ndarray:
    """A region image as (H, W) bool, True where it is white (grey >= 128), EXIF rotation applied.

    An unreadable file is an error naming it.
    """
    try:
        with Image.open(path) as image:
            image.load()
            grey = np.asarray(ImageOps.exif_transpose(image).convert("L"))
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise SvaiError(f"{path}: cannot read this region image ({type(error).__name__}: {error})") from None
    return grey >= 128


def fit_region(region: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w) bool resized to (height, width) bool: bilinear, then thresholded at one half.

    A region drawn on a copy of the photo at another resolution (a thumbnail, say) still
    lands on the same anatomy; its aspect ratio is not checked.
    """
    if region.shape == (height, width):
        return region
    image = Image.fromarray(region.astype(np.uint8) * np.uint8(255))
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR)) >= 128

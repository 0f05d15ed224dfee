"""Writing files safely: atomic replacement, PNG encoding and output-folder checks.

Every stage that writes (prepare, train, generate, evaluate, compare) goes through here, so a
crash leaves either the old file or the new one — never half of one — and an output folder
can never overlap the inputs it was computed from.
"""

from __future__ import annotations

import io
import os
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
from PIL import Image

from svai.errors import SvaiError


def temporary_name(path: Path) -> Path:
    """The hidden sibling a write goes to before it is renamed over `path`."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


@contextmanager
def atomic_open(path: Path) -> Iterator[BinaryIO]:
    """Open a binary stream whose content replaces `path` only when the block ends cleanly.

    The temporary file lives in the same folder (a rename across file systems is not atomic)
    and is removed when the block raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a crash leaves either the old file or the new one."""
    with atomic_open(path) as handle:
        handle.write(data)


def png_bytes(image: np.ndarray) -> bytes:
    """Encode (H, W, 3) or (H, W) uint8 as a PNG with no metadata."""
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"expected uint8 (H, W[, 3]); got {image.dtype} {image.shape}")
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def write_png(path: Path, image: np.ndarray) -> None:
    """Encode `image` (uint8, (H, W[, 3])) as a metadata-free PNG and write it atomically."""
    write_atomic(path, png_bytes(image))


def check_output_folder(inputs: dict[str, Path], output: Path, option: str = "--output") -> None:
    """Refuse an output folder that overlaps any input folder, in either direction.

    `inputs` maps the option that named each input (``--input``) to its path. An output equal
    to an input, inside one, or holding one would let a write replace a file the user gave.
    """
    target = Path(output).resolve()
    if target.exists() and not target.is_dir():
        raise SvaiError(f"{option} {output} is a file: give a folder")
    for name, folder in inputs.items():
        source = Path(folder).resolve()
        if target == source or source in target.parents:
            raise SvaiError(f"{option} {output} is inside {name} {folder}: choose a folder outside the input")
        if target in source.parents:
            raise SvaiError(f"{option} {output} holds {name} {folder}: choose a folder that does not contain the input")

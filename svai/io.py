"""Writing files safely: atomic replacement, PNG encoding and output-folder checks.

Every stage that writes (prepare, train, generate, evaluate, compare) goes through here, so a
crash leaves either the old file or the new one — never half of one — and an output folder
can never overlap the inputs it was computed from.
"""

from __future__ import annotations

import errno
import io
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
from PIL import Image

from svai.errors import SvaiError


# A temporary file or folder ends in `.tmp<pid>` (files) or `-<pid>` after a `.tmp-`/`.old-`
# prefix (checkpoint folders): the pid tells a crashed writer's leftover from a live one's.
_TEMPORARY = re.compile(r"^\.(?:.+\.tmp(?P<pid>\d+)|(?:tmp|old)-.+-(?P<dirpid>\d+))$")

# OS errors that describe the user's machine (permissions, space, names, a file in the way),
# not a bug: the CLI reports them as one line naming the path.
USER_ERRNOS = {
    errno.EACCES: "permission denied: choose a folder you can write to",
    errno.EPERM: "operation not permitted: choose a folder you can write to",
    errno.EROFS: "read-only file system: choose a writable folder",
    errno.ENOSPC: "no space left on the device: free some space or choose another disk",
    errno.EDQUOT: "disk quota exceeded: free some space or choose another disk",
    errno.ENAMETOOLONG: "file name too long: choose a shorter path",
    errno.ENOTDIR: "a file is in the way where a folder is needed: remove it or choose another path",
    errno.EISDIR: "a folder is in the way where a file is needed: remove it or choose another path",
    errno.EEXIST: "a file is in the way: remove it or choose another path",
    errno.ELOOP: "too many symbolic links: check the path",
    errno.EIO: "input/output error: the disk may be failing",
}


def describe_os_error(error: OSError) -> str | None:
    """One line naming the path and the fix for an OS error caused by the machine, else None."""
    hint = USER_ERRNOS.get(error.errno) if error.errno is not None else None
    if hint is None:
        return None
    where = error.filename if error.filename is not None else "a file"
    return f"cannot write {where}: {hint}"


def temporary_name(path: Path) -> Path:
    """The hidden sibling a write goes to before it is renamed over `path`."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def process_alive(pid: int) -> bool:
    """Whether a process with id `pid` exists on this machine (a zombie counts as gone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, but belongs to someone else
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def remove_stale_temporaries(folder: Path, recursive: bool = False) -> list[Path]:
    """Delete temporary files and folders a crashed writer left in `folder`; return them.

    Only names this module (and `svai.checkpoint`) give to temporaries qualify, and only when
    the process that made them is gone, so a concurrent writer's file is never touched.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    walker = folder.rglob(".*") if recursive else folder.glob(".*")
    for path in sorted(walker):
        match = _TEMPORARY.match(path.name)
        if match is None:
            continue
        pid = int(match.group("pid") or match.group("dirpid"))
        if pid != os.getpid() and process_alive(pid):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


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
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # the original error says more than a failed clean-up
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


def check_writable(folder: Path, option: str = "--output") -> None:
    """Make sure `folder` can be created and written to, before any work starts.

    A file in the way, a missing permission, a full disk or a too-long name becomes one
    `SvaiError` naming the option and the path. Creates the folder (as the command would).
    """
    folder = Path(folder)
    probe = folder / f".svai-probe.tmp{os.getpid()}"
    try:
        if folder.exists() and not folder.is_dir():
            raise SvaiError(f"{option} {folder} is a file: give a folder")
        for parent in folder.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise SvaiError(f"{option} {folder}: {parent} is a file, so no folder can be made under it")
                break
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as handle:
            handle.write(b"0")
    except OSError as error:
        hint = USER_ERRNOS.get(error.errno or 0, error.strerror or "cannot be written")
        raise SvaiError(f"{option} {folder}: {hint}") from None
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass
    remove_stale_temporaries(folder)

"""Writing files safely: atomic replacement, PNG encoding, output-folder checks, privacy.

Every stage that writes (prepare, train, generate, evaluate, compare) goes through here, so

- a crash leaves either the old file or the new one — never half of one;
- an output can never land inside what the command reads: every path is resolved (links
  followed) before anything is written, and a symbolic link inside an output folder is
  refused, because svai never writes through a link it did not make;
- files are deleted only when the folder's record of svai's own files (`OwnFiles`) proves
  that svai wrote them;
- what is written from a user's photos is no more readable than those photos (`Privacy`).
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import shutil
import stat
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
from PIL import Image

from svai.errors import SvaiError


# A temporary file or folder ends in `.tmp<pid>` (files) or `-<pid>` after a `.tmp-`/`.old-`
# prefix (checkpoint folders): the pid tells a crashed writer's leftover from a live one's.
_TEMPORARY = re.compile(r"^\.(?:.+\.tmp(?P<pid>\d+)|(?:tmp|old)-.+-(?P<dirpid>\d+))$")

# Longest file name (in bytes) of the common file systems (ext4, APFS, NTFS in UTF-16 units).
NAME_MAX = 255

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
    errno.ELOOP: "a symbolic link is in the way: svai never writes through a link it did not make",
    errno.EIO: "input/output error: the disk may be failing",
}


def describe_os_error(error: OSError) -> str | None:
    """One line naming the path and the fix for an OS error caused by the machine, else None."""
    hint = USER_ERRNOS.get(error.errno) if error.errno is not None else None
    if hint is None:
        return None
    where = error.filename if error.filename is not None else "a file"
    return f"cannot write {where}: {hint}"


def describe_library_error(error: BaseException) -> str | None:
    """One line for what the libraries below svai raise about a file (besides OSError), else None.

    safetensors reports I/O failures (a full disk) as its own `SafetensorError`, zipfile a
    damaged archive as `BadZipFile`, the codecs a file that is not UTF-8 as
    `UnicodeDecodeError`: none of them is an OSError, and none is a bug in svai.
    """
    import zipfile

    if isinstance(error, OSError):
        return describe_os_error(error)
    if type(error).__name__ == "SafetensorError":
        return f"a weights file could not be read or written: {safetensors_reason(error)}"
    if isinstance(error, zipfile.BadZipFile):
        return f"a damaged archive file: {error}; delete it and run the command again"
    if isinstance(error, UnicodeDecodeError):
        return f"a text file is not UTF-8 ({error.reason} at byte {error.start}): save it as UTF-8"
    return None


def safetensors_reason(error: BaseException) -> str:
    """The user's side of a safetensors error: a full disk or a permission, else its first line."""
    text = str(error)
    for code, hint in USER_ERRNOS.items():
        if f"code: {code}," in text or os.strerror(code) in text:
            return hint
    return (text.strip().splitlines() or [type(error).__name__])[0]


def describe_size(size: float) -> str:
    """A byte count for people: 980 bytes, 12 KB, 3.4 MB, 2 GB (powers of 1024)."""
    if size < 1024:
        return f"{int(size)} bytes"
    for unit in ("KB", "MB", "GB", "TB"):
        size /= 1024
        if size < 1024 or unit == "TB":
            return f"{size:.1f} {unit}".replace(".0 ", " ") if size < 10 else f"{size:.0f} {unit}"
    raise AssertionError("unreachable")


# ------------------------------------------------------------------------------------ privacy

def _umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    # Reading the umask means setting it; put it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode an ordinary new file gets here (0o666 less the umask)."""
    return 0o666 & ~_umask()


def default_folder_mode() -> int:
    """The mode an ordinary new folder gets here (0o777 less the umask)."""
    return 0o777 & ~_umask()


_CLASSES = ((0o070, 0o010), (0o007, 0o001))  # (bits, traverse bit) of group, then others


@dataclass(frozen=True)
class Privacy:
    """Who besides the owner may read what svai writes from a user's files.

    `shared` holds the group and other permission bits (folder form: r, w, x) the sources
    allow; a file svai writes gets the umask's mode limited to those bits, a folder likewise.
    `Privacy.of` reads them from a source photo or folder; `a & b` is the stricter of two.
    """

    shared: int = 0o077

    @classmethod
    def of(cls, path: Path, root: Path | None = None) -> "Privacy":
        """The privacy of `path` (a file or folder) as the folders from `root` down to it keep it.

        A file's read bit counts as a folder's r and x; a class that cannot pass one of the
        folders (no x) can read nothing. When a mode cannot be read, owner-only (0600/0700).
        """
        path = Path(path)
        try:
            mode = os.stat(path).st_mode
            bits = mode & 0o077
            if not stat.S_ISDIR(mode):
                bits |= (bits & 0o044) >> 2  # a readable file is reachable as a listed folder is
            chain = []
            if root is not None and Path(root) in path.parents:
                folder, top = path.parent, Path(root)
                chain.append(folder)
                while folder != top:
                    folder = folder.parent
                    chain.append(folder)
            for folder in chain:
                bits &= os.stat(folder).st_mode & 0o077
        except OSError:
            return PRIVATE
        for every, traverse in _CLASSES:
            if not bits & traverse:
                bits &= ~every
        return cls(bits)

    def __and__(self, other: "Privacy") -> "Privacy":
        return Privacy(self.shared & other.shared)

    def restricts(self) -> bool:
        """Whether it keeps a file or folder from someone the umask alone would let read it."""
        return self.file_mode() != default_file_mode() or self.folder_mode() != default_folder_mode()

    def file_mode(self) -> int:
        return default_file_mode() & (0o600 | (self.shared & 0o066))

    def folder_mode(self) -> int:
        return default_folder_mode() & (0o700 | self.shared)


PRIVATE = Privacy(0)
"""Owner only: 0600 files, 0700 folders (what svai uses when it cannot tell)."""

OPEN = Privacy()
"""No source to keep private: the umask alone decides."""


def make_folder(folder: Path, privacy: Privacy | None = None) -> None:
    """Create `folder` and any missing parents, each with `privacy`'s folder mode (the umask's
    without one). Folders that exist are left as they are."""
    folder = Path(folder)
    if folder.is_dir():
        return
    missing = []
    for level in (folder, *folder.parents):
        if level.is_dir():
            break
        missing.append(level)
    for level in reversed(missing):
        try:
            os.mkdir(level, 0o700)
        except FileExistsError:
            if not level.is_dir():
                raise
            continue
        os.chmod(level, (privacy or OPEN).folder_mode())


# ------------------------------------------------------------------------------- atomic writes

def temporary_name(path: Path) -> Path:
    """The hidden sibling a write goes to before it is renamed over `path`.

    A name that would pass the file system's limit (a legal 249-byte name plus the prefix and
    the pid) is replaced by a short one derived from it.
    """
    name = f".{path.name}.tmp{os.getpid()}"
    if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX:
        digest = hashlib.sha256(path.name.encode("utf-8", "surrogateescape")).hexdigest()[:16]
        name = f".svai-{digest}.tmp{os.getpid()}"
    return path.with_name(name)


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
    the process that made them is gone, so a concurrent writer's file is never touched. A
    link is removed as a link: nothing it points at is touched.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir() or folder.is_symlink():
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


def _create_new(path: Path, mode: int) -> int:
    """Open a new file for writing: never through a link, never into an existing file."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        descriptor = os.open(path, flags, 0o600)
    except FileExistsError:
        # A temporary of a dead writer that had this pid; it is ours to replace.
        os.unlink(path)
        descriptor = os.open(path, flags, 0o600)
    os.fchmod(descriptor, mode)
    return descriptor


@contextmanager
def atomic_open(path: Path, privacy: Privacy | None = None) -> Iterator[BinaryIO]:
    """Open a binary stream whose content replaces `path` only when the block ends cleanly.

    The temporary file lives in the same folder (a rename across file systems is not atomic)
    and is removed when the block raises. The file gets `privacy`'s mode (the umask's without
    one); missing folders are made with it too.
    """
    path = Path(path)
    make_folder(path.parent, privacy)
    tmp = temporary_name(path)
    try:
        mode = privacy.file_mode() if privacy is not None else default_file_mode()
        with os.fdopen(_create_new(tmp, mode), "wb") as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # the original error says more than a failed clean-up
        raise


def read_json_object(path: Path) -> dict | None:
    """The JSON object in `path`, or None when the file is missing, unreadable, not JSON, too
    deeply nested or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def write_atomic(path: Path, data: bytes, privacy: Privacy | None = None) -> None:
    """Write `data` to `path` so that a crash leaves either the old file or the new one."""
    with atomic_open(path, privacy) as handle:
        handle.write(data)


def open_append(path: Path) -> BinaryIO:
    """Open a file of svai's own for appending, refusing a link or a file with other names.

    An append writes into the file itself, so a symbolic link, or a hard link to a file of
    the user's, would change that file.
    """
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    descriptor = os.open(path, flags, default_file_mode())
    if os.fstat(descriptor).st_nlink > 1:
        os.close(descriptor)
        raise SvaiError(f"{path} has other names (a hard link): svai only appends to files of its own; "
                        "remove it or choose another folder")
    return os.fdopen(descriptor, "ab")


def png_bytes(image: np.ndarray) -> bytes:
    """Encode (H, W, 3) or (H, W) uint8 as a PNG with no metadata."""
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"expected uint8 (H, W[, 3]); got {image.dtype} {image.shape}")
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def write_png(path: Path, image: np.ndarray, privacy: Privacy | None = None) -> None:
    """Encode `image` (uint8, (H, W[, 3])) as a metadata-free PNG and write it atomically."""
    write_atomic(path, png_bytes(image), privacy)


# ------------------------------------------------------------------------ where outputs may go

def _relation(output: Path, source: Path) -> str | None:
    """How a resolved output path stands to a resolved input: "inside", "holds" or None."""
    if output == source or source in output.parents:
        return "inside"
    if output in source.parents:
        return "holds"
    return None


def _links_under(folder: Path) -> Iterator[Path]:
    """Every symbolic link under `folder` (itself excluded), without following any."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in sorted(entries, key=lambda e: e.name):
        path = Path(entry.path)
        if entry.is_symlink():
            yield path
        elif entry.is_dir(follow_symlinks=False):
            yield from _links_under(path)


def _refuse_links(inputs: dict[str, Path], output: Path, option: str) -> None:
    """Refuse the first symbolic link inside the output folder, naming where it lands."""
    resolved = {name: Path(folder).resolve() for name, folder in inputs.items()}
    for link in _links_under(Path(output)):
        target = link.resolve()
        for name, source in resolved.items():
            if _relation(target, source) is not None:
                raise SvaiError(
                    f"{option} {output}: {link} is a link into {name} {inputs[name]}; svai would write or delete "
                    "there: remove the link or choose another folder")
        raise SvaiError(
            f"{option} {output}: {link} is a symbolic link (to {target}); svai never writes through a link it "
            "did not make: replace it with a real folder or file, or choose another folder")


def check_output_folder(inputs: dict[str, Path], output: Path, option: str = "--output") -> None:
    """Refuse an output folder that overlaps any input, in either direction, or holds links.

    `inputs` maps the option that named each input (``--input``) to its path, a folder or a
    file. Paths are resolved (links followed) first. An output equal to an input, inside one,
    or holding one would let a write replace a file the user gave; a symbolic link inside the
    output would let a write or a delete land wherever it points.
    """
    target = Path(output).resolve()
    if target.exists() and not target.is_dir():
        raise SvaiError(f"{option} {output} is a file: give a folder")
    for name, folder in inputs.items():
        relation = _relation(target, Path(folder).resolve())
        if relation == "inside":
            raise SvaiError(f"{option} {output} is inside {name} {folder}: choose a folder outside the input")
        if relation == "holds":
            raise SvaiError(f"{option} {output} holds {name} {folder}: choose a folder that does not contain the input")
    if target.is_dir():
        _refuse_links(inputs, Path(output), option)


def check_output_file(inputs: dict[str, Path | None], output: Path, option: str) -> None:
    """Refuse an output file that would replace an input, land inside an input folder, or be a link.

    `inputs` maps the option that named each input to a file or folder (None: not given).
    """
    output = Path(output)
    if output.is_symlink():
        raise SvaiError(f"{option} {output} is a symbolic link (to {output.resolve()}); svai never writes through "
                        "a link it did not make: choose another name")
    target = output.resolve()
    if target.is_dir():
        raise SvaiError(f"{option} {output} is a folder: give a file name")
    for name, source in inputs.items():
        if source is None:
            continue
        if _relation(target, Path(source).resolve()) == "inside":
            what = "is" if target == Path(source).resolve() else "is inside"
            raise SvaiError(f"{option} {output} {what} {name} {source}, which this command reads: "
                            "choose a file elsewhere")


def check_writable(folder: Path, option: str = "--output", privacy: Privacy | None = None) -> None:
    """Make sure `folder` can be created and written to, before any work starts.

    A file in the way, a missing permission, a full disk or a too-long name becomes one
    `SvaiError` naming the option and the path. Creates the folder (as the command would),
    with `privacy`'s mode.
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
        make_folder(folder, privacy)
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


# ------------------------------------------------------------------------- svai's own files

OWN_FILES = ".svai-files.json"
# The lock file of a folder svai is writing (`svai.runlock`).
LOCK_FILE = ".svai.lock"
PLANNED = (0, -1, -1)  # the entry of a path svai is about to write (no file has inode 0)


class OwnFiles:
    """The record of what svai wrote under one output folder, so it deletes nothing else.

    Each entry is a path relative to the folder with the inode, size and modification time
    svai's write gave it. A file counts as svai's own while it has that size and time (so a
    copy that keeps times, `cp -a` or a backup, still does) and is not a link; a folder while
    it is the same folder. A file the user put in its place, or anything never recorded, is
    never deleted. A path recorded before its write (`plan`) counts while it is a regular file
    or folder: what svai writes by worker processes, or appends to. The record lives in the
    folder itself (`.svai-files.json`) and is saved with `save()`.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.path = self.root / OWN_FILES
        self.entries: dict[str, tuple[int, int, int]] = self._read()

    def _read(self) -> dict[str, tuple[int, int, int]]:
        data = read_json_object(self.path)
        files = data.get("files") if data is not None else None
        if not isinstance(files, dict):
            return {}
        return {str(k): (v[0], v[1], v[2]) for k, v in files.items()
                if isinstance(v, list) and len(v) == 3 and all(type(x) is int for x in v)}

    def _key(self, path: Path) -> str | None:
        try:
            return Path(path).relative_to(self.root).as_posix()
        except ValueError:
            return None

    def note(self, *paths: Path) -> None:
        """Record files or folders svai has just written (a link or a missing path is not)."""
        for path in paths:
            key = self._key(path)
            if key is None or key == ".":
                continue
            try:
                info = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode):
                self.entries[key] = (info.st_ino, info.st_size, info.st_mtime_ns)

    def note_with_folders(self, *paths: Path) -> None:
        """Record files svai wrote and the folders between them and the root it made for them."""
        for path in paths:
            path = Path(path)
            self.note(path)
            for folder in path.parents:
                if folder == self.root or self._key(folder) is None:
                    break
                self.note(folder)

    def plan(self, *paths: Path) -> None:
        """Record files svai is about to write (by worker processes, say), before they exist:
        until `note` gives one its inode, a regular file at that exact path counts as svai's.
        A crash between the write and the next save of the record then leaves nothing that
        cannot be cleaned up."""
        for path in paths:
            key = self._key(path)
            if key is not None and key != ".":
                self.entries[key] = PLANNED

    def forget(self, path: Path) -> None:
        key = self._key(path)
        if key is not None:
            self.entries.pop(key, None)

    def moved(self, source: Path, target: Path) -> None:
        """Carry the record of a file svai renamed."""
        self.forget(source)
        self.note(target)

    def owns(self, path: Path) -> bool:
        key = self._key(path)
        if key is None or key not in self.entries:
            return False
        try:
            info = os.lstat(path)
        except OSError:
            return False
        if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
            return False
        inode, size, mtime = self.entries[key]
        if (inode, size, mtime) == PLANNED:
            return True
        if stat.S_ISDIR(info.st_mode):
            return info.st_ino == inode  # a folder is only ever removed empty
        return (info.st_size, info.st_mtime_ns) == (size, mtime)

    def remove(self, path: Path) -> bool:
        """Delete a file svai recorded; anything else stays. Whether it was deleted."""
        path = Path(path)
        if not self.owns(path) or path.is_dir():
            return False
        path.unlink()
        self.forget(path)
        return True

    def remove_under(self, folder: Path) -> list[Path]:
        """Delete every recorded file under `folder` (or `folder` itself), then the recorded
        folders left empty; return what was kept because svai cannot prove it wrote it."""
        folder = Path(folder)
        kept: list[Path] = []
        if folder.is_symlink() or not folder.exists():
            if folder.is_symlink():
                kept.append(folder)
            return kept
        if not folder.is_dir():
            return [] if self.remove(folder) else [folder]
        for current, dirs, files in os.walk(folder, topdown=False):
            for name in files:
                path = Path(current) / name
                if not self.remove(path):
                    kept.append(path)
            for name in dirs:
                path = Path(current) / name
                if path.is_symlink():
                    kept.append(path)
        for current, dirs, _ in os.walk(folder, topdown=False):
            for name in dirs:
                self._remove_folder(Path(current) / name)
        self._remove_folder(folder)
        return kept

    def _remove_folder(self, path: Path) -> None:
        if self.owns(path) and path.is_dir():
            try:
                path.rmdir()
            except OSError:
                return  # not empty: it holds something that is not svai's
            self.forget(path)

    def foreign(self, names: list[str] | None = None) -> list[Path]:
        """Entries at the top of the folder, or under `names` in it, that svai did not record
        (the record and the lock excepted), for refusing before anything is deleted."""
        found: list[Path] = []
        tops = [self.root / n for n in names] if names is not None else sorted(self.root.iterdir())
        for top in tops:
            if top.name in (OWN_FILES, LOCK_FILE) and top.parent == self.root:
                continue
            if not (top.exists() or top.is_symlink()):
                continue
            if not self.owns(top):
                found.append(top)
                continue
            if top.is_dir():
                for current, dirs, files in os.walk(top):
                    for name in [*dirs, *files]:
                        if not self.owns(Path(current) / name):
                            found.append(Path(current) / name)
        return found

    def save(self) -> None:
        """Write the record (an empty record is no file at all, so a folder can go empty)."""
        if not self.entries:
            if self.path.is_file() and not self.path.is_symlink():
                self.path.unlink()
            return
        data = {"version": 1, "files": {k: list(v) for k, v in sorted(self.entries.items())}}
        # It names files made from photos, and nobody but svai needs to read it.
        write_atomic(self.path, (json.dumps(data, indent=0) + "\n").encode(), PRIVATE)

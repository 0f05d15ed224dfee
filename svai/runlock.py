"""One writer per folder: the lock a training run or a prepare holds on its output folder.

The lock is a file `FOLDER/.svai.lock` holding the owner's pid and command line, locked with
`fcntl.flock`. The kernel releases a flock when its process dies however it dies (SIGKILL
included), so a lock is never held by a dead process; the pid in the file only names the
holder in messages and tells the next writer that it is taking over from a crashed one.
Where flock does not exist, the file is created exclusively and a holder whose pid is gone
counts as stale.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
from pathlib import Path
from types import TracebackType

from svai.errors import SvaiError
from svai.io import LOCK_FILE, USER_ERRNOS, Privacy, make_folder, process_alive, read_json_object

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _describe(holder: dict) -> str:
    pid = holder.get("pid", "?")
    command = holder.get("command")
    return f"process {pid}" + (f" ({command})" if command else "")


def _read_holder(path: Path) -> dict:
    return read_json_object(path) or {}


class RunLock:
    """An exclusive lock on `folder` for as long as this object holds it.

    `acquire()` creates the folder when needed; a second writer gets a `SvaiError` naming the
    process that holds the lock. Use as a context manager, or call `release()`. As a context
    manager, a folder it created is removed again when the work fails before writing anything.
    """

    def __init__(self, folder: Path, what: str = "run folder", privacy: Privacy | None = None) -> None:
        self.folder = Path(folder)
        # The mode of the folder when the lock creates it (the privacy of what goes in it).
        self.privacy = privacy
        self.path = self.folder / LOCK_FILE
        self.what = what
        self._fd: int | None = None
        self.took_over: dict | None = None
        self.created = False

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "RunLock":
        if self._fd is not None:
            return self
        try:
            self.created = not self.folder.exists()
            make_folder(self.folder, self.privacy)
            fd = self._lock_flock() if fcntl is not None else self._lock_exclusive()
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise self._link() from None
            hint = USER_ERRNOS.get(error.errno or 0, error.strerror or "cannot be written")
            raise SvaiError(f"{self.folder}: {hint}") from None
        self._fd = fd
        record = {"pid": os.getpid(), "command": " ".join(["svai", *sys.argv[1:]])[:300]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        if self.took_over:
            log.warning("%s: took over the lock left by %s, which is no longer running",
                        self.folder, _describe(self.took_over))
        return self

    def _busy(self, holder: dict) -> SvaiError:
        return SvaiError(
            f"{self.folder} is in use by {_describe(holder)}: wait for it to finish or stop it "
            f"(one writer per {self.what})"
        )

    def _link(self) -> SvaiError:
        return SvaiError(f"{self.path} is a symbolic link: svai never writes through a link it did not make; "
                         "remove it (it is not svai's lock)")

    def _open(self, flags: int) -> int:
        """Open the lock file, never through a link, and never a file that has other names
        (a hard link to a file of the user's, which the lock would truncate)."""
        fd = os.open(self.path, flags | _NOFOLLOW, 0o600)
        if os.fstat(fd).st_nlink > 1:
            os.close(fd)
            raise SvaiError(f"{self.path} has other names (a hard link): it is not svai's lock; remove it")
        return fd

    def _lock_flock(self) -> int:
        while True:
            fd = self._open(os.O_RDWR | os.O_CREAT)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._busy(_read_holder(self.path)) from None
            # The holder before us may have unlinked the file between our open and our lock:
            # then we hold a lock on a file nobody else can see, so start over.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                holder = _read_holder(self.path)
                if holder.get("pid") not in (None, os.getpid()):
                    self.took_over = holder
                return fd
            os.close(fd)

    def _lock_exclusive(self) -> int:
        for _ in range(2):
            try:
                return self._open(os.O_RDWR | os.O_CREAT | os.O_EXCL)
            except FileExistsError:
                holder = _read_holder(self.path)
                pid = holder.get("pid")
                if isinstance(pid, int) and process_alive(pid):
                    raise self._busy(holder) from None
                self.took_over = holder
                self.path.unlink(missing_ok=True)
        raise self._busy(_read_holder(self.path))

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            # Unlink while still locked, so nobody can lock the old file after we let go.
            self.path.unlink(missing_ok=True)
        except OSError:
            pass
        os.close(fd)

    def __del__(self) -> None:
        # A lock object dropped without release (an exception in a notebook) lets go with it.
        self.release()

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.release()
        if kind is not None and self.created and self.folder.is_dir() and not any(self.folder.iterdir()):
            self.folder.rmdir()  # the work failed before writing anything: leave no empty folder behind


def lock_holder(folder: Path) -> dict | None:
    """Who holds the lock on `folder` now (pid, command), or None when nobody does."""
    path = Path(folder) / LOCK_FILE
    if not path.is_file():
        return None
    if fcntl is None:
        holder = _read_holder(path)
        return holder if isinstance(holder.get("pid"), int) and process_alive(holder["pid"]) else None
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_holder(path) or {"pid": "?"}
    finally:
        os.close(fd)
    return None


__all__ = ["RunLock", "LOCK_FILE", "lock_holder"]

"""One writer per folder: the run lock."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from svai.errors import SvaiError
from svai.runlock import LOCK_FILE, RunLock, lock_holder


def test_a_second_writer_is_refused_naming_the_holder(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    with RunLock(folder):
        assert lock_holder(folder)["pid"] == os.getpid()
        with pytest.raises(SvaiError, match=f"in use by process {os.getpid()}") as error:
            RunLock(folder).acquire()
        assert "\n" not in str(error.value)
    assert not (folder / LOCK_FILE).exists() and lock_holder(folder) is None
    with RunLock(folder):  # free again once released
        pass


def test_another_process_holding_the_lock_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    code = ("import sys, time; from svai.runlock import RunLock; lock = RunLock(sys.argv[1]).acquire(); "
            "print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(SvaiError, match=f"process {holder.pid}"):
            RunLock(folder).acquire()
    finally:
        holder.kill()
        holder.wait()
    # The kernel dropped the dead holder's lock; its file is taken over with a notice.
    with RunLock(folder) as lock:
        assert lock.took_over is not None and lock.took_over["pid"] == holder.pid


def test_a_stale_lock_file_is_taken_over_with_a_notice(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (folder / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "command": "svai train"}))
    with caplog.at_level(logging.WARNING, logger="svai.runlock"):
        with RunLock(folder):
            assert json.loads((folder / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert any(f"process {dead.pid}" in r.getMessage() and "no longer running" in r.getMessage()
               for r in caplog.records)


def test_the_lock_cannot_be_made_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(SvaiError, match="file"):
        RunLock(tmp_path / "file" / "run").acquire()


def test_releasing_twice_is_harmless(tmp_path: Path) -> None:
    lock = RunLock(tmp_path).acquire()
    lock.release()
    lock.release()
    assert not lock.held
    started = time.monotonic()
    RunLock(tmp_path).acquire().release()
    assert time.monotonic() - started < 1


def test_a_lock_file_that_is_a_link_or_has_other_names_is_refused(tmp_path: Path) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("mine")
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / ".svai.lock").symlink_to(precious)
    with pytest.raises(SvaiError, match="symbolic link"):
        RunLock(folder).acquire()
    (folder / ".svai.lock").unlink()
    os.link(precious, folder / ".svai.lock")
    with pytest.raises(SvaiError, match="hard link"):
        RunLock(folder).acquire()
    assert precious.read_text() == "mine"

"""Ctrl-C and SIGTERM as a polite stop request, shared by the long-running stages.

Training and prepare both stop at the next safe point (after a step, after a pair), write
what is done and say how to continue; a second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def stop_signals() -> Iterator[dict[str, Any]]:
    """Turn the first SIGINT/SIGTERM into a stop request; a second SIGINT interrupts at once.

    Yields a dict whose "signal" entry holds the number of the first signal received, or None.
    """
    flag: dict[str, Any] = {"signal": None}
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: Any) -> None:
        if flag["signal"] is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag["signal"] = signum

    try:
        for sig in STOP_SIGNALS:
            previous[sig] = signal.signal(sig, handler)
    except ValueError:
        previous.clear()  # not the main thread: signals stay with the caller
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt as Ctrl-C does, so clean-up code
    (`finally`, `except KeyboardInterrupt`) runs for both; outside it, SIGTERM is as before."""
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: signals stay with the caller
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def worker_setup(parent: int) -> None:
    """Worker-process initialiser: leave stopping to `parent`, and die with it.

    Ctrl-C reaches the whole process group, but only the parent decides how to stop (it
    ends its workers itself), so workers ignore SIGINT. A parent killed outright (SIGKILL,
    out of memory) cannot end them, so each worker watches it and exits when it is gone.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(parent,), name="svai-parent-watch", daemon=True).start()


def _exit_with(parent: int) -> None:
    from svai.io import process_alive

    while process_alive(parent):
        time.sleep(0.5)
    os._exit(1)


__all__ = ["stop_signals", "worker_setup", "STOP_SIGNALS"]

"""How many worker processes a stage may start (data loading, prepare): a bound every
option that asks for workers is checked against, so no value can fork without end."""

from __future__ import annotations

import os

# Worker processes are bounded by the CPUs, but a shared config asking for a few more than a
# small machine has (the examples ask for 4) still runs.
MIN_WORKER_CAP = 8


def available_cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def max_workers() -> int:
    """The most worker processes any stage starts: the CPUs, or `MIN_WORKER_CAP`."""
    return max(available_cpus(), MIN_WORKER_CAP)

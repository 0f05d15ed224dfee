"""One intra-op thread for a block of torch work."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one intra-op thread for the block, then restore the previous count.

    For small tensors and small linear systems a thread pool only adds hand-over costs, and on
    a busy machine those dominate (measured under load: a 128 × 128 × 3 copy took 11.7 ms on two
    threads and 10 µs on one); one thread also makes results independent of how many workers
    share the machine.
    """
    import torch  # here, so that importing this module stays cheap for the data layer

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)

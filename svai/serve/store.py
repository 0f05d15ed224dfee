"""Photos and results held in memory for the page, a bounded number of each.

Nothing here touches the disk: the oldest entry is dropped when a new one would exceed the
limit, and everything goes with the process. A page that asks for a dropped entry is told
to upload its photo again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, TypeVar

T = TypeVar("T")


class Recent(Generic[T]):
    """At most `limit` values by key, the least recently used dropped first; thread-safe."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1; got {limit}")
        self.limit = limit
        self._items: OrderedDict[str, T] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, key: str, value: T) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.limit:
                self._items.popitem(last=False)

    def get(self, key: str) -> T | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


__all__ = ["Recent"]

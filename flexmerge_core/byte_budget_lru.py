"""A least-recently-used store bounded in bytes: what every in-memory cache of the engine keeps its items in.

Why one: the merger's memo of merged groups (deployment/memo.py), the row cache (deployment/prepared_rows.py)
and DARE's drop masks (algorithms/drop_masks.py) all need "evict the oldest until it fits"; one tested
container keeps the rule the same everywhere. Not thread-safe by itself: callers that share one hold a lock.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Hashable, Optional


class ByteBudgetLRU:
    """get/put by key; holds at most `budget` bytes (an item larger than the budget is never kept).

    `bytes` is what it holds now and `peak` the most it ever held, so callers and tests can check the bound.
    """

    def __init__(self, budget: int):
        self.budget = int(budget)
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self.bytes = self.peak = self.evictions = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable) -> Optional[Any]:
        found = self._items.get(key)
        if found is None:
            return None
        self._items.move_to_end(key)
        return found[0]

    def put(self, key: Hashable, value: Any, nbytes: int) -> None:
        if key in self._items:
            self.bytes -= self._items.pop(key)[1]
        if nbytes > self.budget:
            return
        self.reserve(nbytes)
        self._items[key] = (value, nbytes)
        self.bytes += nbytes
        self.peak = max(self.peak, self.bytes)

    def reserve(self, nbytes: int) -> None:
        """Evict least recently used items until `nbytes` more would fit (so a caller about to build
        that much frees the old first, instead of holding both at its peak)."""
        while self._items and self.bytes + nbytes > self.budget:
            _, (_, dropped) = self._items.popitem(last=False)
            self.bytes -= dropped
            self.evictions += 1

"""The in-memory memo of merged groups: least recently used first out, within a byte budget.

Why a budget: a curve over every size memoises 2M-1 groups per block, and a worker running a sweep of
many algorithms would keep every one of them; unbounded, that is what ends a long sweep or a dashboard
session in the OOM killer. The on-disk group cache sits behind the memo, so an evicted group costs a
file read when it comes back, never a wrong or missing result.
Budget: $FLEXMERGE_MEMO_BYTES (bytes, or with a K/M/G suffix), else a quarter of the memory this
process can still get (machine.available_memory), else 1 GiB when that cannot be read.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any, Hashable, Optional

from flexmerge_core.machine import available_memory, parse_bytes

MEMO_ENV = "FLEXMERGE_MEMO_BYTES"
_FALLBACK_BYTES = 1 << 30


def default_memo_bytes() -> int:
    return budget_from_env(MEMO_ENV, 4)


def budget_from_env(env: str, share: int) -> int:
    """$env (bytes, or with a K/M/G suffix), else 1/share of the memory this process can still get,
    else 1 GiB / share when that cannot be read."""
    chosen = os.environ.get(env, "").strip()
    if chosen:
        return parse_bytes(chosen, env)
    available = available_memory()
    return (available if available is not None else 4 * _FALLBACK_BYTES) // share


def tensors_bytes(*collections) -> int:
    """Bytes of the tensors in dicts of tensors, single tensors or None."""
    total = 0
    for item in collections:
        tensors = item.values() if isinstance(item, dict) else ([] if item is None else [item])
        total += sum(t.numel() * t.element_size() for t in tensors)
    return total


class ByteBudgetLRU:
    """get/put by key; holds at most `budget` bytes (an item larger than the budget is never kept).

    `bytes` is what it holds now and `peak` the most it ever held, so callers and tests can check the bound.
    """

    def __init__(self, budget: Optional[int] = None):
        self.budget = default_memo_bytes() if budget is None else int(budget)
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

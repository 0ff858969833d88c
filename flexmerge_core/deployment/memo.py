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

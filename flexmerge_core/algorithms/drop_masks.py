"""DARE's drop masks, drawn once per process and kept bit-packed (1 bit per entry).

Why: a dare_ties plan reads the zoo three times (the trim thresholds' 2 passes, the similarity pass)
and the merges once more; redrawing one uniform per entry each time (~3.4 ns/entry, one core) was
most of DARE's cost. Unpacking a stored mask (numpy.unpackbits) costs ~0.03 ns/entry, so every read
after the first is nearly free; the first draws each tensor's masks on DRAW_THREADS threads (prefetch).
Masks come as bools (drop_mask), as integer and-masks (keep_bits: the drop without masked_fill_) or as
a row's kept entries (kept_entries: what dare_ties' thresholds rank). A ViT-B-32 task's masks take
11 MB (330 MB for 30 tasks).
A mask depends only on (seed, task id, tensor name, p, shape): not on the zoo or its values, so
the key is exactly that, and two zoos with the same task ids and tensor names share masks (they
would draw the same ones anyway). The store is least-recently-used and bounded in bytes:
$FLEXMERGE_DROP_MASK_BYTES (bytes or with a K/M/G suffix; 0 stores nothing), else an eighth of
the memory available when it is first used. Evicted masks are drawn again, identically.
Thread-safe: the app may preprocess blocks from several threads.
"""
from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Sequence

import numpy as np
import torch

from flexmerge_core.byte_budget_lru import ByteBudgetLRU
from flexmerge_core.machine import available_memory, parse_bytes

BUDGET_ENV = "FLEXMERGE_DROP_MASK_BYTES"
MEMORY_SHARE = 8              # default budget: 1/MEMORY_SHARE of the available memory
UNKNOWN_MEMORY_BUDGET = 1 << 30
DRAW_THREADS = min(8, os.cpu_count() or 1)  # masks drawn at once by prefetch (one generator per thread)


def drop_generator(seed: int, task: int, name: str) -> torch.Generator:
    """The generator of one (seed, task, tensor): seeded by SHA-256, never the salted hash()."""
    digest = hashlib.sha256(f"dare/{seed}/{task}/{name}".encode()).digest()
    return torch.Generator(device="cpu").manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def draw_drop_mask(seed: int, task: int, name: str, p: float, shape) -> torch.Tensor:
    """True where the entry is dropped: its uniform CPU draw is < p."""
    return torch.rand(tuple(shape), generator=drop_generator(seed, task, name)) < p


class DropMaskStore:
    """Bit-packed drop masks, least recently used evicted first once `budget` bytes are exceeded."""

    def __init__(self, budget: int):
        self.budget = int(budget)
        self._masks = ByteBudgetLRU(self.budget)
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return self._masks.bytes

    def __len__(self) -> int:
        return len(self._masks)

    def prefetch(self, seed: int, tasks: Sequence[int], name: str, p: float, shape) -> None:
        """Draws the masks of `tasks` for one tensor that are not stored yet, DRAW_THREADS at a time, and
        stores them. Each generator is sequential (one core, ~3.4 ns an entry: 9 s for 30 ViT-B-32
        tasks), so the first pass of dare_ties over a zoo ran on one core. Nothing when the store cannot
        hold all of them (callers then draw each mask as they need it)."""
        shape = tuple(int(s) for s in shape)
        keys = [(int(seed), int(task), name, float(p), shape) for task in tasks]
        if DRAW_THREADS < 2 or len(keys) * -(-int(np.prod(shape, dtype=np.int64)) // 8) > self.budget:
            return
        with self._lock:
            missing = [key for key in keys if self._masks.get(key) is None]
        if len(missing) > 1:
            packed = _draw_pool().map(lambda key: np.packbits(draw_drop_mask(*key).numpy().reshape(-1)), missing)
            with self._lock:
                for key, bits in zip(missing, packed):
                    self._masks.put(key, bits, bits.nbytes)

    def drop_mask(self, seed: int, task: int, name: str, p: float, shape) -> torch.Tensor:
        """The bool CPU mask of `shape` (True: drop), as draw_drop_mask gives it."""
        shape = tuple(int(s) for s in shape)
        return torch.from_numpy(self._drop_bytes(seed, task, name, p, shape).view(np.bool_)).view(shape)

    def keep_bits(self, seed: int, task: int, name: str, p: float, shape, dtype: torch.dtype) -> torch.Tensor:
        """The mask as an integer tensor of `shape` and `dtype`: all bits set where the entry is kept,
        0 where it is dropped. And-ed with the bits of same-sized floats, it turns the dropped entries
        into +0.0 and leaves the kept ones bit for bit (5x faster than masked_fill_ with the bool mask)."""
        shape = tuple(int(s) for s in shape)
        return torch.from_numpy(self._drop_bytes(seed, task, name, p, shape)).to(dtype).sub_(1).view(shape)

    def kept_entries(self, seed: int, task: int, name: str, p: float, row: torch.Tensor) -> torch.Tensor:
        """The entries of `row` (task `task`'s tensor `name`) the mask keeps, flattened in order, in new
        memory (numpy's compress on the CPU: its boolean indexing is 3.5x slower on a random 10%)."""
        keep = self._drop_bytes(seed, task, name, p, tuple(int(s) for s in row.shape)) == 0
        if row.device.type == "cpu":
            return torch.from_numpy(np.compress(keep, row.reshape(-1).numpy()))
        return row.reshape(-1)[torch.from_numpy(keep).to(row.device)]

    def _drop_bytes(self, seed: int, task: int, name: str, p: float, shape: tuple) -> np.ndarray:
        """The mask flattened, one uint8 per entry (1: drop): unpacked from the store, else drawn and stored."""
        key = (int(seed), int(task), name, float(p), shape)
        with self._lock:
            packed = self._masks.get(key)
        if packed is not None:
            return np.unpackbits(packed, count=int(np.prod(shape, dtype=np.int64)))
        mask = draw_drop_mask(seed, task, name, p, shape).numpy().reshape(-1)
        packed = np.packbits(mask)
        with self._lock:   # another thread may have drawn it meanwhile: the same bits, stored once
            self._masks.put(key, packed, packed.nbytes)
        return mask.view(np.uint8)


def default_budget() -> int:
    text = os.environ.get(BUDGET_ENV, "").strip()
    if text == "0":
        return 0
    if text:
        return parse_bytes(text, BUDGET_ENV)
    available = available_memory()
    return UNKNOWN_MEMORY_BUDGET if available is None else available // MEMORY_SHARE


_shared: Optional[DropMaskStore] = None
_shared_lock = threading.Lock()
_pool: Optional[ThreadPoolExecutor] = None


def _draw_pool() -> ThreadPoolExecutor:
    global _pool
    with _shared_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(DRAW_THREADS, thread_name_prefix="dare-draws")
        return _pool


def shared_drop_masks() -> DropMaskStore:
    """The process's store (its budget read on first use)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = DropMaskStore(default_budget())
        return _shared

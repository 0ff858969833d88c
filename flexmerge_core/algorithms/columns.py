"""Column slices: run a merge's element-wise steps on cache-sized pieces of the group matrix.

Why: a group is a [g, d] matrix (566 MB for 30 ViT-B-32 MLP blocks). Written as whole-tensor torch
ops, every step of a merge writes and re-reads a [g, d] temporary through main memory, so a merge of
ten steps costs ten memory passes (TIES took 26x the time of averaging at g = 30). Taking all g rows
of a slice of columns (~4 MiB) at a time keeps the temporaries in the cache: the group is read
from memory once per pass of the algorithm, and per-column results are exact (columns never mix).
On CUDA the slices are much larger: launches cost more there than memory traffic.
"""
from __future__ import annotations

import math
import threading
from typing import Iterator

import torch

# g * c values: 4 MiB of fp32, L3-resident. 1 MiB (L2) was no faster on one thread, and every op on a
# slice is a parallel region: with more runnable threads than cores, a region waits for its descheduled
# helper thread, so fewer, larger slices (TIES at g = 30, 2 threads, load 12 on 2 cores: 4.0 s at
# 1 MiB, 2.1 s at 4 MiB, 0.25 s on 1 thread) suffer less from oversubscription.
CPU_SLICE_ELEMENTS = 1 << 20
CUDA_SLICE_ELEMENTS = 1 << 26  # bounds the temporaries (256 MiB of fp32), few launches


def as_rows(t: torch.Tensor) -> torch.Tensor:
    """[g, *shape] -> [g, d] (a view for the contiguous stacks the merges receive)."""
    return t.reshape(t.shape[0], -1)


def column_slices(rows: torch.Tensor, cpu_share: int = 1) -> Iterator[slice]:
    """Slices of the columns of a [g, d] matrix, each a cache-sized piece of all g rows (on CPU,
    1 / cpu_share of the usual size: for merges that keep several temporaries per slice)."""
    budget = CUDA_SLICE_ELEMENTS if rows.device.type == "cuda" else max(CPU_SLICE_ELEMENTS // cpu_share, 1)
    step = max(1, budget // max(rows.shape[0], 1))
    for start in range(0, rows.shape[1], step):
        yield slice(start, start + step)


def positive_(values: torch.Tensor) -> torch.Tensor:
    """values > 0 as a bool tensor, clobbering `values` (a scratch slice).

    Why: torch's float-to-bool comparison kernels run ~5x slower on CPU than a clamp plus a cast
    (0.046 s against 0.015 s over a g = 30 block). Exact: a difference a - b is > 0 exactly when
    a > b, so callers compare by subtracting first.
    """
    return values.clamp_min_(0).bool()


class Scratch:
    """Buffers for a merge's per-slice temporaries, reused from slice to slice.

    Why: a fresh [g, c] tensor per op and slice is fresh memory each time, which the allocator maps
    and the kernel zero-fills page by page: that cost more than the op itself in PCB (out-of-place
    square: 0.56 ms a slice, in place 0.14 ms).
    """

    def __init__(self, dtype: torch.dtype, device: torch.device):
        self.dtype, self.device = dtype, device
        self._buffers, self._views = {}, {}  # key -> its memory; key -> the last view handed out

    def __call__(self, key, like: torch.Tensor) -> torch.Tensor:
        """A contiguous tensor shaped like `like`, the same memory on every call with this key."""
        return self.empty(key, like.shape)

    def empty(self, key, shape) -> torch.Tensor:
        """A contiguous tensor of that shape (uninitialised), the same memory on every call with this key."""
        view = self._views.get(key)
        if view is not None and view.shape == shape:  # the usual case: the slice before had the same shape
            return view
        numel = math.prod(shape)
        buffer = self._buffers.get(key)
        if buffer is None or buffer.numel() < numel:
            buffer = self._buffers[key] = torch.empty(numel, dtype=self.dtype, device=self.device)
        view = self._views[key] = buffer[:numel].view(shape)
        return view


_THREAD = threading.local()


def thread_scratch(dtype: torch.dtype, device) -> Scratch:
    """This thread's Scratch for (dtype, device), kept from merge to merge.

    Why: a merge's block-sized work buffers (PCB: column sums and stripe maxima, 50 MB at g = 30 on a
    ViT-B-32 MLP block) were fresh memory in every merge, page-faulted and zero-filled on first touch
    (~2 ms per 19 MB); a spectrum merges ~1,500 groups. Held until the thread ends: the largest
    buffers one merge of the thread asked for under each key.
    """
    pool = _THREAD.__dict__.setdefault("scratch", {})
    key = (dtype, torch.device(device))
    if key not in pool:
        pool[key] = Scratch(dtype, key[1])
    return pool[key]

"""One float32 buffer reused by a streaming pass for every tensor (or block of tensors) it reads.

Why: a tensor of new memory costs a page fault per 4 KiB page the first time it is written, and each
stack of task vectors a pass reads and drops is new memory (glibc maps blocks over 32 MiB afresh).
Reading the 30 fp16 ViT-B-32 tasks of the spectrum benchmark once took 2.6 M faults (10.6 GB of
float32) and 2.7x the CPU time of reading into memory kept from the previous tensor.
"""
from __future__ import annotations

import math

import torch


class ReusedBuffer:
    """views({key: shape}) -> {key: contiguous float32 tensor}, laid out one after another in memory kept
    between calls (grown when too small). Each call's tensors are overwritten by the next call's."""

    def __init__(self):
        self._flat = torch.empty(0)

    def views(self, shapes: dict) -> dict:
        sizes = {key: math.prod(shape) for key, shape in shapes.items()}
        total = sum(sizes.values())
        if self._flat.numel() < total:
            self._flat = torch.empty(0)   # the old buffer goes before the larger one comes
            self._flat = torch.empty(total, dtype=torch.float32)
        out, start = {}, 0
        for key, shape in shapes.items():
            out[key] = self._flat[start:start + sizes[key]].view(shape)
            start += sizes[key]
        return out

    def view(self, shape: tuple) -> torch.Tensor:
        return self.views({None: shape})[None]

    def holds(self, tensor: torch.Tensor) -> bool:
        """Whether `tensor` is (a view of) this buffer's memory."""
        return self._flat.numel() > 0 and tensor.untyped_storage().data_ptr() == self._flat.untyped_storage().data_ptr()

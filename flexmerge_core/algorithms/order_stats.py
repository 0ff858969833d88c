"""Exact per-task order statistics over a whole model, streamed block by block.

Why: TIES' trim threshold and PCB's quantiles/thresholds are order statistics of a task's WHOLE
model vector (10 GB for ViT-B-32 x 30 tasks), so sorting it in memory is not an option.
Method: radix selection on the float bit patterns. A float's bits are mapped to an integer key with
the same order; each pass over the stream histograms one 16-bit digit of the keys (65536 buckets per
task and wanted position) among the values that share the digits already fixed, which fixes the next
digit. float32 takes 2 passes, float64 4 passes (plus nothing else), the result is exact (no
interpolation, no sampling) and memory is M * K * 65536 counters whatever the model size.
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch

DIGIT_BITS = 16
BUCKETS = 1 << DIGIT_BITS
CHUNK = 1 << 24  # elements (all rows together) processed at once: bounds the int64 key temporaries


def _float_to_key(x: torch.Tensor) -> torch.Tensor:
    """int64 keys ordered like the floats (the map is its own inverse, see _key_to_float)."""
    if x.dtype == torch.float32:
        bits = x.contiguous().view(torch.int32).to(torch.int64)
        return bits ^ ((bits >> 63) & 0x7FFFFFFF)
    bits = x.to(torch.float64).contiguous().view(torch.int64)
    return bits ^ ((bits >> 63) & 0x7FFFFFFFFFFFFFFF)


def _key_to_float(key: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype == torch.float32:
        bits = key ^ ((key >> 63) & 0x7FFFFFFF)
        return bits.to(torch.int32).view(torch.float32)
    bits = key ^ ((key >> 63) & 0x7FFFFFFFFFFFFFFF)
    return bits.view(torch.float64)


def _chunks(stream: Callable[[], Iterator[torch.Tensor]]) -> Iterator[torch.Tensor]:
    for rows in stream():
        rows = rows.reshape(rows.shape[0], -1)
        columns = max(1, CHUNK // rows.shape[0])
        for start in range(0, rows.shape[1], columns):
            yield rows[:, start:start + columns]


def streamed_order_statistics(stream: Callable[[], Iterator[torch.Tensor]],
                              positions_of: Callable[[int], torch.Tensor]) -> torch.Tensor:
    """Per-row order statistics of the concatenation of all chunks stream() yields.

    stream(): a fresh iterator of tensors [M, ...] (row k = task k's values, same dtype throughout).
    positions_of(d): given the number d of values per row, a LongTensor [M, K] (or [K], the same for
    every row) of 0-indexed sorted positions wanted per row. Returns the values at those positions, [M, K], in the stream's dtype.
    """
    dtype, device, rows, total = None, None, None, 0
    for chunk in _chunks(stream):
        dtype, device, rows = chunk.dtype, chunk.device, chunk.shape[0]
        total += chunk.shape[1]
    if dtype is None or total == 0:
        raise ValueError("order statistics of an empty stream")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"order statistics need float32/float64 values, got {dtype}")
    rank = positions_of(total).to(device=device, dtype=torch.int64)
    rank = (rank.expand(rows, -1) if rank.ndim == 1 else rank).clone()
    if rank.ndim != 2 or rank.shape[0] != rows or (rank < 0).any() or (rank >= total).any():
        raise ValueError(f"positions must be [{rows}, K] within [0, {total})")
    wanted = rank.shape[1]
    nbits = 32 if dtype == torch.float32 else 64
    prefix = torch.zeros_like(rank)  # the key digits fixed so far (signed, arithmetic shifts)
    row_offset = (torch.arange(rows, device=device) * BUCKETS).unsqueeze(1)
    for shift in range(nbits - DIGIT_BITS, -1, -DIGIT_BITS):
        top = shift == nbits - DIGIT_BITS
        counts = torch.zeros(wanted, rows * BUCKETS, dtype=torch.int64, device=device)
        for chunk in _chunks(stream):
            keys = _float_to_key(chunk)
            digit = (keys >> shift) + BUCKETS // 2 if top else (keys >> shift) & (BUCKETS - 1)
            index = digit + row_offset
            if top:
                counts += torch.bincount(index.reshape(-1), minlength=rows * BUCKETS)
                continue
            high = keys >> (shift + DIGIT_BITS)
            for k in range(wanted):
                hit = high == prefix[:, k:k + 1]
                counts[k] += torch.bincount(index[hit], minlength=rows * BUCKETS)
        cum = counts.view(wanted, rows, BUCKETS).permute(1, 0, 2).cumsum(-1)  # [M, K, B]
        chosen = torch.searchsorted(cum, rank.unsqueeze(-1), right=True).squeeze(-1)
        below = torch.where(chosen > 0, cum.gather(-1, (chosen - 1).clamp(min=0).unsqueeze(-1)).squeeze(-1),
                            torch.zeros_like(rank))
        rank -= below
        digit_value = chosen - BUCKETS // 2 if top else chosen
        prefix = (prefix << DIGIT_BITS) | digit_value if not top else digit_value
    return _key_to_float(prefix, dtype)

"""Exact per-task order statistics over a whole model, streamed block by block.

Why: TIES' trim threshold and PCB's quantiles/thresholds are order statistics of a task's WHOLE
model vector (10 GB for ViT-B-32 x 30 tasks), so sorting it in memory is not an option.
Method: radix selection on the float bit patterns. A float's bits are mapped to an integer key with
the same order (int32 for float32, int64 for float64). Pass 1 counts the values and histograms each
row's top 16 key bits (65536 buckets per row; of magnitudes, whose sign bit is always 0, the 16 bits
below it), which fixes the bucket of every wanted position. Each further pass reads the stream once
for all (row, position) pairs: where the chosen buckets hold at most CANDIDATES keys together (the
TIES threshold's bucket: ~0.1% of a ViT-B-32 task vector) it keeps those keys and selects exactly
among them; a larger bucket (an all-equal row) is narrowed by a histogram of its next 16 bits
instead. A bucket that starts at key 0 (+0.0, or 0 of a magnitude) is searched without its zeros,
which are counted as the bucket's size minus the keys found: DARE drops 90% of each row to +0.0, so
the bucket of a dare_ties threshold that falls among them holds ~80M zeros per ViT-B-32 task and
~no other key. So float32 takes 2 passes, float64 2 to 4. The result is exact (no interpolation, no
sampling; -0.0 sorts before +0.0) and memory is M * K * 65536 counters, a staging buffer of
M * STAGE keys and at most CANDIDATES keys whatever the model size.
Cost model, per value and pass: its key (one integer op for magnitudes, three for signed values)
written into a cache-resident piece of at most STAGE keys of one row; then pass 1 shifts it and
bincounts it (~0.5 ns a key, 1.9 ns when 90% of the keys are equal: hence SparseRows), a search pass
compares it with its row's bucket bounds and numpy selects the few inside (torch's masked_select and
nonzero took 3-20x longer). The old code cut [M, 1M / M] chunks, so each row's bincount covered ~35K
keys and allocating and adding its 65536-bucket histogram cost more than the counting.
Measured, 30 rows of 14.2M float32 magnitudes in memory, both passes, CPU time on 2 shared cores:
1.9-2.4 ns a value (the old code: 6.9-10.7 ns); the thresholds of TIES over the 30-task fp16 ViT-B-32
zoo now cost little besides the zoo's two reads (see ties.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch

DIGIT_BITS = 16
BUCKETS = 1 << DIGIT_BITS
STAGE = 1 << 18  # keys per row staged before they are counted or searched (per-call costs vs. cache)
CANDIDATES = 1 << 24  # keys in the chosen buckets (all rows and positions together) kept for exact selection


@dataclass(frozen=True)
class SparseRows:
    """A stream item of M rows given by some of their values: values[r] (1-D) and zeros[r] more +0.0
    entries not listed (each row's len(values[r]) + zeros[r] is the same for all rows of the item).
    DARE's dropped rows are 90% +0.0: listing only the entries it keeps saves writing those zeros,
    keying them and counting them one by one (a bincount of 90% equal keys: 1.9 ns a key, 0.5 else)."""

    values: list
    zeros: list


class _KeySpace:
    """Integer keys ordered like the floats of one dtype (like their magnitudes when absolute)."""

    def __init__(self, dtype: torch.dtype, absolute: bool):
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"order statistics need float32/float64 values, got {dtype}")
        self.dtype, self.absolute = dtype, absolute
        self.int_dtype = torch.int32 if dtype == torch.float32 else torch.int64
        self.sign_shift = torch.finfo(dtype).bits - 1
        self.low = (1 << self.sign_shift) - 1  # every bit but the sign
        self.key_bits = self.sign_shift if absolute else self.sign_shift + 1  # bits a key varies in
        self.max_key = self.low

    def write(self, x: torch.Tensor, out: torch.Tensor) -> None:
        """out = the keys of x (same shape; out may be a strided view)."""
        bits = x.view(self.int_dtype)
        if self.absolute:
            torch.bitwise_and(bits, self.low, out=out)  # the sign cleared: non-negative floats order like their bits
        else:  # negatives: all but the sign flipped
            torch.bitwise_right_shift(bits, self.sign_shift, out=out)
            out.bitwise_and_(self.low).bitwise_xor_(bits)

    def to_float(self, key: torch.Tensor) -> torch.Tensor:
        """The inverse of write (the same bits flip back)."""
        bits = key.to(self.int_dtype)
        return ((bits >> self.sign_shift) & self.low).bitwise_xor_(bits).view(self.dtype)


def _pieces(stream: Callable[[], Iterator], absolute: bool) -> Iterator[tuple]:
    """(key space, row, keys, zeros) covering every value of stream() once: keys of at most STAGE values
    of one row, plus `zeros` further +0.0 values of that row that a SparseRows item did not list (order
    is irrelevant to order statistics). Rows of STAGE / 4 values or more are keyed piece by piece into
    one small buffer (it stays in cache); shorter ones (biases, norms) are gathered into a
    [M, STAGE / 4] staging buffer first, so no piece is so short that a 65536-bucket bincount costs more
    than its keys. The pieces live in reused buffers: use each before drawing the next."""
    space, fill = None, 0
    for chunk in stream():
        sparse = isinstance(chunk, SparseRows)
        rows = [v.reshape(-1) for v in chunk.values] if sparse else chunk.reshape(chunk.shape[0], -1)
        if space is None:
            space = _KeySpace(rows[0].dtype, absolute)
            piece = torch.empty(STAGE, dtype=space.int_dtype, device=rows[0].device)
            staged = torch.empty(len(rows), STAGE // 4, dtype=space.int_dtype, device=rows[0].device)
        dtypes = {v.dtype for v in rows} if sparse else {rows.dtype}
        if dtypes != {space.dtype} or len(rows) != staged.shape[0]:
            raise ValueError(f"order statistics: a chunk of {len(rows)} rows of {sorted(map(str, dtypes))} after "
                             f"{staged.shape[0]} rows of {space.dtype}")
        if sparse:
            for r, (values, zeros) in enumerate(zip(rows, chunk.zeros)):
                yield from _row_pieces(space, piece, r, values, int(zeros))
        elif rows.shape[1] >= staged.shape[1]:
            for r in range(rows.shape[0]):
                yield from _row_pieces(space, piece, r, rows[r], 0)
        else:
            if fill + rows.shape[1] > staged.shape[1]:
                yield from ((space, r, staged[r, :fill], 0) for r in range(staged.shape[0]))
                fill = 0
            space.write(rows, staged[:, fill:fill + rows.shape[1]])
            fill += rows.shape[1]
    if fill:
        yield from ((space, r, staged[r, :fill], 0) for r in range(staged.shape[0]))


def _row_pieces(space: _KeySpace, piece: torch.Tensor, r: int, values: torch.Tensor, zeros: int) -> Iterator[tuple]:
    """One row's values keyed into `piece` in near-equal parts of at most STAGE (zeros ride on the first)."""
    width = values.numel()
    step = -(-width // max(1, -(-width // STAGE))) if width else 1
    for start in range(0, max(width, 1), step):
        keys = piece[:min(step, width - start)]
        space.write(values[start:start + step], keys)
        yield space, r, keys, zeros if start == 0 else 0


def _choose(counts: torch.Tensor, rank: torch.Tensor) -> tuple:
    """Per (row, position): the bucket holding the rank-th value, the rank within it, and its count."""
    cum = counts.cumsum(-1)  # [..., B]
    chosen = torch.searchsorted(cum, rank.unsqueeze(-1), right=True)
    size = counts.gather(-1, chosen)
    return chosen.squeeze(-1), (rank.unsqueeze(-1) - cum.gather(-1, chosen) + size).squeeze(-1), size.squeeze(-1)


def streamed_order_statistics(stream: Callable[[], Iterator[torch.Tensor]],
                              positions_of: Callable[[int], torch.Tensor], absolute: bool = False) -> torch.Tensor:
    """Per-row order statistics of the concatenation of all chunks stream() yields.

    stream(): a fresh iterator of tensors [M, ...] (row k = task k's values, same dtype throughout).
    positions_of(d): given the number d of values per row, a LongTensor [M, K] (or [K], the same for
    every row) of 0-indexed sorted positions wanted per row. absolute: order |values| instead (as if
    stream yielded .abs(), without that whole-tensor pass). Returns the values at those positions,
    [M, K], in the stream's dtype.
    """
    space, total, counts = None, 0, []
    for space, row, keys, zeros in _pieces(stream, absolute):  # pass 1: the count and the top-digit histograms
        if row == len(counts):
            counts.append(torch.zeros(BUCKETS, dtype=torch.int64, device=keys.device))
        if row == 0:
            total += keys.numel() + zeros
        keys.bitwise_right_shift_(space.key_bits - DIGIT_BITS)
        if not absolute:
            keys.add_(BUCKETS // 2)
        counts[row] += torch.bincount(keys, minlength=BUCKETS)
        counts[row][0 if absolute else BUCKETS // 2] += zeros  # the bucket of key 0
    if space is None or total == 0:
        raise ValueError("order statistics of an empty stream")
    counts, shift = torch.stack(counts), space.key_bits - DIGIT_BITS
    rows, device = counts.shape[0], counts.device
    rank = positions_of(total).to(dtype=torch.int64)
    rank = (rank.expand(rows, -1) if rank.ndim == 1 else rank).contiguous()
    if rank.ndim != 2 or rank.shape[0] != rows or (rank < 0).any() or (rank >= total).any():
        raise ValueError(f"positions must be [{rows}, K] within [0, {total})")
    wanted = rank.shape[1]
    chosen, rank, size = _choose(counts.unsqueeze(1).expand(-1, wanted, -1), rank)
    first = {"prefix": (chosen - (0 if absolute else BUCKETS // 2)).tolist(), "rank": rank.tolist(),
             "size": size.tolist()}
    # per open (row, position): [key >> shift of its bucket, shift, rank within the bucket, bucket size]
    open_ = {(r, p): [first["prefix"][r][p], shift, first["rank"][r][p], first["size"][r][p]]
             for r in range(rows) for p in range(wanted)}
    result = torch.zeros(rows, wanted, dtype=torch.int64)
    hopeless = set()  # zero buckets whose other keys overflowed CANDIDATES once: narrowed instead
    while open_:  # one pass: select among small buckets, narrow the others
        collect = _smallest(open_)
        hopeful = {pair for pair, (prefix, *_) in open_.items()
                   if prefix == 0 and pair not in collect and pair not in hopeless}
        narrow = [pair for pair in open_ if pair not in collect and pair not in hopeful]
        room = CANDIDATES - sum(open_[pair][3] for pair in collect)
        kept, histograms, overflowed = _refine_pass(stream, space, open_, collect, hopeful, narrow, room)
        hopeless |= overflowed
        for pair, keys in kept.items():
            prefix, _, rank_in, size_in = open_.pop(pair)
            result[pair] = _select(keys, rank_in, size_in, prefix)
        for pair, histogram in histograms.items():
            prefix, shift_in, rank_in, _ = open_[pair]
            digit = min(DIGIT_BITS, shift_in)
            chosen, rank_in, size_in = (int(v) for v in _choose(histogram.cpu(), torch.tensor(rank_in)))
            prefix, shift_in = (prefix << digit) | chosen, shift_in - digit
            if shift_in == 0:
                result[pair] = prefix
                del open_[pair]
            else:
                open_[pair] = [prefix, shift_in, rank_in, size_in]
    return space.to_float(result.to(device))


def _select(keys: torch.Tensor, rank: int, size: int, prefix: int) -> int:
    """The rank-th key of a bucket of `size` keys: `keys`, plus size - len(keys) zeros when the bucket
    starts at key 0 (those are not kept; they are its smallest keys)."""
    zeros = size - keys.numel()
    if zeros < 0 or (zeros and prefix != 0):
        raise RuntimeError(f"order statistics: the stream changed between passes ({keys.numel()} of {size} keys found)")
    if rank < zeros:
        return 0
    return int(keys.kthvalue(rank - zeros + 1).values)


def _smallest(open_: dict) -> set:
    """The open (row, position) pairs with the smallest buckets that hold CANDIDATES keys at most together."""
    picked, spent = set(), 0
    for pair in sorted(open_, key=lambda pair: open_[pair][3]):
        spent += open_[pair][3]
        if spent > CANDIDATES:
            break
        picked.add(pair)
    return picked


def _between(row: torch.Tensor, low: int, high: int) -> torch.Tensor:
    """The keys of a 1-D row with low <= key <= high (numpy's boolean selection on the CPU)."""
    if row.device.type == "cpu":
        values = row.numpy()
        return torch.from_numpy(values[(values >= low) & (values <= high)])
    return row[(row >= low) & (row <= high)]


def _refine_pass(stream, space: _KeySpace, open_: dict, collect: set, hopeful: set, narrow: list,
                 room: int) -> tuple:
    """One pass over the keys k with k >> shift == prefix of each open (row, position) pair. Returns
    the keys of `collect` pairs, and of `hopeful` ones (buckets from key 0) all but 0 while those stay
    within `room` keys together (else they are `overflowed` and dropped), {pair: keys}; and for
    `narrow` pairs the histogram of their next bits, {pair: counts [2^digit]}."""
    bounds = {}  # pair -> (lowest, highest key kept)
    for pair in (*collect, *hopeful):
        prefix, shift = open_[pair][:2]
        low = prefix << shift
        bounds[pair] = (max(low, 1) if pair in hopeful else low, min(low + (1 << shift) - 1, space.max_key))
    searched, narrowed = {}, {}
    for r, p in bounds:
        searched.setdefault(r, []).append(p)
    for r, p in narrow:
        narrowed.setdefault(r, []).append(p)
    kept = {pair: [] for pair in bounds}
    counts = {}
    spent = 0
    for _, r, keys, zeros in _pieces(stream, space.absolute):
        for p in searched.get(r, ()):
            if (r, p) in kept:
                found = _between(keys, *bounds[r, p])
                kept[r, p].append(found)
                spent += found.numel() if (r, p) in hopeful else 0
        if spent > room:  # every hopeful pair narrows next time instead
            for pair in hopeful:
                kept.pop(pair, None)
            spent = 0
        for p in narrowed.get(r, ()):
            prefix, shift = open_[r, p][:2]
            digit = min(DIGIT_BITS, shift)
            among = (keys >> shift) != prefix
            digits = (keys >> (shift - digit)).bitwise_and_((1 << digit) - 1).masked_fill_(among, 1 << digit)
            histogram = torch.bincount(digits, minlength=(1 << digit) + 1)[:1 << digit]
            histogram[0] += zeros if prefix == 0 else 0  # unlisted zeros: key 0, in the bucket of prefix 0
            counts[r, p] = histogram if (r, p) not in counts else counts[r, p] + histogram
    overflowed = {pair for pair in hopeful if pair not in kept}
    empty = torch.empty(0, dtype=space.int_dtype)
    return {pair: torch.cat(parts).cpu() if parts else empty for pair, parts in kept.items()}, counts, overflowed

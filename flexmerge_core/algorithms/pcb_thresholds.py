"""PCB's global pass: each task's clamp bounds and score threshold over its whole model, in two reads.

What it finds (ALGORITHMS.md, pcb), per task k over its whole model vector (all blocks concatenated,
d values): low_k, high_k = its |x| at sorted positions int(d q) and int(d (1 - q)) - 1; with them P =
intra * inter at g = M; threshold_k = P at sorted position int(d (1 - keep)) and max_k = max P.
Read 1, per tensor in cache-sized column slices: |x| into two StreamedExtremes (the clamp bounds lie
near either end: the 9k most extreme of 88M values per task for ViT-B-32), every SAMPLE_STRIDE-th
column of the tensor kept as a sample, and each block's max |X * S| (it picks tanh's series in read 2,
as the whole-block code did: P is bit-identical to it). Read 2: P slice by slice, its row max, and the
threshold by IntervalSelection between the bounds the sample's own P predicts (6 standard deviations
of the sample's rank either side: 0.38% of the entries, 60 MB kept for 30 ViT-B-32 tasks). A clamp
bound deeper than the extremes kept (row_selection.CAP, or twice the bound's depth as the model
grows, when its values come in an unlucky order) or a threshold outside its bounds falls back to the
radix selection of order_stats.py (two more reads each), so the result is exact.
Slices are whole multiples of ALIGN columns: every entry takes exp2's vector path, as in one
whole-block call (the scalar tail rounds differently).
Cost, 30-task fp16 ViT-B-32 zoo, CPU of 2 threads on a shared machine: 22-24 s (the four-read route:
141 s, peak RSS 3.9 GB -> 1.3 GB): the two reads ~7 s, P ~5 s, the clamp bounds' extremes ~2.5 s, the
threshold's counts and kept entries ~4 s (mostly gathering stripes: a kept entry usually has its own).
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch

from flexmerge_core.algorithms.columns import Scratch
from flexmerge_core.algorithms.order_stats import streamed_order_statistics
from flexmerge_core.algorithms.pcb_scores import Scores, clamp_positions, work_dtype
from flexmerge_core.algorithms.row_selection import IntervalSelection, StreamedExtremes

SAMPLE_STRIDE = 97  # a prime: no alignment with rows of 768 or 3072; 0.9M sampled values per ViT-B-32 task
CPU_SLICE = 1 << 20  # values per slice, all rows together (4 MiB of float32: L2/L3-resident)
CUDA_SLICE = 1 << 26
ALIGN = 64  # slice widths: whole AVX-512 double-vectors of float32

TensorStream = Callable[[], Iterator[list]]  # per block, its task vectors [M, n] in the work dtype


def _slices(X: torch.Tensor) -> Iterator[torch.Tensor]:
    budget = CUDA_SLICE if X.device.type == "cuda" else CPU_SLICE
    step = max(ALIGN, budget // X.shape[0] // ALIGN * ALIGN)
    for start in range(0, X.shape[1], step):
        yield X[:, start:start + step]


def global_thresholds(stream: TensorStream, q: float, keep: float) -> tuple:
    """(threshold [M], maximum [M]) of each task's global P, exact."""
    def depth(n: int) -> int:  # the rank of the deeper clamp bound from its end, were the model n values
        first, last = clamp_positions(n, q)
        return max(first + 1, n - last)

    extremes, sample, block_bounds, d = None, [], [], 0
    for tensors in stream():  # read 1
        bound = None
        for X in tensors:
            if extremes is None:
                extremes = tuple(StreamedExtremes(X.shape[0], largest, depth) for largest in (False, True))
                scratch = Scratch(X.dtype, X.device)
            d += X.shape[1]
            sample.append(X[:, ::SAMPLE_STRIDE].clone())
            for x in _slices(X):
                magnitude = torch.abs(x, out=scratch("magnitude", x))
                for side in extremes:
                    side.update(magnitude)
                # max |X * S| = max over columns of |S| * the column's max |x| (rounding is monotone)
                found = magnitude.amax(dim=0).mul_(x.sum(dim=0).abs_()).max()
                bound = found if bound is None else torch.maximum(bound, found)
        block_bounds.append(float(bound))
    M = extremes[0].cut.shape[0]
    positions = clamp_positions(d, q)
    low = extremes[0].select(torch.full((M,), positions[0] + 1))
    high = extremes[1].select(torch.full((M,), d - positions[1]))
    if low is None or high is None:
        bounds = streamed_order_statistics(lambda: (X for tensors in stream() for X in tensors),
                                           lambda n: torch.tensor(clamp_positions(n, q)), absolute=True)
        low, high = bounds[:, 0], bounds[:, 1]
    scores = Scores.of_group(low.unsqueeze(1), high.unsqueeze(1), M)

    sample = torch.cat(sample, dim=1)
    rank = min(int(d * (1 - keep)), d - 1)
    selection = IntervalSelection.predicted(scores.of(sample, sample.sum(dim=0)), rank / d)
    del sample
    maximum = None

    def all_scores():  # read 2; yields each slice's P in a reused buffer
        for tensors, bound in zip(stream(), block_bounds):
            for X in tensors:
                for x in _slices(X):
                    yield scores.of(x, x.sum(dim=0), bound, scratch)

    for P in all_scores():
        found = P.amax(dim=1)
        maximum = found if maximum is None else torch.maximum(maximum, found)
        selection.update(P, scratch)
    threshold = selection.select(torch.full((M,), rank))
    if threshold is None:
        threshold = streamed_order_statistics(all_scores, lambda n: torch.tensor([rank]))[:, 0]
    return threshold, maximum

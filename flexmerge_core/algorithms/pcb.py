"""pcb (Parameter Competition Balancing) with per-task thresholds from one global pass.

For a group matrix X (g x d, the block flattened): A = |X| clamped per row to its quantiles
[q, 1-q] (q = 1e-4); intra = exp(g * minmax_row(A)^2); inter = tanh(X * sum_k X_k); P = intra*inter.
Global pass (prepare): the same P with all M tasks over the whole model gives, per task,
threshold_k = its sorted P at position int(d*(1-keep)) and max_k. In the group,
scale_k = minmax over the block of clamp(P_k, threshold_k, max_k), and the output is
lam * sum_k sign(X_k) A_k scale_k / max(sum_k scale_k, 1e-12).
Quantiles are order statistics (no interpolation): positions int(q*(d-1)) and d-1-int(q*(d-1)) of
the sorted row. All whole-model order statistics are exact (streamed radix selection).
Zero denominators: a constant row has minmax 0 everywhere; the final sum of scales is floored at 1e-12.
Arithmetic is in the input's float dtype (>= fp32), in float64 for g > 80 where exp(g) would overflow fp32.
"""
from __future__ import annotations

import torch

from flexmerge_core.algorithms.base import HyperParam, MergeAlgorithm, MergeResult, flatten_rows, unflatten_row
from flexmerge_core.algorithms.order_stats import streamed_order_statistics

KEEP = HyperParam("keep", 0.1, float, 0.0, 1.0, low_inclusive=False,
                  help="top fraction of each task's global PCB scores that survives (0.1 vision, 0.2 language)")
LAMBDA = HyperParam("lam", 1.0, float, 0.0, 10.0, help="scaling of the merged vector")
QUANTILE = HyperParam("clamp_quantile", 1e-4, float, 0.0, 0.5, high_inclusive=False,
                      help="magnitudes are clamped per row to the [q, 1-q] quantiles")
FP32_SAFE_GROUP = 80  # exp(g) stays finite in float32 up to g = 88


def work_dtype(g: int, dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if g > FP32_SAFE_GROUP else dtype


def quantile_positions(d: int, q: float) -> list:
    low = int(q * (d - 1))
    return [low, d - 1 - low]


def minmax(values: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """(values - low) / (high - low), 0 where high == low."""
    span = high - low
    safe = torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, (values - low) / safe, torch.zeros_like(values))


def competition_scores(X: torch.Tensor, column_sum: torch.Tensor, q_low, q_high, g: int):
    """(A, P): clamped magnitudes and the balanced competition scores of rows X."""
    A = torch.minimum(torch.maximum(X.abs(), q_low), q_high)
    intra = torch.exp(g * minmax(A, q_low, q_high) ** 2)
    inter = torch.tanh(X * column_sum)
    return A, intra * inter


class Pcb(MergeAlgorithm):
    name = "pcb"
    params = (KEEP, LAMBDA, QUANTILE)

    def __init__(self, **overrides):
        super().__init__(**overrides)
        self._threshold = self._maximum = None  # [M] each, set by prepare

    @property
    def has_preprocessing(self) -> bool:
        return True

    @property
    def similarity_needs_prepare(self) -> bool:
        return False  # the thresholds only weight the merge; similarity uses the raw vectors

    def prepare(self, stream):
        q = self._hp["clamp_quantile"]

        def rows():
            for block in stream():
                X = flatten_rows(self._input_vectors(block, None))
                yield X.to(work_dtype(X.shape[0], X.dtype))

        magnitudes = lambda: (X.abs() for X in rows())  # noqa: E731
        bounds = streamed_order_statistics(magnitudes, lambda d: torch.tensor(quantile_positions(d, q)))

        def scores():
            for X in rows():
                b = bounds.to(X.device)
                yield competition_scores(X, X.sum(dim=0), b[:, :1], b[:, 1:], X.shape[0])[1]

        keep = self._hp["keep"]
        found = streamed_order_statistics(
            scores, lambda d: torch.tensor([min(int(d * (1 - keep)), d - 1), d - 1]))
        self._threshold, self._maximum = found[:, 0].cpu(), found[:, 1].cpu()

    def _merge(self, block, members):
        if self._threshold is None:
            raise RuntimeError("pcb: call prepare() over the whole model before merge()")
        rows = flatten_rows(block)
        out_dtype, g, d = rows.dtype, rows.shape[0], rows.shape[1]
        X = rows.to(work_dtype(g, rows.dtype))
        low, _ = quantile_positions(d, self._hp["clamp_quantile"])
        magnitude = X.abs()  # the (low+1)-th smallest and largest: the two quantiles, no full sort
        q_low = magnitude.topk(low + 1, dim=1, largest=False).values[:, low:low + 1]
        q_high = magnitude.topk(low + 1, dim=1, largest=True).values[:, low:low + 1]
        A, P = competition_scores(X, X.sum(dim=0), q_low, q_high, g)
        index = torch.tensor(members)
        threshold = self._threshold[index].to(X.device, X.dtype).unsqueeze(1)
        clamped = torch.minimum(torch.maximum(P, threshold), self._maximum[index].to(X.device, X.dtype).unsqueeze(1))
        scale = minmax(clamped, clamped.min(dim=1, keepdim=True).values, clamped.max(dim=1, keepdim=True).values)
        merged = (torch.sign(X) * A * scale).sum(dim=0) / scale.sum(dim=0).clamp(min=1e-12)
        merged = (self._hp["lam"] * merged).to(out_dtype)
        return MergeResult(unified=unflatten_row(merged, block))

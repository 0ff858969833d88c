"""PCB's element-wise importance P = intra * inter, shared by its global pass and its group merge.

intra = exp(g * minmax_row(A)^2) with A = |X| clamped per row to [low, high]; inter = tanh(X * S), S the
column sums. Both passes compute P with the same ops in the same order, so the global pass's scores are
the merge's formula at g = M (and bit-identical to the whole-block code they replaced wherever slices
are whole multiples of the vector width: no entry takes the scalar tail of exp2).
"""
from __future__ import annotations

import functools
import math

import torch

FP32_SAFE_GROUP = 80  # exp(g) stays finite in float32 up to g = 88
TANH_CAP = 20.0  # tanh is 1 in float64 from here on; capping keeps expm1(2 x) finite
TANH_SERIES = (1.0, -1 / 3, 2 / 15, -17 / 315, 62 / 2835, -1382 / 155925)  # tanh(x) = x * sum_k c_k x^2k


def work_dtype(g: int, dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if g > FP32_SAFE_GROUP else dtype


def clamp_positions(d: int, q: float) -> tuple:
    """Sorted positions of a row's clamp bounds, as the released code indexes them (no interpolation)."""
    return int(d * q), max(int(d * (1 - q)) - 1, 0)


def unit_scale(low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """1 / (high - low) per row, 0 where high <= low: (v - low) * it is minmax with its zero guard."""
    span = high - low
    return torch.where(span > 0, 1.0 / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(span))


@functools.lru_cache(maxsize=1024)
def series_terms(bound: float, dtype: torch.dtype):
    """How many terms of tanh's Taylor series are exact to a quarter ulp up to |x| = bound (None: > 5).

    The series alternates with falling terms there, so the first term left out bounds the error."""
    eps = torch.finfo(dtype).eps / 4
    for terms in range(1, len(TANH_SERIES)):
        if abs(TANH_SERIES[terms]) * bound ** (2 * terms) <= eps:
            return terms
    return None


def tanh_(values: torch.Tensor, bound=None, scratch=()) -> torch.Tensor:
    """tanh in place; bound: max |values| if known (else it is measured); scratch: up to two tensors
    shaped like values for the polynomial (else it allocates them).

    Small arguments (|x| <= 0.28 in float32, the usual case for task vectors: x = X * sum_k X_k) take
    the shortest exact Taylor polynomial: 4-10 cache-speed ops instead of expm1 (about 3x the time of
    averaging at g = 30 for expm1 alone). Larger ones: e / (e + 2), e = expm1(2 values), 2.3x faster
    than torch.tanh on CPU and as exact near 0 (float32: 1.7e-7 relative at most); inputs are capped at
    20, where tanh is 1 in float64, so e stays finite.
    """
    if bound is None:
        bound = float(values.abs().max()) if values.numel() else 0.0
    terms = series_terms(bound, values.dtype)
    if terms is None:
        e = values.clamp_max_(TANH_CAP).mul_(2.0).expm1_()
        return e.div_(e + 2.0)
    if terms == 1:
        return values
    z, p = (tuple(scratch) + (None, None))[:2]
    one = torch.ones((), dtype=values.dtype, device=values.device)
    if terms == 2:  # addcmul: one op for 1 + c x^2
        return values.mul_(torch.addcmul(one, values, values, value=TANH_SERIES[1], out=p))
    z = torch.square(values, out=z)
    p = torch.add(one * TANH_SERIES[terms - 2], z, alpha=TANH_SERIES[terms - 1], out=p)
    for c in reversed(TANH_SERIES[:terms - 2]):
        torch.addcmul(one * c, z, p, out=p)
    return values.mul_(p)


class Scores:
    """P = intra * inter for one group, given each row's clamp bounds (low, high: [g, 1], or any shape
    broadcasting against the entries scored).

    intra = exp(g * minmax(A)^2) is computed as exp2(((A - low) * root)^2), root = sqrt(g log2 e) /
    (high - low): torch's exp2 takes a quarter of its exp's time on CPU (AVX-512, float32), as exact.
    """

    def __init__(self, low: torch.Tensor, high: torch.Tensor, root: torch.Tensor):
        self.low, self.high, self.root = low, high, root

    @classmethod
    def of_group(cls, low: torch.Tensor, high: torch.Tensor, g: int) -> "Scores":
        return cls(low, high, unit_scale(low, high) * math.sqrt(g / math.log(2.0)))

    def rows(self, index: torch.Tensor) -> "Scores":
        """The same scores for entries of rows `index` ([K], each entry's row)."""
        return Scores(self.low[index], self.high[index], self.root[index])

    def magnitudes(self, X: torch.Tensor, out=None) -> torch.Tensor:
        """A: |X| clamped per row to [low, high] (clamp_min_/clamp_max_: tensor-bound clamp is slow on CPU)."""
        return torch.abs(X, out=out).clamp_min_(self.low).clamp_max_(self.high)

    def intra(self, A: torch.Tensor, out=None) -> torch.Tensor:
        return torch.sub(A, self.low, out=out).mul_(self.root).square_().exp2_()

    def of(self, X: torch.Tensor, column_sum: torch.Tensor, bound=None, scratch=None) -> torch.Tensor:
        """P of entries X whose column sums are column_sum; bound: max |X * column_sum| when known
        (it picks tanh's series), scratch: a Scratch for the temporaries (P is its buffer "score")."""
        if scratch is None:
            return self.intra(self.magnitudes(X)).mul_(tanh_(torch.mul(X, column_sum), bound))
        inter = tanh_(torch.mul(X, column_sum, out=scratch("inter", X)), bound,
                      (scratch("series", X), scratch("series2", X)))
        return self.intra(self.magnitudes(X, out=scratch("magnitude", X)), out=scratch("score", X)).mul_(inter)

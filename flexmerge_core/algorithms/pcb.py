"""pcb (Parameter Competition Balancing) with per-task thresholds from one global pass.

For a group matrix X (g x d, the block flattened): A = |X| clamped per row to [s[int(d*q)],
s[int(d*(1-q)) - 1]], s the row's |X| sorted ascending, q = 1e-4 (the released code's positions, no
interpolation: for d < 10^4 the upper bound is the second-largest entry); intra = exp(g * minmax_row(A)^2);
inter = tanh(X * sum_k X_k); P = intra*inter. Global pass (prepare): the same P with all M tasks over the
whole model gives, per task, threshold_k = its sorted P at position int(d*(1-keep)) and max_k. In the
group, scale_k = minmax over the block of clamp(P_k, threshold_k, max_k), and the output is
lam * sum_k sign(X_k) A_k scale_k / max(sum_k scale_k, 1e-12).
All order statistics are exact: streamed radix selection over the whole model, Stripes in a group.
The global pass reads the zoo 4 times (order_stats.py: 2 passes for the clamp bounds, keyed straight
from X, then 2 for the thresholds, computing P in each): 23 s on an 8-task fp32 ViT-B-32 zoo (160 s
with 6 reads, P computed in 3 of them, and the old order statistics).
The plan itself needs none of it (similarity is on the raw vectors): the merger runs it.
Zero denominators: a constant row has minmax 0 everywhere; the final sum of scales is floored at 1e-12.
Arithmetic is in the input's float dtype (>= fp32), in float64 for g > 80 where exp(g) would overflow fp32.

The merge reads the group twice in column slices and never stores P (columns.py, stripes.py):
1. pass 1: column sums S; per stripe of 16 entries the max and min of |X| and the max of |S|; per
   row, whether some X * S <= 0 (4 MiB slices);
2. between the passes, on the stripe extremes ([g, d/16]): the clamp bounds (stripes.py), then the
   range of P per row: its min is threshold_k when threshold_k >= 0 and the row has an X * S <= 0
   (there P <= 0); its max is the exact P of the few stripes whose bound intra(max |X|) *
   tanh(max |X| max |S|) reaches the best exact P of 16 leading stripes (row_max). Other blocks take
   one more full pass (exact_range);
3. pass 2: the weighted mean, from scale_k = clamp((P_k - p_low) * unit, 0, 1), P computed again
   slice by slice (1 MiB slices, five reused temporaries).
Element-wise P is exp2 of a square (a quarter of exp's time) times a Taylor polynomial for tanh when
the slice's |X * S| allows one exactly (task vectors: two terms, one addcmul), else expm1.
Measured on one ViT-B-32 MLP block, one thread, against averaging timed alternately with it
(benchmarks/bench_algorithms.py, shared 2-core machine, before and after in one run): at g = 30
0.37 s, 10.4x (before: 1.04 s, 29.7x), 10.4-11.6x over four runs under load; at g = 8 0.11 s, 16.2x
(before: 0.36 s, 54x), 11-20x: averaging takes 6 ms there, so the fixed costs (order statistics,
per-slice calls) weigh more.
Of the g = 30 merge (CPU time over averaging's): pass 1 2.5-3x, clamp bounds 1.4x, range of P 0.8x,
pass 2 about 6x: reading X 0.7, A 0.35, intra 1.1 (exp2 0.45), X * S 0.55, tanh series 1.2 (addcmul
and mul), scale 0.8, the two column sums 0.5. Before: three passes, P stored between the last two (the
first touch of its 566 MB cost 0.15-0.3 s), expm1 for every tanh (3x averaging alone), exp, and RowTails.
"""
from __future__ import annotations

import math

import torch

from flexmerge_core.algorithms.base import HyperParam, MergeAlgorithm, MergeResult, flatten_rows
from flexmerge_core.algorithms.columns import Scratch, as_rows, column_slices, positive_
from flexmerge_core.algorithms.order_stats import streamed_order_statistics
from flexmerge_core.algorithms.stripes import STRIPE, Stripes, reduce, stripe_extremes

KEEP = HyperParam("keep", 0.1, float, 0.0, 1.0, low_inclusive=False,
                  help="top fraction of each task's global PCB scores that survives (0.1 vision, 0.2 language)")
LAMBDA = HyperParam("lam", 1.0, float, 0.0, 10.0, help="scaling of the merged vector")
QUANTILE = HyperParam("clamp_quantile", 1e-4, float, 0.0, 0.5, high_inclusive=False,
                      help="magnitudes are clamped per row to the [q, 1-q] quantiles")
FP32_SAFE_GROUP = 80  # exp(g) stays finite in float32 up to g = 88
TANH_CAP = 20.0  # tanh is 1 in float64 from here on; capping keeps expm1(2 x) finite
TANH_SERIES = (1.0, -1 / 3, 2 / 15, -17 / 315, 62 / 2835, -1382 / 155925)  # tanh(x) = x * sum_k c_k x^2k
SLACK = 1e-5  # relative margin of the stripe bounds of P over rounding (~100 float32 ulps)
SLICE_SHARE = 4  # 1 MiB slices (fp32): pass 2 keeps five temporaries, 7.6x averaging at 4 MiB, 5.6x at 1 MiB
LEADS = 16  # first guesses of a row's max P: its best-bounded stripes in as many groups
CANDIDATE_SHARE = 8  # with more than 1/8 of the entries below the bounds, one full pass is cheaper


def work_dtype(g: int, dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if g > FP32_SAFE_GROUP else dtype


def clamp_positions(d: int, q: float) -> tuple:
    """Sorted positions of a row's clamp bounds, as the released code indexes them (no interpolation)."""
    return int(d * q), max(int(d * (1 - q)) - 1, 0)


def unit_scale(low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """1 / (high - low) per row, 0 where high <= low: (v - low) * it is minmax with its zero guard."""
    span = high - low
    return torch.where(span > 0, 1.0 / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(span))


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

    def of(self, X: torch.Tensor, column_sum: torch.Tensor) -> torch.Tensor:
        """P of entries X whose column sums are column_sum."""
        return self.intra(self.magnitudes(X)).mul_(tanh_(torch.mul(X, column_sum)))


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

        bounds = streamed_order_statistics(rows, lambda d: torch.tensor(clamp_positions(d, q)), absolute=True)

        def scores():
            for X in rows():
                b = bounds.to(X.device)
                yield Scores.of_group(b[:, :1], b[:, 1:], X.shape[0]).of(X, X.sum(dim=0))

        keep = self._hp["keep"]
        found = streamed_order_statistics(
            scores, lambda d: torch.tensor([min(int(d * (1 - keep)), d - 1), d - 1]))
        self._threshold, self._maximum = found[:, 0].cpu(), found[:, 1].cpu()

    def _merge(self, block, members):
        if self._threshold is None:
            raise RuntimeError("pcb: call prepare() over the whole model before merge()")
        rows = {n: as_rows(t) for n, t in block.items()}
        reference = next(iter(rows.values()))
        g, dtype, device = len(members), work_dtype(len(members), reference.dtype), reference.device
        d = sum(r.shape[1] for r in rows.values())

        layout = [(n, slice(*cols.indices(r.shape[1])[:2])) for n, r in rows.items() for cols in column_slices(r)]

        def slices(share=1):  # (name, columns, X slice in the work dtype), all tensors in order
            for n, r in rows.items():
                for cols in column_slices(r, share):
                    yield n, cols, r[:, cols].to(dtype)

        def entries(row, stripe):
            return stripes.entries(rows, row, stripe).to(dtype)

        # pass 1: column sums S, the stripe extremes of |X| and of |S|, and per row an entry with X * S <= 0
        stripes, scratch = Stripes(layout), Scratch(dtype, device)
        column_sum = {n: torch.empty(r.shape[1], dtype=dtype, device=device) for n, r in rows.items()}
        top_magnitude = stripes.extremes(g, True, dtype, device)
        low_magnitude = stripes.extremes(g, False, dtype, device)
        top_sum = stripes.extremes(1, True, dtype, device)[0]
        aligned = torch.ones(g, 1, dtype=torch.bool, device=device)  # no X * S <= 0 seen yet in the row
        for i, (n, cols, X) in enumerate(slices()):
            S = torch.sum(X, dim=0, out=column_sum[n][cols])
            A = torch.abs(X, out=scratch(0, X))
            span = stripes.span(i)
            stripe_extremes(A, True, top_magnitude[:, span])
            stripe_extremes(A, False, low_magnitude[:, span])
            stripe_extremes(S.abs(), True, top_sum[span])
            if i < 2 or bool(aligned.any()):  # settled after the first slices but in odd blocks
                aligned &= positive_(torch.mul(X, S, out=A).amin(dim=1, keepdim=True))
        # max |X| * max |S| per tensor bounds tanh's argument there
        product_bound = {}
        for i, (n, _) in enumerate(layout):
            found = top_magnitude[:, stripes.span(i)].amax() * top_sum[stripes.span(i)].amax()
            product_bound[n] = found if n not in product_bound else torch.maximum(product_bound[n], found)
        product_bound = {n: float(b) for n, b in product_bound.items()}

        # the clamp bounds: |X| at the released positions, from the stripes holding each row's ends
        low, high = clamp_positions(d, self._hp["clamp_quantile"])
        magnitudes = lambda row, stripe: entries(row, stripe).abs_()  # noqa: E731
        scores = Scores.of_group(stripes.order_statistic(low_magnitude, low + 1, False, magnitudes),
                                 stripes.order_statistic(top_magnitude, d - high, True, magnitudes), g)
        index = torch.tensor(members)
        threshold = self._threshold[index].to(device, dtype).unsqueeze(1)
        maximum = self._maximum[index].to(device, dtype).unsqueeze(1)

        # the range of P per row, without storing P: its max from the stripe bounds, its min is at most
        # the threshold (the usual case) when the threshold is >= 0 and the row has an X * S <= 0
        p_high = row_max(scores, stripes, top_magnitude, top_sum, max(product_bound.values()),
                         scratch, lambda row, stripe: (entries(row, stripe), stripes.entries(column_sum, row, stripe)),
                         g * d // CANDIDATE_SHARE)
        if p_high is None or not bool(((threshold >= 0) & ~aligned).all()):
            p_low, p_high = exact_range(scores, slices(), column_sum)
        else:
            p_low = threshold
        p_low = torch.minimum(torch.maximum(p_low, threshold), maximum)
        p_high = torch.minimum(torch.maximum(p_high, threshold), maximum)
        unit = unit_scale(p_low, p_high)
        # with p_low >= 0 a weighted entry has P > 0, so X * S > 0: its sign is its column sum's
        signed = not bool((p_low >= 0).all())

        # pass 2, the weighted mean: scale_k = minmax of P_k clamped to [threshold_k, max_k] equals
        # (P_k - p_low) * unit clamped to [0, 1] (an entry at or below p_low weighs exactly 0)
        merged = {n: torch.empty(r.shape[1], dtype=dtype, device=device) for n, r in rows.items()}
        for n, cols, X in slices(SLICE_SHARE):
            S = column_sum[n][cols]
            A = scores.magnitudes(X, out=scratch(0, X))
            inter = tanh_(torch.mul(X, S, out=scratch(2, X)), product_bound[n], (scratch(3, X), scratch(4, X)))
            scale = scores.intra(A, out=scratch(1, X)).mul_(inter)
            scale.sub_(p_low).mul_(unit).clamp_(0.0, 1.0)
            weighted = A.mul_(scale)
            if signed:
                weighted.mul_(torch.sign(X, out=inter))
            total = torch.sum(weighted, dim=0, out=merged[n][cols])
            if not signed:
                total.mul_(torch.sign(S))
            total.div_(scale.sum(dim=0).clamp_(min=1e-12))
        lam = self._hp["lam"]
        return MergeResult(unified={n: (lam * v).to(reference.dtype).reshape(block[n].shape[1:])
                                    for n, v in merged.items()})


def exact_range(scores: Scores, slices, column_sum: dict) -> tuple:
    """Each row's min and max of P over the block, by one full pass."""
    low = high = None
    for n, cols, X in slices:
        P = scores.of(X, column_sum[n][cols])
        lo, hi = P.amin(dim=1, keepdim=True), P.amax(dim=1, keepdim=True)
        low = lo if low is None else torch.minimum(low, lo)
        high = hi if high is None else torch.maximum(high, hi)
    return low, high


def row_max(scores: Scores, stripes: Stripes, top_magnitude, top_sum, product_bound: float, scratch, entries,
            budget: int):
    """[g, 1] max of P per row, evaluating only the stripes whose bound reaches it (None: more than
    `budget` entries would be evaluated), from the stripe maxima of |X| ([g, padded], overwritten by
    the bounds) and of |S| ([padded]); product_bound: max |X| * max |S| over the block.

    P rises with |X| (intra) and with X * S (inter) and X * S <= |X| |S|, so intra(max |X|) *
    tanh(max |X| max |S|) bounds a stripe's P from above. A first lower bound of the max is the exact P
    of the best-bounded stripe in each of the row's LEADS best-bounded groups of STRIPE stripes; only
    stripes bounded above it are looked into.
    """
    bound = top_magnitude  # its padding stays -inf
    real, sums = bound[:, :stripes.count], top_sum[:stripes.count]
    for cols in column_slices(real):
        A = real[:, cols]
        t = tanh_(torch.mul(A, sums[cols], out=scratch(2, A)), product_bound, (scratch(3, A), scratch(4, A)))
        torch.mul(scores.intra(A.clamp_min_(scores.low).clamp_max_(scores.high), out=scratch(1, A)), t, out=A)
    g, width = bound.shape[0], bound.shape[1] // STRIPE
    groups = reduce(bound, largest=True).topk(min(LEADS, width), dim=1).indices
    members = (groups.unsqueeze(2) + width * torch.arange(STRIPE, device=bound.device)).view(g, -1)
    best = bound.gather(1, members).view(g, -1, STRIPE).argmax(dim=2, keepdim=True)
    lead = members.view(g, -1, STRIPE).gather(2, best).view(-1)
    found = exact_max(scores, torch.arange(g, device=bound.device).repeat_interleave(groups.shape[1]), lead, entries, g)
    row, stripe = positive_(real.sub_(found - found.abs() * SLACK)).nonzero(as_tuple=True)
    if row.numel() * STRIPE > budget:
        return None
    return torch.maximum(found, exact_max(scores, row, stripe, entries, g))


def exact_max(scores: Scores, row: torch.Tensor, stripe: torch.Tensor, entries, g: int) -> torch.Tensor:
    """[g, 1] max of P over the given stripes of each row (-inf for a row without any)."""
    X, S = entries(row, stripe)
    P = scores.rows(row).of(X, S).amax(dim=1)
    found = torch.full((g,), float("-inf"), dtype=P.dtype, device=P.device)
    return found.scatter_reduce_(0, row, P, "amax").unsqueeze(1)

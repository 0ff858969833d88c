"""pcb (Parameter Competition Balancing) with per-task thresholds from one global pass.

For a group matrix X (g x d, the block flattened): A = |X| clamped per row to [s[int(d*q)],
s[int(d*(1-q)) - 1]], s the row's |X| sorted ascending, q = 1e-4 (the released code's positions, no
interpolation: for d < 10^4 the upper bound is the second-largest entry); intra = exp(g * minmax_row(A)^2);
inter = tanh(X * sum_k X_k); P = intra*inter. Global pass (prepare): the same P with all M tasks over the
whole model gives, per task, threshold_k = its sorted P at position int(d*(1-keep)) and max_k. In the
group, scale_k = minmax over the block of clamp(P_k, threshold_k, max_k), and the output is
lam * sum_k sign(X_k) A_k scale_k / max(sum_k scale_k, 1e-12).
All order statistics are exact.
The global pass (prepare, pcb_thresholds.py) reads the zoo twice and computes P once, slice by slice per
tensor; its thresholds are bit-identical to the four-read radix route it replaced (8-task fp32 and
30-task fp16 ViT-B-32 zoos). CPU time on a shared 2-core machine: 8 tasks 5.6 s (34.8 s before: four
reads, P twice, torch.cat of every block), 30 tasks 22-24 s (141 s before).
The plan itself needs none of it (similarity is on the raw vectors, streamed as avg's): the merger runs it.
Per (task, block), once (preprocess_inputs: row_summary, one read of the task's rows; rows keyed by
"pcb-summary"): the row's clamp bounds over the block and its stripe maxima of |X| in a window layout
that is the same for every group (stripe_layout). Every group the task joins reads them instead of
finding them (the rows take 1/16 more memory: Pcb.row_bytes).
Zero denominators: a constant row has minmax 0 everywhere; the final sum of scales is floored at 1e-12.
Arithmetic is in the input's float dtype (>= fp32), in float64 for g > 80 where exp(g) would overflow fp32.

The merge reads the group twice in column slices and never stores P (columns.py, stripes.py):
1. pass 1: column sums S; per row, whether some X * S <= 0 (4 MiB slices);
2. between the passes, on the members' stripe maxima of |X| ([g, d/16]) and those of |S|: the range of
   P per row: its min is threshold_k when threshold_k >= 0 and the row has an X * S <= 0 (there
   P <= 0); its max is the exact P of the few stripes whose bound intra(max |X|) * tanh(max |X| max |S|)
   reaches the best exact P of 16 leading stripes (row_max). Other blocks, and groups of at most
   SMALL_GROUP entries (norm layers: 1.0 -> 0.3 ms at g = 30), take one more full pass (exact_range);
3. pass 2: the weighted mean, from scale_k = clamp((P_k - p_low) * unit, 0, 1), P computed again
   slice by slice (1 MiB slices, five reused temporaries; 17 element-wise ops per entry).
Element-wise P is exp2 of a square (a quarter of exp's time) times a Taylor polynomial for tanh when
the slice's |X * S| allows one exactly (task vectors: two terms, one addcmul), else expm1. The work
buffers (column sums, stripe maxima, slice temporaries) are kept per thread (columns.thread_scratch):
fresh ones were page-faulted in every merge (about 2 ms per 19 MB).
Measured on one ViT-B-32 MLP block: CPU time of one thread, best of 7, averaging the same group timed
in the same run, before -> after over two rounds on a shared machine (load 4-7):
  g = 2    60-64 ms, 21.7-22.6x  ->  29-30 ms, 11.3-12.3x
  g = 8    127-156 ms, 20.5-24.1x  ->  79-82 ms, 12.6-13.6x
  g = 30   410-516 ms, 11.3-14.9x  ->  278-290 ms, 7.9-8.1x
plus row_summary once per task and block (~10 ms per task of the MLP block). At g = 30 row_max takes
8% of the merge, pass 1 about averaging's time, pass 2 the rest. Against the code before, outputs differ
only where the window layout changes tanh's series or the range of P takes the other exact route: over
all 364 merged groups of the 8-task zoo's spectrum 132k of ~800M entries, by 3.1e-7 relative at most
(2.9e-8 per tensor), with the same entries exactly zero.
Whole spectrum (benchmarks/bench_spectrum.py, 2 threads, before and after alternating, shared machine):
8-task fp32 zoo 47.9-51.4 s wall, 35.3-35.6 s CPU (11.1-13.2x the averaging run's CPU) -> 30.6-32.8 s,
21.3-21.4 s (6.6-7.0x), peak RSS 4.0-4.7 GB -> 1.04 GB; 30-task fp16 zoo 93 s wall, 85 s CPU (15.2x /
20.5x the averaging run in the same load; 204 s, 32.6x at the session's start), of which the merges'
kernel 48 s CPU, the global pass 22 s and the plan 6 s: the kernel's 17 ops per entry and member are
what is left, Sum(g * d) over the spectrum's groups being 5.3 reads of the whole zoo.
"""
from __future__ import annotations

import math

import torch

from flexmerge_core.algorithms.base import HyperParam, MergeAlgorithm, MergeResult
from flexmerge_core.algorithms.columns import as_rows, column_slices, positive_, thread_scratch
from flexmerge_core.algorithms.pcb_scores import Scores, clamp_positions, tanh_, unit_scale, work_dtype
from flexmerge_core.algorithms.pcb_thresholds import global_thresholds
from flexmerge_core.algorithms.stripes import STRIPE, Stripes, reduce, stripe_extremes
from flexmerge_core.cache import content_hash

KEEP = HyperParam("keep", 0.1, float, 0.0, 1.0, low_inclusive=False,
                  help="top fraction of each task's global PCB scores that survives (0.1 vision, 0.2 language)")
LAMBDA = HyperParam("lam", 1.0, float, 0.0, 10.0, help="scaling of the merged vector")
QUANTILE = HyperParam("clamp_quantile", 1e-4, float, 0.0, 0.5, high_inclusive=False,
                      help="magnitudes are clamped per row to the [q, 1-q] quantiles")
CLAMP_BOUNDS = "pcb:clamp"  # preprocessed entry [m, 2]: each row's clamp bounds over its block
STRIPE_MAXIMA = "pcb:stripes"  # preprocessed entry [m, padded]: each row's stripe maxima of |X| (stripe_layout)
SUMMARY = (CLAMP_BOUNDS, STRIPE_MAXIMA)
SUMMARY_VERSION = 1  # of what the preprocessed entries hold: names preprocessed rows in caches
WINDOW = 1 << 15  # columns of a tensor per window of the stripe layout: the same for every group
SLACK = 1e-5  # relative margin of the stripe bounds of P over rounding (~100 float32 ulps)
SLICE_SHARE = 4  # 1 MiB slices (fp32): pass 2 keeps five temporaries, 7.6x averaging at 4 MiB, 5.6x at 1 MiB
LEADS = 16  # first guesses of a row's max P: its best-bounded stripes in as many groups
CANDIDATE_SHARE = 8  # with more than 1/8 of the entries below the bounds, one full pass is cheaper
SMALL_GROUP = 1 << 16  # entries (g * d) up to which the range of P takes one exact pass: 1.0 -> 0.3 ms at g = 30


def stripe_layout(widths: dict) -> list:
    """(name, columns) windows of every tensor of a block ({name: columns of a row}): the stripes' layout,
    fixed whatever the group size, so that a task's stripe maxima are found once (row_summary) and shared
    by its groups."""
    return [(n, slice(s, min(s + WINDOW, w))) for n, w in widths.items() for s in range(0, w, WINDOW)]


def row_summary(rows: dict, q: float) -> tuple:
    """(clamp bounds [m, 2], stripe maxima of |X| [m, padded]) of the block rows {name: [m, d_name]}, each
    row's alone: |X| at the released positions, found from the stripes holding the row's ends (one read)."""
    reference = next(iter(rows.values()))
    m, dtype, device = reference.shape[0], reference.dtype, reference.device
    layout = stripe_layout({n: r.shape[1] for n, r in rows.items()})
    stripes, scratch = Stripes(layout), thread_scratch(dtype, device)
    top, low = stripes.extremes(m, True, dtype, device), stripes.extremes(m, False, dtype, device, scratch, "low")
    for i, (n, cols) in enumerate(layout):
        magnitude = torch.abs(rows[n][:, cols], out=scratch(0, rows[n][:, cols]))
        stripe_extremes(magnitude, True, top[:, stripes.span(i)])
        stripe_extremes(magnitude, False, low[:, stripes.span(i)])
    d = sum(r.shape[1] for r in rows.values())
    first, last = clamp_positions(d, q)
    magnitudes = lambda row, stripe: stripes.entries(rows, row, stripe).abs_()  # noqa: E731
    bounds = torch.cat([stripes.order_statistic(low, first + 1, False, magnitudes),
                        stripes.order_statistic(top, d - last, True, magnitudes)], dim=1)
    return bounds, top


class Pcb(MergeAlgorithm):
    name = "pcb"
    params = (KEEP, LAMBDA, QUANTILE)
    results_version = 1  # stripe layout per (task, block): 132k of 800M entries moved by <= 3.1e-7 relative

    def __init__(self, **overrides):
        super().__init__(**overrides)
        self._threshold = self._maximum = None  # [M] each, set by prepare

    @property
    def has_preprocessing(self) -> bool:
        return True

    @property
    def similarity_needs_prepare(self) -> bool:
        return False  # the thresholds only weight the merge; similarity uses the raw vectors

    @property
    def raw_similarity(self) -> bool:
        return True  # similarity_block is the task vectors themselves, never the clamp bounds

    def similarity_block(self, block, tasks=None):
        return self._input_vectors(block, tasks)

    @property
    def preprocessing_key(self) -> str:
        """Rows = the input rows with each row's summary over its block (SUMMARY): they depend on the
        quantile only (keep and lam weight the merge; the thresholds come from the zoo)."""
        return content_hash("rows", "pcb-summary", SUMMARY_VERSION, self.input_key, self._hp["clamp_quantile"])

    def row_bytes(self, shapes):
        """The float32 vectors plus the summary: the clamp bounds and the stripe maxima of the block's
        window layout (about 1/16 of the vectors)."""
        layout = stripe_layout({i: math.prod(shape) for i, shape in enumerate(shapes)})  # rows flattened
        return super().row_bytes(shapes) + 4 * (2 + Stripes(layout).padded)

    def preprocess_inputs(self, block, tasks=None):
        """The rows plus each row's clamp bounds and stripe maxima over the block (row_summary): a task's
        are found once per block, whatever groups it joins, instead of by every group's merge."""
        summary = row_summary({n: as_rows(t) for n, t in block.items()}, self._hp["clamp_quantile"])
        return {**block, **dict(zip(SUMMARY, summary))}

    def prepare(self, stream):
        def tensors():
            for block in stream():
                yield [as_rows(t).to(work_dtype(t.shape[0], t.dtype)) for t in self._input_vectors(block, None).values()]

        found = global_thresholds(tensors, self._hp["clamp_quantile"], self._hp["keep"])
        self._threshold, self._maximum = (t.cpu() for t in found)

    def _merge(self, block, members):
        if self._threshold is None:
            raise RuntimeError("pcb: call prepare() over the whole model before merge()")
        if CLAMP_BOUNDS not in block:  # raw vectors (merge() called directly): summarise the rows here
            block = self.preprocess_inputs(block)
        rows = {n: as_rows(t) for n, t in block.items() if n not in SUMMARY}
        reference = next(iter(rows.values()))
        g, dtype, device = len(members), work_dtype(len(members), reference.dtype), reference.device
        d = sum(r.shape[1] for r in rows.values())

        layout = stripe_layout({n: r.shape[1] for n, r in rows.items()})

        def slices(share=1):  # (name, columns, X slice in the work dtype), all tensors in order
            for n, r in rows.items():
                for cols in column_slices(r, share):
                    yield n, cols, r[:, cols].to(dtype)

        def entries(row, stripe):
            return stripes.entries(rows, row, stripe).to(dtype)

        # pass 1: column sums S, and per row an entry with X * S <= 0
        stripes, scratch = Stripes(layout), thread_scratch(dtype, device)
        column_sum = dict(zip(rows, scratch.empty("sum", (d,)).split([r.shape[1] for r in rows.values()])))
        aligned = torch.ones(g, 1, dtype=torch.bool, device=device)  # no X * S <= 0 seen yet in the row
        for i, (n, cols, X) in enumerate(slices()):
            S = torch.sum(X, dim=0, out=column_sum[n][cols])
            if i < 2 or bool(aligned.any()):  # settled after the first slices but in odd blocks
                aligned &= positive_(torch.mul(X, S, out=scratch(0, X)).amin(dim=1, keepdim=True))
        # the members' stripe maxima of |X| (row_summary: row_max overwrites them), those of |S|, and
        # per tensor max |X| * max |S| over its windows, which bounds tanh's argument there
        top_magnitude = scratch.empty("top", block[STRIPE_MAXIMA].shape).copy_(block[STRIPE_MAXIMA])
        top_sum = stripes.extremes(1, True, dtype, device, scratch, "top sum")[0]
        product_bound = {}
        for i, (n, cols) in enumerate(layout):
            span = stripes.span(i)
            stripe_extremes(column_sum[n][cols].abs(), True, top_sum[span])
            found = top_magnitude[:, span].amax() * top_sum[span].amax()
            product_bound[n] = found if n not in product_bound else torch.maximum(product_bound[n], found)
        product_bound = {n: float(b) for n, b in product_bound.items()}

        bounds = block[CLAMP_BOUNDS].to(device, dtype)
        scores = Scores.of_group(bounds[:, :1], bounds[:, 1:], g)
        index = torch.tensor(members)
        threshold = self._threshold[index].to(device, dtype).unsqueeze(1)
        maximum = self._maximum[index].to(device, dtype).unsqueeze(1)

        # the range of P per row, without storing P: its max from the stripe bounds, its min is at most
        # the threshold (the usual case) when the threshold is >= 0 and the row has an X * S <= 0;
        # a small group (norm layers) takes one exact pass, cheaper than the stripes' bookkeeping
        p_high = None if g * d <= SMALL_GROUP else row_max(
            scores, stripes, top_magnitude, top_sum, max(product_bound.values()), scratch,
            lambda row, stripe: (entries(row, stripe), stripes.entries(column_sum, row, stripe)), g * d // CANDIDATE_SHARE)
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
        lam = self._hp["lam"]
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
            if not signed:  # total >= 0: copysign is its product with sign(S), in one op
                torch.copysign(total, S, out=total)
            total.div_(scale.sum(dim=0).clamp_(min=1e-12))
            if lam != 1.0:
                total.mul_(lam)
        return MergeResult(unified={n: v.to(reference.dtype).reshape(block[n].shape[1:]) for n, v in merged.items()})


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

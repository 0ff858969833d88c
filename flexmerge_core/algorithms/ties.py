"""ties: global magnitude trim, per-coordinate sign election by mass, disjoint mean.

Trim (preprocessing): per task over its WHOLE model vector, keep entries with |x| >= t_k, t_k the
k-th smallest |x|, k = d - int(d * keep) (at least 1); ties at the threshold are all kept. t_k is an
exact order statistic found by a streamed radix selection (order_stats.py), so no whole-model
vector is ever held in memory. Similarity uses the trimmed vectors unless similarity_on="original".
Cost of the plan: the thresholds read the zoo twice (order_stats.py: magnitudes keyed straight from
the task vectors, no |x| pass) and the similarity pass once more. The trim is one hardshrink per row
(zero where |x| <= the largest float below t_k, i.e. |x| < t_k: exact), in place in blocks read for it
(OwnedBlock: the plan's passes, the row cache); the old slice-wise where() wrote a new block, whose
page faults cost more than the trim. bench_spectrum, old and new code alternately on 2 near-idle
cores: 30-task fp16 ViT-B-32 zoo, plan 15.6 s (was 46.3 s), whole spectrum 49.7 s (82.0 s), 15.9x
averaging (19.5x), peak RSS 2.0 GB (15.5 GB); 8-task fp32 zoo, plan 4.8 s (7.1 s), spectrum 13.0 s.

Cost model of the merge (columns.py): two reads of the group, no [g, d] temporary. Read 1: the column
sums for the sign election (a pair: x_0 + x_1, whose sign no order changes). Read 2, per cache-sized
column slice, in reused buffers: max(x * gamma, 0), its column sum (sum(dim=0): the same additions
as ever, so the same bits) and the count of its positive entries (its signs times ones: a
matrix-vector product, exact for integers); the mean is written over the sign vector. Small groups
pay mostly for [d]-sized work (558 of the 1508 groups of the 30-task spectrum are pairs), so there is
no where/full_like for the fallback sign, no separate mean tensor and no multiply by lam = 1 (base.py).
One ViT-B-32 MLP block, one thread's CPU time (averaging: 19, 3 and 2 ms): g = 30 56 ms, 3.0x (was
65 ms); g = 8 18-22 ms (45 ms); g = 2 8 ms (18 ms). The 30-task spectrum's merges: 32.2 s (32.8 s: the old
run reused the 15 GB heap its plan left, with no page faults; the rest is reading and stacking rows).
Shared: the merge is lam times its basis, the disjoint mean of the trimmed rows (keyed by the trim's
keep, whatever lam: a lam sweep computes it once per group). consensus's basis is the disjoint mean of
the raw rows: shared between consensus' own lam values, never with ties' trimmed groups.
"""
from __future__ import annotations

import math

import torch

from flexmerge_core.algorithms.base import HyperParam, MergeAlgorithm, OwnedBlock, iter_rows
from flexmerge_core.algorithms.columns import Scratch, as_rows, column_slices
from flexmerge_core.algorithms.order_stats import streamed_order_statistics
from flexmerge_core.cache import content_hash

KEEP = HyperParam("keep", 0.1, float, 0.0, 1.0, low_inclusive=False,
                  help="fraction of each task's largest-magnitude entries kept by the trim")
LAMBDA = HyperParam("lam", 1.0, float, 0.0, 10.0, help="scaling of the merged vector")
SIMILARITY_ON = HyperParam("similarity_on", "trimmed", str, choices=("trimmed", "original"),
                           help="vectors the similarity (and so the plan) is computed on")


def elect_signs(block: dict) -> tuple:
    """(sign(sum_k x_k) per tensor, the sign its zeros take): the sign of sum(gamma) over the block (+1
    if that is 0). The zeros are left for the caller to fill slice by slice. Only the signs of the sums
    count: a pair's is that of x_0 + x_1 (one rounding, in any order), a cheaper op than sum(dim=0)."""
    gamma = {n: (t[0] + t[1] if t.shape[0] == 2 else t.sum(dim=0)).sign_() for n, t in block.items()}
    total = sum(float(g.sum(dtype=torch.float64)) for g in gamma.values())  # exact count of signs
    return gamma, -1.0 if total < 0 else 1.0


def disjoint_mean(block: dict) -> dict:
    """Mean over members whose entry is non-zero with the elected sign (0 where there is none).

    One pass over the group after the sign election's own sum: per column slice, the agreeing entries
    are max(x * gamma, 0) (|x| where x has the elected sign, else 0), summed (sum(dim=0): the reference's
    order) and counted (a matrix-vector product of their signs with ones: exact, integers), in reused
    buffers; the mean overwrites gamma (no other [d] tensor is allocated).
    """
    signs, fallback = elect_signs(block)
    scratches = {}
    out = {}
    for n, t in block.items():
        rows, gamma = as_rows(t), signs[n].reshape(-1)
        scratch = scratches.setdefault(t.dtype, Scratch(t.dtype, t.device))
        ones = torch.ones(rows.shape[0], dtype=t.dtype, device=t.device)
        for cols in column_slices(rows):
            elected = gamma[cols]  # -1, 0 or 1: gamma + f - f * gamma^2 is f where gamma is 0 (exact; no slow compare)
            elected.sub_(torch.mul(elected, elected, out=scratch("square", elected)), alpha=fallback).add_(fallback)
            agree = torch.mul(rows[:, cols], elected, out=scratch("agree", rows[:, cols])).clamp_(min=0)
            total = torch.sum(agree, dim=0, out=scratch("total", elected))
            count = torch.mv(agree.sign_().T, ones, out=scratch("count", elected)).clamp_(min=1)  # sign_: 1 if agreeing
            elected.mul_(total).div_(count)
        out[n] = gamma.reshape(t.shape[1:])
    return out


def trim_position(d: int, keep: float) -> int:
    """0-indexed sorted position of the trim threshold: the k-th smallest, k = d - int(d*keep) >= 1."""
    return max(d - int(d * keep), 1) - 1


class Ties(MergeAlgorithm):
    name = "ties"
    params = (KEEP, LAMBDA, SIMILARITY_ON)
    basis, basis_scale = staticmethod(disjoint_mean), "lam"

    def __init__(self, **overrides):
        super().__init__(**overrides)
        self._thresholds = None  # [M] per-task trim thresholds, set by prepare

    @property
    def has_preprocessing(self) -> bool:
        return True

    @property
    def similarity_needs_prepare(self) -> bool:
        return self._hp["similarity_on"] == "trimmed"

    def prepare(self, stream):
        def rows():
            for block in stream():
                yield from self._ranked_rows(block)
        keep = self._hp["keep"]
        self._thresholds = streamed_order_statistics(
            rows, lambda d: torch.tensor([trim_position(d, keep)]), absolute=True)[:, 0].cpu()

    def _ranked_rows(self, block):
        """Tensor by tensor, the rows whose magnitudes the thresholds rank: the input vectors (dare_ties
        lists only the entries DARE keeps)."""
        return self._input_vectors(block, None).values()

    @property
    def preprocessing_key(self) -> str:
        """The trim's keep over the input rows (raw, or DARE's dropped ones); its thresholds come
        from the zoo, which every row cache key names anyway."""
        return content_hash("rows", "ties-trim", self.input_key, self._hp["keep"])

    def preprocess_inputs(self, block, tasks=None):
        """Each row keeps |x| >= its task's threshold t: hardshrink zeroes |x| <= its bound, the largest
        float below t (so exactly |x| < t), in one pass; in place for an OwnedBlock."""
        if self._thresholds is None:
            raise RuntimeError("ties: call prepare() over the whole model before preprocess_block()")
        rows = next(iter(block.values())).shape[0]
        index = torch.tensor(list(iter_rows(tasks, rows)), dtype=torch.long)
        out = OwnedBlock()
        for n, t in block.items():
            bounds = torch.nextafter(self._thresholds[index].to(t.dtype), torch.tensor(-math.inf, dtype=t.dtype))
            trimmed = t if isinstance(block, OwnedBlock) else torch.empty_like(t)
            for row, bound in enumerate(bounds.tolist()):
                torch.hardshrink(t[row], bound, out=trimmed[row])
            out[n] = trimmed
        return out

    def similarity_block(self, block, tasks=None):
        if self._hp["similarity_on"] == "original":
            return self._input_vectors(block, tasks)
        return self.preprocess_block(block, tasks)

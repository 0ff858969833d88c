"""Exact per-row order statistics of a stream of [M, c] slices read once: near either end of each row
(StreamedExtremes), or inside an interval a sample predicts (IntervalSelection).

Why: PCB's global pass needs, per task over its whole model, two positions near the ends of its sorted
|x| (the clamp bounds, at 1e-4 and 1 - 1e-4) and one near 90% of its sorted scores P (the threshold). A
radix selection (order_stats.py) reads its stream twice with a histogram of every value, which for PCB
meant four reads of the zoo and computing P twice. Both classes here read their stream once and are
exact; where their premise fails (a position deeper than StreamedExtremes' cap, or outside the
predicted interval) `select` says so (None) and the caller selects again by other means.
Only a few cache-speed ops per entry: stripes (stripes.py: STRIPE entries strided across a slice, one
strided reduction) find the rare entries to keep, so nothing is compared or gathered entry by entry.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from flexmerge_core.algorithms.columns import positive_
from flexmerge_core.algorithms.stripes import STRIPE, reduce

CAP = 1 << 15  # positions StreamedExtremes answers from either end: 1e-4 quantiles of ~330M values per row
SIGMAS = 6.0  # half-width of a predicted interval in binomial standard deviations of the sample's rank


def entries_beyond(key: torch.Tensor, cut: torch.Tensor, largest: bool, values: Optional[torch.Tensor] = None) -> tuple:
    """(row [K], value [K]) of the entries of key [M, c] strictly above (below, largest=False) cut [M, 1],
    their values taken from `values` (shaped like key; default key itself), in no particular order.

    Only stripes whose max (min) passes are gathered; a slice's last c % STRIPE columns one by one."""
    M, c = key.shape
    body = c - c % STRIPE
    sign = 1.0 if largest else -1.0
    pieces = []
    if body:
        row, stripe = positive_(reduce(key, largest).sub_(cut).mul_(sign)).nonzero(as_tuple=True)
        stripes = lambda t: t[:, :body].unflatten(1, (STRIPE, body // STRIPE))[row, :, stripe]  # noqa: E731
        k = stripes(key)
        pieces.append((row.unsqueeze(1), k, k if values is None else stripes(values), cut[row]))
    if body < c:
        k = key[:, body:]
        pieces.append((torch.arange(M, device=key.device).unsqueeze(1), k, k if values is None else values[:, body:], cut))
    rows, found = [], []
    for row, k, v, limit in pieces:
        hit = positive_(torch.sub(k, limit).mul_(sign))
        rows.append(row.expand_as(hit)[hit])
        found.append(v[hit])
    return torch.cat(rows), torch.cat(found)


class KeptEntries:
    """Values kept from a stream, each with its row; `of(r)` gives row r's."""

    def __init__(self, rows: int):
        self.rows, self.size = rows, 0
        self._row, self._value = [], []

    def add(self, row: torch.Tensor, value: torch.Tensor) -> None:
        if row.numel():
            self._row.append(row.to(torch.int16 if self.rows <= 1 << 15 else torch.int32))
            self._value.append(value)
            self.size += row.numel()

    def joined(self) -> tuple:
        if len(self._row) > 1:
            self._row, self._value = [torch.cat(self._row)], [torch.cat(self._value)]
        return (self._row[0], self._value[0]) if self._row else (None, None)

    def counts(self) -> torch.Tensor:
        row, _ = self.joined()
        return torch.zeros(self.rows, dtype=torch.int64) if row is None else \
            torch.bincount(row.long(), minlength=self.rows).cpu()

    def of(self, r: int, like: torch.Tensor) -> torch.Tensor:
        row, value = self.joined()
        return like.new_empty(0) if row is None else value[row == r]

    def keep(self, mask: torch.Tensor) -> None:
        """Keep only the entries where mask (over joined()) is True."""
        row, value = self.joined()
        self._row, self._value = [row[mask]], [value[mask]]
        self.size = self._row[0].numel()


class StreamedExtremes:
    """The k-th largest (smallest) entry of each row, k <= CAP, without knowing the row length.

    Every entry beyond a per-row cut is kept; once a row keeps more than 2 * cap, its cut moves to its
    cap-th most extreme kept entry and the rest is dropped. Exact: every entry strictly beyond the cut is
    kept and at least cap entries lie at or beyond it, so the k-th most extreme entry is the k-th kept
    one, or when fewer than k are kept, the cut itself (ties at the cut included).
    """

    def __init__(self, rows: int, largest: bool, cap: Optional[int] = None):
        self.largest, self.cap = largest, CAP if cap is None else cap
        self.kept = KeptEntries(rows)
        self.cut = None  # [M, 1], +-inf until a row is pruned

    def update(self, values: torch.Tensor) -> None:
        if self.cut is None:
            self.cut = torch.full((values.shape[0], 1), -math.inf if self.largest else math.inf,
                                  dtype=values.dtype, device=values.device)
        self.kept.add(*entries_beyond(values, self.cut, self.largest))
        if self.kept.size > 2 * self.cap * self.kept.rows:
            self._prune()

    def _prune(self) -> None:
        """Rows keeping more than cap: the cut moves to their cap-th most extreme kept entry."""
        row, value = self.kept.joined()
        for r, count in enumerate(self.kept.counts().tolist()):
            if count > self.cap:
                self.cut[r] = value[row == r].kthvalue(count - self.cap + 1 if self.largest else self.cap).values
        beyond = value - self.cut[row.long(), 0]
        self.kept.keep(positive_(beyond if self.largest else beyond.neg_()))

    def select(self, rank: torch.Tensor) -> Optional[torch.Tensor]:
        """[M]: each row's rank[r]-th most extreme entry (1 = its max, or min), or None when some row's
        rank lies beyond what was kept."""
        out = torch.empty(self.cut.shape[0], dtype=self.cut.dtype, device=self.cut.device)
        for r, k in enumerate(rank.tolist()):
            mine = self.kept.of(r, self.cut)
            if k <= mine.numel():
                out[r] = mine.topk(k, largest=self.largest).values[-1]
            elif k <= self.cap and bool(torch.isfinite(self.cut[r])):
                out[r] = self.cut[r, 0]
            else:
                return None
        return out


def predicted_interval(sample: torch.Tensor, fraction: float) -> tuple:
    """(low [M], high [M]): per row, bounds that hold the entry at `fraction` of the sorted full row when
    sample [M, n] is an evenly spread sample of it: its entries SIGMAS binomial standard deviations (+ 2)
    either side of that fraction (-inf / inf past its ends). Where the high bound equals the sample's own
    estimate (a mass of equal values, e.g. zeros) both bounds are that value: IntervalSelection counts it."""
    M, n = sample.shape
    centre = fraction * n
    spread = SIGMAS * math.sqrt(n * fraction * (1 - fraction)) + 2
    first, last = math.floor(centre - spread), math.ceil(centre + spread)
    at = lambda i: sample.kthvalue(i + 1, dim=1).values  # noqa: E731  (the sorted row's entry i)
    low = at(first) if first >= 0 else sample.new_full((M,), -math.inf)
    high = at(last) if last < n else sample.new_full((M,), math.inf)
    estimate = at(min(max(int(centre), 0), n - 1))
    tied = high == estimate
    return torch.where(tied, estimate, low), high


class IntervalSelection:
    """One order statistic per row from one pass, given per-row bounds [low, high] predicted to hold it.

    Per slice: the counts of entries below low and equal to it (sums of sign(x - low) and of its
    absolute value), and the entries strictly inside (low, high), found through the stripes of
    min(x - low, high - x) (> 0 exactly inside). The position is then exact: low itself, or among the
    entries kept; anything else is a miss (select: None).
    """

    def __init__(self, low: torch.Tensor, high: torch.Tensor):
        self.low, self.high = low.unsqueeze(1), high.unsqueeze(1)
        self.kept = KeptEntries(low.shape[0])
        self.signs = torch.zeros(low.shape[0], dtype=torch.float64, device=low.device)  # n(> low) - n(< low)
        self.unequal = torch.zeros_like(self.signs)                                       # n(!= low)
        self.seen = 0

    def update(self, values: torch.Tensor, scratch) -> None:
        below = torch.sub(values, self.low, out=scratch("below", values))
        inside = torch.sub(self.high, values, out=scratch("inside", values))
        torch.minimum(inside, below, out=inside)
        self.kept.add(*entries_beyond(inside, torch.zeros_like(self.low), True, values))
        signs = below.sign_()
        self.signs += signs.sum(dim=1)
        self.unequal += signs.abs_().sum(dim=1)
        self.seen += values.shape[1]

    def select(self, rank: torch.Tensor) -> Optional[torch.Tensor]:
        """[M]: each row's entry at 0-indexed sorted position rank[r], or None when one is outside its bounds."""
        out = torch.empty(self.low.shape[0], dtype=self.low.dtype, device=self.low.device)
        equal = (self.seen - self.unequal).tolist()
        less = ((self.unequal - self.signs) / 2).tolist()
        for r, k in enumerate(rank.tolist()):
            k -= less[r]
            if 0 <= k < equal[r]:
                out[r] = self.low[r, 0]
                continue
            mine = self.kept.of(r, self.low)
            k = int(k - equal[r])
            if not 0 <= k < mine.numel():
                return None
            out[r] = mine.kthvalue(k + 1).values
        return out

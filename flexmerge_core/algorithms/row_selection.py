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
from typing import Callable, Optional

import torch

from flexmerge_core.algorithms.columns import positive_
from flexmerge_core.algorithms.stripes import STRIPE, reduce

CAP = 1 << 14  # positions StreamedExtremes answers from either end at least: 1e-4 quantiles of 160M values per row
SIGMAS = 6.0  # half-width of a predicted interval in binomial standard deviations of the sample's rank
MASSED = 16  # sample entries equal to a bound that make it a mass (~1,500 equal entries at 1/97 sampling)


def passing_entries(values: torch.Tensor, extremes: torch.Tensor, stripe_passes, passes) -> tuple:
    """(row [K], value [K]) of the entries x of values [M, c] with passes(x, row) (bool; x [K, s], row [K],
    the entries' rows), looking only into the stripes that stripe_passes(extremes, rows) flags, extremes
    [M, c // STRIPE] being a per-stripe key (reduce) such that a stripe it fails has no passing entry;
    a slice's last c % STRIPE columns are checked one by one."""
    M, c = values.shape
    body = c - c % STRIPE
    every = torch.arange(M, device=values.device)
    rows, found = [], []
    if body:
        row, stripe = stripe_passes(extremes, every).nonzero(as_tuple=True)
        x = values[:, :body].unflatten(1, (STRIPE, body // STRIPE))[row, :, stripe]
        hit = passes(x, row).view(-1).nonzero().squeeze(1)
        rows.append(row[hit // STRIPE])
        found.append(x.view(-1)[hit])
    if body < c:
        row, column = passes(values[:, body:], every).nonzero(as_tuple=True)
        rows.append(row)
        found.append(values[:, body:][row, column])
    return torch.cat(rows), torch.cat(found)


class KeptEntries:
    """Values kept from a stream, each with its row."""

    def __init__(self, rows: int):
        self.rows, self.size = rows, 0
        self._row, self._value = [], []

    def add(self, row: torch.Tensor, value: torch.Tensor) -> None:
        if row.numel():
            self._row.append(row.to(torch.int16 if self.rows <= 1 << 15 else torch.int32))
            self._value.append(value)
            self.size += row.numel()

    def joined(self) -> tuple:
        """(row, value) of everything kept, one tensor each."""
        if len(self._row) != 1:
            device = self._value[0].device if self._value else None
            self._row = [torch.cat(self._row) if self._row else torch.zeros(0, dtype=torch.int16, device=device)]
            self._value = [torch.cat(self._value) if self._value else torch.zeros(0, device=device)]
        return self._row[0], self._value[0]

    def by_row(self) -> list:
        """Each row's kept values (one stable sort by row, not a mask per row)."""
        row, value = self.joined()
        ordered, order = torch.sort(row, stable=True)
        counts = torch.bincount(ordered.long(), minlength=self.rows)
        return list(value[order].split(counts.tolist()))

    def keep(self, mask: torch.Tensor) -> None:
        """Keep only the entries where mask (over joined()) is True."""
        row, value = self.joined()
        self._row, self._value = [row[mask]], [value[mask]]
        self.size = self._row[0].numel()


class StreamedExtremes:
    """The k-th largest (smallest) entry of each row, for small k, without knowing the row length.

    Every entry beyond a per-row cut is kept; once more than 2 * cap per row are kept, each row keeping
    more than cap moves its cut to its cap-th most extreme kept entry and drops the rest. cap is CAP, or
    twice depth(n) when that is more: the rank the caller will ask for if the rows end after n entries.
    Exact: every entry strictly beyond the cut is kept and at least cap entries lie at or beyond it,
    so the k-th most extreme entry is the k-th kept one, or when fewer than k are kept and k is at
    most the cap of the last move, the cut itself (ties at the cut included); else select says None.
    """

    def __init__(self, rows: int, largest: bool, depth: Optional[Callable[[int], int]] = None):
        self.largest, self.depth = largest, depth
        self.kept = KeptEntries(rows)
        self.cut = None  # [M, 1], +-inf until a row's cut first moves
        self.caps = [0] * rows  # per row, the cap when its cut last moved
        self.seen = 0  # entries per row so far

    def _cap(self) -> int:
        return max(CAP, 2 * self.depth(self.seen)) if self.depth is not None else CAP

    def update(self, values: torch.Tensor) -> None:
        if self.cut is None:
            self.cut = torch.full((values.shape[0], 1), -math.inf if self.largest else math.inf,
                                  dtype=values.dtype, device=values.device)
        self.seen += values.shape[1]
        self.kept.add(*passing_entries(values, reduce(values, self.largest), self._beyond, self._beyond))
        if self.kept.size > 2 * self._cap() * self.kept.rows:
            self._prune()

    def _beyond(self, x: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
        """x strictly beyond its row's cut (x [K, s], row [K])."""
        return positive_(torch.sub(x, self.cut[row]) if self.largest else torch.sub(self.cut[row], x))

    def _prune(self) -> None:
        cap = self._cap()
        for r, mine in enumerate(self.kept.by_row()):
            if mine.numel() > cap:
                top = mine.topk(cap, largest=self.largest, sorted=False).values
                self.cut[r], self.caps[r] = top.min() if self.largest else top.max(), cap
        row, value = self.kept.joined()
        self.kept.keep(self._beyond(value.unsqueeze(1), row.long()).squeeze(1))

    def select(self, rank: torch.Tensor) -> Optional[torch.Tensor]:
        """[M]: each row's rank[r]-th most extreme entry (1 = its max, or min), or None when some row's
        rank lies beyond what was kept."""
        out = torch.empty(self.cut.shape[0], dtype=self.cut.dtype, device=self.cut.device)
        for r, (k, mine) in enumerate(zip(rank.tolist(), self.kept.by_row())):
            if k <= mine.numel():
                out[r] = mine.topk(k, largest=self.largest).values[-1]
            elif k <= self.caps[r]:
                out[r] = self.cut[r, 0]
            else:
                return None
        return out


class IntervalSelection:
    """One order statistic per row from one pass, given per-row bounds [low, high] predicted to hold it.

    Per slice: sum(sign(x - low)) (entries above low minus those below), and the entries inside the
    bounds kept, found through the stripes of min(x - low, high - x) (>= 0 exactly inside); the count
    of entries equal to low comes from those kept, except in rows where the bounds say `massed` (a
    mass of equal values sits there, e.g. zeros): the bound is then excluded (nextafter), and entries
    equal to low are counted by sum(|sign(x - low)|) instead of kept. The position is then exact, or a
    miss (select: None).
    """

    def __init__(self, low: torch.Tensor, high: torch.Tensor, low_massed: torch.Tensor, high_massed: torch.Tensor):
        self.low, self.counted = low.unsqueeze(1), low_massed
        self.any_counted = bool(low_massed.any())
        self.first = torch.where(low_massed, torch.nextafter(low, torch.full_like(low, math.inf)), low).unsqueeze(1)
        self.last = torch.where(high_massed, torch.nextafter(high, torch.full_like(high, -math.inf)), high).unsqueeze(1)
        self.kept = KeptEntries(low.shape[0])
        self.signs = torch.zeros(low.shape[0], dtype=torch.float64, device=low.device)  # n(> low) - n(< low)
        self.unequal = torch.zeros_like(self.signs)                                       # n(!= low), counted rows
        self.seen = 0

    @classmethod
    def predicted(cls, sample: torch.Tensor, fraction: float) -> "IntervalSelection":
        """Bounds that hold the entry at `fraction` of each sorted full row when sample [M, n] is an evenly
        spread sample of it: the sample's entries SIGMAS binomial standard deviations (+ 2) either side of
        that fraction (-inf / inf past its ends). A bound is massed where MASSED sample entries equal it;
        where the high bound equals the sample's own estimate both bounds are that value (only counted)."""
        M, n = sample.shape
        centre = fraction * n
        spread = SIGMAS * math.sqrt(n * fraction * (1 - fraction)) + 2
        first, last = math.floor(centre - spread), math.ceil(centre + spread)
        at = lambda i: sample.kthvalue(i + 1, dim=1).values  # noqa: E731  (the sorted row's entry i)
        low = at(first) if first >= 0 else sample.new_full((M,), -math.inf)
        high = at(last) if last < n else sample.new_full((M,), math.inf)
        tied = (sample < high.unsqueeze(1)).sum(dim=1) <= int(centre)  # the estimate is high itself
        low = torch.where(tied, high, low)
        massed = lambda bound: (sample == bound.unsqueeze(1)).sum(dim=1) >= MASSED  # noqa: E731
        return cls(low, high, massed(low) | tied, massed(high) | tied)

    def _within(self, x: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
        return torch.minimum(torch.sub(x, self.first[row]), torch.sub(self.last[row], x)) >= 0

    def update(self, values: torch.Tensor, scratch) -> None:
        below = torch.sub(values, self.low, out=scratch("below", values))
        above = torch.sub(values, self.first, out=scratch("above", values)) if self.any_counted else below
        inside = torch.sub(self.last, values, out=scratch("inside", values))
        inside = reduce(torch.minimum(inside, above, out=inside), True)
        self.kept.add(*passing_entries(values, inside, lambda key, row: key >= 0, self._within))
        signs = below.sign_()
        self.signs += signs.sum(dim=1)
        if self.any_counted:
            self.unequal += signs.abs_().sum(dim=1)
        self.seen += values.shape[1]

    def select(self, rank: torch.Tensor) -> Optional[torch.Tensor]:
        """[M]: each row's entry at 0-indexed sorted position rank[r], or None when one is outside its bounds."""
        out = torch.empty(self.low.shape[0], dtype=self.low.dtype, device=self.low.device)
        for r, (k, mine) in enumerate(zip(rank.tolist(), self.kept.by_row())):
            low, counted = self.low[r, 0], bool(self.counted[r])
            equal = self.seen - float(self.unequal[r]) if counted else int((mine == low).sum())
            k -= (self.seen - equal - float(self.signs[r])) / 2  # the entries below low
            if counted and 0 <= k < equal:
                out[r] = low
                continue
            k -= equal if counted else 0  # into the kept entries, sorted
            if not 0 <= k < mine.numel():
                return None
            out[r] = mine.kthvalue(int(k) + 1).values
        return out

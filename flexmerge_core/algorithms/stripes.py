"""Stripes: per-row extremes of a group matrix read in column slices, and the entries behind them.

Why: PCB needs order statistics near both ends of each row of |X| (its clamp bounds) and the row
maximum of its scores P, over a [g, d] matrix too large to sort, to store twice or to revisit entry by
entry (566 MB at g = 30 on one ViT-B-32 MLP block). A stripe is STRIPE entries of one row evenly
spaced in a slice, so the max (min) of every stripe of a slice is one strided reduction (a contiguous
one over 16 neighbours is 12x slower on CPU). The k largest entries of a row lie in its k stripes with
the largest maxima (a stripe holding one of them has a max at least as large, and any stripe with a
larger max is among those k), so an order statistic near an end costs a topk over the stripe maxima
and one over the k * STRIPE entries gathered from the chosen stripes; the same argument one level up
(groups of STRIPE stripes) keeps the first topk small. (The previous selection, RowTails, spent 0.2 s
at g = 30 on per-slice index and nonzero calls.)
"""
from __future__ import annotations

import torch

STRIPE = 16  # entries per stripe; a slice's last n % STRIPE columns are stripes of one entry


class Stripes:
    """The stripe layout of a group's column slices over named tensors, fixed before they are read."""

    def __init__(self, slices):
        """slices: (name, columns) pairs, each a slice(start, stop) of tensor `name`'s columns."""
        self._names, self._pieces, self._spans = [], [], []
        count = 0
        for name, cols in slices:
            if name not in self._names:
                self._names.append(name)
            width = cols.stop - cols.start
            body = width - width % STRIPE
            index = self._names.index(name)
            for first, height, stripes in ((cols.start, STRIPE, body // STRIPE), (cols.start + body, 1, width - body)):
                if stripes:
                    self._pieces.append((index, first, height, stripes))
            self._spans.append(slice(count, count + body // STRIPE + width - body))
            count = self._spans[-1].stop
        self.count = count
        # room for whole groups of STRIPE stripes, the extra columns filled so that topk never picks them
        self.padded = -(-count // STRIPE) * STRIPE

    def span(self, i: int) -> slice:
        """The columns of slice i's stripes in an extremes tensor [g, padded]."""
        return self._spans[i]

    def extremes(self, g: int, largest: bool, dtype, device, scratch=None, key=None) -> torch.Tensor:
        """An empty [g, padded] tensor for stripe maxima (minima), its padding already filled (from
        scratch.empty(key, ...) when given)."""
        out = torch.empty(g, self.padded, dtype=dtype, device=device) if scratch is None \
            else scratch.empty(key, (g, self.padded))
        out[:, self.count:] = float("-inf") if largest else float("inf")
        return out

    def entries(self, tensors: dict, row: torch.Tensor, stripe: torch.Tensor) -> torch.Tensor:
        """[K, STRIPE]: the entries of stripes `stripe` of rows `row`, from tensors {name: [g, d_name]}
        ({name: [d_name]}: one value per column, row ignored); a short stripe repeats its last entry."""
        name, column, _ = self._columns(stripe)
        reference = next(iter(tensors.values()))
        out = torch.empty(column.shape, dtype=reference.dtype, device=reference.device)
        for i, n in enumerate(self._names):
            hit = (name == i).nonzero().squeeze(1)
            if hit.numel():
                t = tensors[n]
                out[hit] = t[row[hit].unsqueeze(1), column[hit]] if t.ndim == 2 else t[column[hit]]
        return out

    def order_statistic(self, extremes: torch.Tensor, rank: int, largest: bool, entries) -> torch.Tensor:
        """[g, 1]: each row's `rank`-th largest entry (1 = its max; counted from the smallest with
        largest=False), given extremes [g, padded] (every stripe's max, or min) and entries(row, stripe)
        -> [K, STRIPE] the stripes' values."""
        g = extremes.shape[0]
        if rank * STRIPE < self.count:  # first the best `rank` groups of STRIPE stripes, then their stripes
            groups = reduce(extremes, largest).topk(rank, dim=1, largest=largest).indices
            width = self.padded // STRIPE
            stripe = (groups.unsqueeze(2) + width * torch.arange(STRIPE, device=groups.device)).reshape(g, -1)
            best = extremes.gather(1, stripe).topk(rank, dim=1, largest=largest).indices
            stripe = stripe.gather(1, best)
        else:
            stripe = extremes[:, :self.count].topk(min(rank, self.count), dim=1, largest=largest).indices
        stripe = stripe.reshape(-1)
        values = entries(torch.arange(g, device=stripe.device).repeat_interleave(stripe.numel() // g), stripe)
        values.masked_fill_(self._columns(stripe)[2], float("-inf") if largest else float("inf"))  # no repeats
        return values.view(g, -1).topk(rank, dim=1, largest=largest).values[:, -1:]

    def _columns(self, stripe: torch.Tensor) -> tuple:
        """(tensor index [K], columns [K, STRIPE], repeated [K, STRIPE]) of the given stripes."""
        meta = torch.tensor(self._pieces, device=stripe.device)
        ends = meta[:, 3].cumsum(0)
        piece = torch.searchsorted(ends, stripe, right=True)
        name, first, height, width = meta[piece].unbind(1)
        step = torch.arange(STRIPE, device=stripe.device)
        column = (first + stripe - ends[piece] + width).unsqueeze(1)
        column = column + width.unsqueeze(1) * torch.minimum(step, height.unsqueeze(1) - 1)
        return name, column, step >= height.unsqueeze(1)


def reduce(values: torch.Tensor, largest: bool, out=None) -> torch.Tensor:
    """[g, n // STRIPE]: the max (min) of each stripe of the first n - n % STRIPE columns of values."""
    body = values.shape[1] - values.shape[1] % STRIPE
    stripes = values[:, :body].unflatten(1, (STRIPE, body // STRIPE))
    return torch.amax(stripes, dim=1, out=out) if largest else torch.amin(stripes, dim=1, out=out)


def stripe_extremes(values: torch.Tensor, largest: bool, out: torch.Tensor) -> torch.Tensor:
    """Each stripe's max (min) of a [g, n] slice (a 1-D [n] one: [n] per column) into out, in the
    layout Stripes gives the slice."""
    rows = values.view(-1, values.shape[-1])
    out = out.view(-1, out.shape[-1])
    body = rows.shape[1] - rows.shape[1] % STRIPE
    if body:
        reduce(rows, largest, out=out[:, :body // STRIPE])
    out[:, body // STRIPE:] = rows[:, body:]
    return out

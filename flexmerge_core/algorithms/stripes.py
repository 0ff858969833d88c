"""Stripes: per-row extremes of a group matrix fed in column slices, and the entries behind them.

Why: PCB needs order statistics near both ends of each row of |X| (its clamp bounds) and the row
maximum of its scores P, over a [g, d] matrix too large to sort, store twice or revisit entry by entry
(566 MB at g = 30 on one ViT-B-32 MLP block). A stripe is STRIPE entries of one row, evenly spaced in
a slice, so its max or min is one strided reduction of the slice (about what a copy costs in cache).
The k largest entries of a row lie in its k stripes with the largest maxima (a stripe holding one of
them has a max at least as large), so an order statistic near an end costs one topk over the stripe
maxima, [g, d / 16], and one over the k * 16 entries gathered from those stripes. (The previous
per-slice selection, RowTails, spent 0.2 s on 135 slices of index and nonzero calls at g = 30.)
"""
from __future__ import annotations

import torch

STRIPE = 16  # entries per stripe; the slice's last n % STRIPE columns are stripes of one entry


class Stripes:
    """The stripe layout of one group's slices, in the order they were added, over named tensors."""

    def __init__(self):
        self._names = []
        self._pieces = []  # (name index, first column, height, width): `width` stripes of `height` entries

    def add(self, name: str, start: int, width: int) -> None:
        """Register the slice of columns [start, start + width) of tensor `name` (the next slice)."""
        if name not in self._names:
            self._names.append(name)
        body = width - width % STRIPE
        if body:
            self._pieces.append((self._names.index(name), start, STRIPE, body // STRIPE))
        if body < width:
            self._pieces.append((self._names.index(name), start + body, 1, width - body))

    def entries(self, tensors: dict, row: torch.Tensor, stripe: torch.Tensor) -> torch.Tensor:
        """[K, STRIPE]: the entries of stripes `stripe` (indices into the concatenated extremes) of rows
        `row`, from tensors {name: [g, d_name]} ({name: [d_name]}: one value per column, row ignored);
        a stripe shorter than STRIPE repeats its last entry."""
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
        """[g, 1]: each row's `rank`-th largest entry (1 = the max; the smallest ones with largest=False).

        extremes: [g, stripes] each stripe's max (min); entries(row, stripe) -> [K, STRIPE] its values.
        """
        g, count = extremes.shape
        top = extremes.topk(min(rank, count), dim=1, largest=largest).indices.reshape(-1)
        values = entries(torch.arange(g, device=top.device).repeat_interleave(top.numel() // g), top)
        values.masked_fill_(self._columns(top)[2], float("-inf") if largest else float("inf"))  # no repeats
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


def stripe_reduce(values: torch.Tensor, largest: bool) -> torch.Tensor:
    """[g, stripes] max (min) of each stripe of a [g, n] slice, in the layout Stripes.add gives it."""
    g, n = values.shape
    body = n - n % STRIPE
    parts = []
    if body:
        stripes = values[:, :body].unflatten(1, (STRIPE, body // STRIPE))
        parts.append(stripes.amax(dim=1) if largest else stripes.amin(dim=1))
    if body < n:
        parts.append(values[:, body:])
    return torch.cat(parts, dim=1)

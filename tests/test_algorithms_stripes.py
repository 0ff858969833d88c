"""Stripes: order statistics near the ends of each row, and the entries behind stripes, against sorting."""
from __future__ import annotations

import pytest
import torch

from algorithm_cases import DEVICES
from flexmerge_core.algorithms.stripes import STRIPE, Stripes, stripe_extremes


def read_in_slices(x: torch.Tensor, slice_columns: int):
    """(Stripes, stripe maxima, stripe minima) of x [g, d] read as two named tensors in column slices."""
    parts = {"a": x[:, :300], "b": x[:, 300:]}
    layout = [(n, slice(s, min(s + slice_columns, t.shape[1]))) for n, t in parts.items()
              for s in range(0, t.shape[1], slice_columns)]
    stripes = Stripes(layout)
    top = stripes.extremes(x.shape[0], True, x.dtype, x.device)
    low = stripes.extremes(x.shape[0], False, x.dtype, x.device)
    for i, (n, cols) in enumerate(layout):
        stripe_extremes(parts[n][:, cols].contiguous(), True, top[:, stripes.span(i)])
        stripe_extremes(parts[n][:, cols].contiguous(), False, low[:, stripes.span(i)])
    return stripes, parts, top, low


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("slice_columns", [7, 40, 1000])
def test_order_statistics_match_sort_fed_in_slices(device, slice_columns):
    gen = torch.Generator().manual_seed(slice_columns)
    x = torch.randn(4, 1000, generator=gen, dtype=torch.float64).abs()
    x[0, :600] = 0.0  # more zeros than the low position
    x[1] = torch.randint(0, 3, (1000,), generator=gen).double()  # three distinct values
    x[2, 500:] *= 1e6  # the top values arrive last
    x = x.to(device)
    expected = x.cpu().sort(dim=1).values
    stripes, parts, top, low = read_in_slices(x, slice_columns)
    entries = lambda row, stripe: stripes.entries(parts, row, stripe)  # noqa: E731
    for low_position, high_position in [(0, 999), (2, 997), (37, 900), (500, 500)]:
        got_low = stripes.order_statistic(low, low_position + 1, False, entries)
        got_high = stripes.order_statistic(top, 1000 - high_position, True, entries)
        assert torch.equal(got_low.cpu()[:, 0], expected[:, low_position])
        assert torch.equal(got_high.cpu()[:, 0], expected[:, high_position])


def test_entries_are_the_stripes_own_columns():
    x = torch.arange(3 * 1000, dtype=torch.float64).view(3, 1000)
    stripes, parts, top, low = read_in_slices(x, 40)
    per_column = {n: t[0] for n, t in parts.items()}
    for stripe in range(stripes.count):
        row = torch.tensor([stripe % 3])
        got = stripes.entries(parts, row, torch.tensor([stripe]))[0]
        assert got.max() == top[row, stripe] and got.min() == low[row, stripe]  # its own entries
        assert torch.equal(stripes.entries(per_column, row, torch.tensor([stripe]))[0], got - 1000 * row)
    # every entry of the matrix lies in exactly one stripe
    everything = stripes.entries(parts, torch.zeros(stripes.count, dtype=torch.long), torch.arange(stripes.count))
    assert sorted(set(everything.flatten().tolist())) == list(range(1000))
    assert (torch.isinf(top[:, stripes.count:]) & (top[:, stripes.count:] < 0)).all()
    assert stripes.padded % STRIPE == 0

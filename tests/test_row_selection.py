"""One-read order statistics (row_selection.py) against sorting: near the ends of each row, inside a
predicted interval, with ties, zeros and values that arrive in the worst order; and their misses."""
from __future__ import annotations

import pytest
import torch

from algorithm_cases import DEVICES
from flexmerge_core.algorithms.columns import Scratch
from flexmerge_core.algorithms.row_selection import IntervalSelection, StreamedExtremes, predicted_interval


def awkward_rows(device, d=5000, seed=0) -> torch.Tensor:
    """Four rows: continuous, mostly zeros, three distinct values, and large values arriving last."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(4, d, generator=gen, dtype=torch.float64).abs()
    x[1, : 3 * d // 5] = 0.0
    x[2] = torch.randint(0, 3, (d,), generator=gen).double()
    x[3, d // 2:] *= 1e6
    return x.to(device)


def fed(x: torch.Tensor, width: int):
    return [x[:, s:s + width].contiguous() for s in range(0, x.shape[1], width)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("width", [7, 160, 1001])  # whole stripes, a ragged tail, one stripe of one entry
@pytest.mark.parametrize("largest", [True, False])
def test_streamed_extremes_match_sort(device, width, largest):
    x = awkward_rows(device, seed=width)
    extremes = StreamedExtremes(4, largest, cap=60)  # small: the cut moves many times
    for piece in fed(x, width):
        extremes.update(piece)
    ordered = x.cpu().sort(dim=1, descending=largest).values
    for rank in (1, 2, 17, 59, 60):
        got = extremes.select(torch.full((4,), rank))
        assert torch.equal(got.cpu(), ordered[:, rank - 1]), rank
    assert extremes.kept.size <= 2 * 60 * 4 + width * 4
    assert extremes.select(torch.tensor([1, 1, 61, 1])) is None  # deeper than the cap: a miss


def test_streamed_extremes_without_a_cut_keep_everything():
    x = awkward_rows("cpu", d=100)
    extremes = StreamedExtremes(4, True, cap=60)
    extremes.update(x)
    assert torch.equal(extremes.select(torch.full((4,), 100)), x.min(dim=1).values)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.5, 0.9, 0.99999])
def test_interval_selection_from_a_strided_sample_matches_sort(device, fraction):
    x = awkward_rows(device, d=100000, seed=int(fraction * 100))
    x[0, 100:110] = x[0, 5]  # ties inside the continuous row
    rank = min(int(x.shape[1] * fraction), x.shape[1] - 1)
    low, high = predicted_interval(x[:, ::97], rank / x.shape[1])
    selection = IntervalSelection(low, high)
    for piece in fed(x, 4096):
        selection.update(piece, Scratch(x.dtype, x.device))
    got = selection.select(torch.full((4,), rank))
    assert torch.equal(got.cpu(), x.cpu().sort(dim=1).values[:, rank])
    assert selection.kept.size < x.numel() // 4  # only what lies inside the bounds is kept


def test_predicted_interval_collapses_on_a_mass_of_equal_values():
    sample = torch.zeros(2, 1000)
    sample[:, 950:] = torch.arange(1.0, 51.0)
    low, high = predicted_interval(sample, 0.5)
    assert torch.equal(low, torch.zeros(2)) and torch.equal(high, torch.zeros(2))
    low, high = predicted_interval(torch.arange(1000.0).repeat(2, 1), 0.0)  # past the sample's end: open
    assert torch.equal(low, torch.full((2,), -float("inf"))) and torch.equal(high, torch.full((2,), 2.0))


def test_interval_selection_says_when_the_position_is_outside():
    x = torch.arange(1000.0).repeat(2, 1)
    selection = IntervalSelection(torch.tensor([10.0, 10.0]), torch.tensor([20.0, 20.0]))
    selection.update(x, Scratch(x.dtype, x.device))
    assert torch.equal(selection.select(torch.tensor([10, 19])), torch.tensor([10.0, 19.0]))
    assert selection.select(torch.tensor([10, 20])) is None and selection.select(torch.tensor([9, 15])) is None

"""One-read order statistics (row_selection.py) against sorting: near the ends of each row, inside a
predicted interval, with ties, zeros and values that arrive in the worst order; and their misses."""
from __future__ import annotations

import pytest
import torch

from algorithm_cases import DEVICES
import flexmerge_core.algorithms.row_selection as row_selection
from flexmerge_core.algorithms.columns import Scratch
from flexmerge_core.algorithms.row_selection import IntervalSelection, StreamedExtremes


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
def test_streamed_extremes_match_sort(monkeypatch, device, width, largest):
    monkeypatch.setattr(row_selection, "CAP", 60)  # the cut moves many times
    x = awkward_rows(device, seed=width)
    extremes = StreamedExtremes(4, largest)
    for piece in fed(x, width):
        extremes.update(piece)
    ordered = x.cpu().sort(dim=1, descending=largest).values
    for rank in (1, 2, 17, 59, 60):
        got = extremes.select(torch.full((4,), rank))
        assert torch.equal(got.cpu(), ordered[:, rank - 1]), rank
    assert extremes.kept.size <= 2 * 60 * 4 + width * 4
    assert extremes.select(torch.tensor([1, 1, 61, 1])) is None  # deeper than the cap: a miss


def test_streamed_extremes_without_a_cut_keep_everything(monkeypatch):
    monkeypatch.setattr(row_selection, "CAP", 60)
    x = awkward_rows("cpu", d=100)
    extremes = StreamedExtremes(4, True)
    extremes.update(x)
    assert torch.equal(extremes.select(torch.full((4,), 100)), x.min(dim=1).values)


@pytest.mark.parametrize("largest", [True, False])
def test_streamed_extremes_grow_their_cap_with_the_depth_asked(monkeypatch, largest):
    monkeypatch.setattr(row_selection, "CAP", 16)
    x = torch.randn(2, 20000, generator=torch.Generator().manual_seed(3), dtype=torch.float64)  # no ties
    depth = lambda n: n // 100 + 1  # noqa: E731  (the caller's rank when the rows end after n entries)
    extremes = StreamedExtremes(2, largest, depth)
    for piece in fed(x, 256):
        extremes.update(piece)
    ordered = x.sort(dim=1, descending=largest).values
    assert torch.equal(extremes.select(torch.full((2,), 201)), ordered[:, 200])   # deeper than CAP
    assert extremes.kept.size <= 2 * 2 * 2 * depth(20000) + 2 * 256  # within twice the cap per row


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.5, 0.9, 0.99999])
def test_interval_selection_from_a_strided_sample_matches_sort(device, fraction):
    x = awkward_rows(device, d=100000, seed=int(fraction * 100))
    x[0, 100:110] = x[0, 5]  # ties inside the continuous row
    rank = min(int(x.shape[1] * fraction), x.shape[1] - 1)
    selection = IntervalSelection.predicted(x[:, ::97], rank / x.shape[1])
    for piece in fed(x, 4096):
        selection.update(piece, Scratch(x.dtype, x.device))
    got = selection.select(torch.full((4,), rank))
    assert torch.equal(got.cpu(), x.cpu().sort(dim=1).values[:, rank])
    assert selection.kept.size < x.numel() // 4  # only what lies inside the bounds is kept


def test_predicted_bounds_count_a_mass_of_equal_values_instead_of_keeping_it():
    sample = torch.zeros(2, 1000)
    sample[:, 950:] = torch.arange(1.0, 51.0)
    tied = IntervalSelection.predicted(sample, 0.5)                 # the position lies in the mass
    assert torch.equal(tied.low[:, 0], torch.zeros(2)) and tied.counted.all() and (tied.last < tied.first).all()
    edge = IntervalSelection.predicted(sample, 0.94)                # the mass is the low bound
    assert torch.equal(edge.low[:, 0], torch.zeros(2)) and edge.counted.all() and (edge.first > 0).all()
    opened = IntervalSelection.predicted(torch.arange(1000.0).repeat(2, 1), 0.0)  # past the sample's end
    assert torch.equal(opened.low[:, 0], torch.full((2,), -float("inf"))) and not opened.counted.any()
    assert torch.equal(opened.last[:, 0], torch.full((2,), 2.0))


def test_a_counted_mass_is_selected_exactly_and_not_kept():
    x = torch.zeros(3, 50000, dtype=torch.float64)
    x[:, 40000:] = torch.rand(3, 10000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x[1] = -x[1]                                                    # the mass above the position
    for fraction in (0.5, 0.79, 0.81, 0.95):
        rank = int(x.shape[1] * fraction)
        selection = IntervalSelection.predicted(x[:, ::97], fraction)
        for piece in fed(x, 4096):
            selection.update(piece, Scratch(x.dtype, x.device))
        assert torch.equal(selection.select(torch.full((3,), rank)), x.sort(dim=1).values[:, rank]), fraction
        assert selection.kept.size < 3 * 10000


def test_interval_selection_says_when_the_position_is_outside():
    x = torch.arange(1000.0).repeat(2, 1)
    no = torch.zeros(2, dtype=torch.bool)
    selection = IntervalSelection(torch.tensor([10.0, 10.0]), torch.tensor([20.0, 20.0]), no, no)
    selection.update(x, Scratch(x.dtype, x.device))
    assert torch.equal(selection.select(torch.tensor([10, 20])), torch.tensor([10.0, 20.0]))  # bounds included
    assert selection.select(torch.tensor([10, 21])) is None and selection.select(torch.tensor([9, 15])) is None

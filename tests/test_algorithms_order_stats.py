"""Streamed radix selection equals sorting the whole concatenated rows, for float32 and float64."""
from __future__ import annotations

import pytest
import torch

import flexmerge_core.algorithms.order_stats as order_stats
from algorithm_cases import DEVICES


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_selection_matches_sort_across_chunks_signs_and_ties(device, dtype, monkeypatch):
    monkeypatch.setattr(order_stats, "STAGE", 50)  # 50 columns staged at a time: boundaries inside tensors
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 300, generator=gen, dtype=dtype) * torch.logspace(-30, 30, 300, dtype=dtype)
    x[0, :150] = 0.0
    x[1, :20] = -0.0
    x[2] = x[2].sign() * 2.0  # only two distinct values
    x = x.to(device)
    parts = [x[:, :7].reshape(3, 7), x[:, 7:200].reshape(3, 1, 193), x[:, 200:]]
    wanted = [0, 1, 149, 150, 151, 299]
    got = order_stats.streamed_order_statistics(lambda: iter(parts), lambda d: torch.tensor(wanted))
    assert got.dtype == dtype and torch.equal(got.cpu(), x.cpu().sort(dim=1).values[:, wanted])
    per_row = torch.tensor([[0], [5], [299]])
    got = order_stats.streamed_order_statistics(lambda: iter(parts), lambda d: per_row)
    assert torch.equal(got.cpu()[:, 0], x.cpu().sort(dim=1).values[[0, 1, 2], [0, 5, 299]])



def _sorted_with_signed_zeros(x: torch.Tensor) -> torch.Tensor:
    """torch.sort of each row, with -0.0 placed before +0.0 (sort keeps them in input order)."""
    values = x.sort(dim=1).values
    for r in range(x.shape[0]):
        first, negative = int((x[r] < 0).sum()), int((torch.signbit(x[r]) & (x[r] == 0)).sum())
        zeros = int((x[r] == 0).sum())
        values[r, first:first + zeros] = 0.0
        values[r, first:first + negative] = -0.0
    return values


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("absolute", [False, True])
@pytest.mark.parametrize("candidates", [0, 40, 1 << 24])  # histogram every digit / some digits / select at once
def test_selection_is_exact_whichever_way_it_narrows(device, dtype, absolute, candidates, monkeypatch):
    monkeypatch.setattr(order_stats, "STAGE", 64)
    monkeypatch.setattr(order_stats, "CANDIDATES", candidates)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 500, generator=gen, dtype=dtype) * torch.logspace(-3, 3, 500, dtype=dtype)
    x[1] = 0.75  # an all-equal row
    x[2, :100], x[2, 100:160] = -0.0, 0.0  # negative and positive zeros around the positions
    x[3] = torch.randint(-2, 3, (500,), generator=gen).to(dtype) * 0.5  # ties at every position
    x = x.to(device)
    parts = [x[:, :130], x[:, 130:131].reshape(4, 1, 1), x[:, 131:].reshape(4, 3, 123)]
    stream = (lambda: (p.abs() for p in parts)) if absolute else (lambda: iter(parts))
    expected = _sorted_with_signed_zeros((x.abs() if absolute else x).cpu())
    wanted = torch.tensor([[0, 99, 100, 159, 160, 499], [0, 1, 250, 250, 498, 499],
                           [0, 99, 100, 101, 159, 160], [7, 100, 200, 300, 400, 450]])
    for use_flag in ([False, True] if absolute else [False]):
        source = (lambda: iter(parts)) if use_flag else stream
        got = order_stats.streamed_order_statistics(source, lambda d: wanted, absolute=use_flag).cpu()
        reference = expected.gather(1, wanted)
        assert got.dtype == dtype and torch.equal(got, reference)
        assert torch.equal(torch.signbit(got), torch.signbit(reference))  # -0.0 and +0.0 told apart

def test_bad_positions_and_empty_streams_are_refused():
    with pytest.raises(ValueError, match="within"):
        order_stats.streamed_order_statistics(lambda: iter([torch.ones(2, 3)]), lambda d: torch.tensor([d]))
    with pytest.raises(ValueError, match="empty"):
        order_stats.streamed_order_statistics(lambda: iter([]), lambda d: torch.tensor([0]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("absolute", [False, True])
@pytest.mark.parametrize("candidates", [0, 3, 1 << 24])  # the zero bucket's other keys overflow / fit
def test_zero_buckets_are_counted_not_kept_and_overflow_into_narrowing(dtype, absolute, candidates, monkeypatch):
    """DARE-like rows: 75% exact zeros, so the wanted positions fall among them or just past them;
    row 1 adds tiny denormals, which share the bucket of 0 (it is then searched for them alone).
    Streamed as dense rows, as SparseRows (the +0.0 counted, not listed) and mixed."""
    monkeypatch.setattr(order_stats, "STAGE", 64)
    monkeypatch.setattr(order_stats, "CANDIDATES", candidates)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 400, generator=gen, dtype=dtype)
    x[:, :300] = 0.0
    tiny = torch.arange(1, 11, dtype=torch.int32 if dtype == torch.float32 else torch.int64)
    x[1, 300:310] = tiny.view(dtype) * torch.tensor([1.0, -1.0], dtype=dtype).repeat(5)  # +-k * smallest denormal
    x[2, :5] = -0.0
    x = x[:, torch.randperm(400, generator=gen)]
    parts = [x[:, :90], x[:, 90:100], x[:, 100:].reshape(3, 30, 10)]
    listed = [order_stats.SparseRows([row[~((row == 0) & ~torch.signbit(row))] for row in part.reshape(3, -1)],
                                     [int(((row == 0) & ~torch.signbit(row)).sum()) for row in part.reshape(3, -1)])
              for part in parts]  # the same rows, +0.0 counted, not listed
    expected = _sorted_with_signed_zeros(x.abs() if absolute else x)
    wanted = torch.tensor([0, 150, 299, 300, 301, 305, 399])
    for items in (parts, listed, [listed[0], parts[1], listed[2]]):
        got = order_stats.streamed_order_statistics(lambda: iter(items), lambda d: wanted, absolute=absolute)
        reference = expected[:, wanted]
        assert got.dtype == dtype and torch.equal(got, reference)
        assert torch.equal(torch.signbit(got), torch.signbit(reference))


def test_a_stream_that_changes_between_passes_is_refused():
    values = iter([torch.tensor([[0.0, 1.0, 2.0, 3.0]]), torch.tensor([[0.0, 1.0, 2.0, 2.5]])])
    with pytest.raises(RuntimeError, match="changed between passes"):
        order_stats.streamed_order_statistics(lambda: iter([next(values)]), lambda d: torch.tensor([3]))

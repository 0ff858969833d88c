"""Streamed radix selection equals sorting the whole concatenated rows, for float32 and float64."""
from __future__ import annotations

import pytest
import torch

import flexmerge_core.algorithms.order_stats as order_stats
from algorithm_cases import DEVICES


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_selection_matches_sort_across_chunks_signs_and_ties(device, dtype, monkeypatch):
    monkeypatch.setattr(order_stats, "CHUNK", 150)  # 50 columns a chunk: boundaries inside tensors
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


def test_bad_positions_and_empty_streams_are_refused():
    with pytest.raises(ValueError, match="within"):
        order_stats.streamed_order_statistics(lambda: iter([torch.ones(2, 3)]), lambda d: torch.tensor([d]))
    with pytest.raises(ValueError, match="empty"):
        order_stats.streamed_order_statistics(lambda: iter([]), lambda d: torch.tensor([0]))

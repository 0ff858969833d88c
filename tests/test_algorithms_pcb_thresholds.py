"""PCB's global pass (pcb_thresholds.py) against the radix selection over whole-block scores it replaced:
the same bits, in two reads, and when its one-read selections miss, through their fallbacks."""
from __future__ import annotations

import pytest
import torch

import flexmerge_core.algorithms.pcb_thresholds as thresholds
import flexmerge_core.algorithms.row_selection as row_selection
from flexmerge_core.algorithms import get_algorithm
from flexmerge_core.algorithms.order_stats import streamed_order_statistics
from flexmerge_core.algorithms.pcb_scores import Scores, clamp_positions

Q, KEEP = 1e-4, 0.1


def model(dtype=torch.float32) -> list:
    """Three blocks of 5 tasks, 123k values per task; widths whole multiples of the slices' alignment."""
    gen = torch.Generator().manual_seed(7)
    blocks = [[torch.randn(5, 57600, generator=gen), torch.randn(5, 320, generator=gen)],
              [torch.randn(5, 64, generator=gen)], [torch.randn(5, 65536, generator=gen) * 3]]
    blocks[0][0][:, :5000] = 0.0      # a mass of zeros
    blocks[2][0][1, ::7] = 0.25       # ties
    return [[(t * 1e-2).to(dtype) for t in block] for block in blocks]


def radix_reference(blocks: list) -> tuple:
    """The old global pass: whole blocks flattened, two radix selections (four reads)."""
    rows = lambda: (torch.cat(block, dim=1) for block in blocks)  # noqa: E731
    bounds = streamed_order_statistics(rows, lambda d: torch.tensor(clamp_positions(d, Q)), absolute=True)
    scores = Scores.of_group(bounds[:, :1], bounds[:, 1:], 5)
    found = streamed_order_statistics(lambda: (scores.of(X, X.sum(dim=0)) for X in rows()),
                                      lambda d: torch.tensor([min(int(d * (1 - KEEP)), d - 1), d - 1]))
    return found[:, 0], found[:, 1]


def counted(blocks: list, reads: list):
    def stream():
        reads.append(1)
        return iter(blocks)
    return stream


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cap", [None, 64])  # 64: the clamp bounds' cut moves many times
def test_two_reads_give_the_radix_selections_bits(monkeypatch, dtype, cap):
    if cap is not None:
        monkeypatch.setattr(row_selection, "CAP", cap)
    blocks, reads = model(dtype), []
    threshold, maximum = thresholds.global_thresholds(counted(blocks, reads), Q, KEEP)
    expected = radix_reference(blocks)
    assert torch.equal(threshold, expected[0]) and torch.equal(maximum, expected[1])
    assert len(reads) == 2


def test_missed_selections_fall_back_to_the_radix_selection(monkeypatch):
    blocks = model()
    class Missing(row_selection.StreamedExtremes):  # as when a clamp bound lies deeper than was kept
        def select(self, rank):
            return None

    monkeypatch.setattr(thresholds, "StreamedExtremes", Missing)
    class Wrong(row_selection.IntervalSelection):  # bounds that miss the threshold
        @classmethod
        def predicted(cls, sample, fraction):
            bound, no = lambda v: torch.full(sample.shape[:1], v, dtype=sample.dtype), torch.zeros(sample.shape[0]) > 0
            return cls(bound(-3.0), bound(-2.0), no, no)

    monkeypatch.setattr(thresholds, "IntervalSelection", Wrong)
    reads = []
    threshold, maximum = thresholds.global_thresholds(counted(blocks, reads), Q, KEEP)
    expected = radix_reference(blocks)
    assert torch.equal(threshold, expected[0]) and torch.equal(maximum, expected[1])
    assert len(reads) == 2 + 2 + 2


def test_row_bytes_counts_the_vectors_and_their_summary_exactly():
    """Row caches budget a task's rows by row_bytes: it must equal what preprocess_inputs keeps."""
    shapes = [(70000,), (300, 7), (5,), ()]
    generator = torch.Generator().manual_seed(4)
    block = {f"t{i}": torch.randn((1,) + s, generator=generator) for i, s in enumerate(shapes)}
    pcb = get_algorithm("pcb")
    kept = pcb.preprocess_inputs(block, tasks=[0])
    assert pcb.row_bytes(shapes) == sum(t.numel() * t.element_size() for t in kept.values())

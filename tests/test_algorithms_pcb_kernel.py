"""PCB's fast merge paths against the float64 reference: the Taylor tanh, the row max from stripe
bounds (forced on small blocks, where one full pass is otherwise cheaper), small task-vector-like values."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import flexmerge_core.algorithms.pcb as pcb_module
import flexmerge_core.algorithms.pcb_scores as pcb_scores
from algorithm_cases import GROUP_SIZES
from flexmerge_core.algorithms import get_algorithm
from test_algorithms_pcb_tsv import M, assert_relative, merged_np, random_model, ref_pcb


@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 2e-7), (torch.float64, 5e-16)])
@pytest.mark.parametrize("bound", [1e-9, 1e-4, 0.02, 0.09, 0.18, 0.28])
def test_tanh_series_is_tanh_up_to_its_bound(dtype, rtol, bound):
    values = (torch.rand(20000, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1) * bound
    values = torch.cat([values, torch.tensor([bound, -bound, 0.0], dtype=torch.float64)]).to(dtype)
    got = pcb_scores.tanh_(values.clone(), bound).double().numpy()
    expected = np.tanh(values.double().numpy())
    assert np.allclose(got, expected, rtol=rtol, atol=0)


def test_tanh_series_lengths_follow_the_bound():
    bounds = (1e-4, 0.02, 0.09, 0.18, 0.28, 0.3)
    assert [pcb_scores.series_terms(b, torch.float32) for b in bounds] == [1, 2, 3, 4, 5, None]
    assert pcb_scores.series_terms(1e-9, torch.float64) == 1 and pcb_scores.series_terms(0.05, torch.float64) is None


def merge_all_blocks(model, members, **options):
    pcb = get_algorithm("pcb", **options)
    pcb.prepare(lambda: iter(model))
    return [merged_np(pcb.merge({n: t[members] for n, t in block.items()}, members)) for block in model]


@pytest.mark.parametrize("g", GROUP_SIZES)
@pytest.mark.parametrize("scale", [1.0, 1e-3])  # O(1) values take expm1, task-vector-sized ones the series
def test_row_max_from_stripe_bounds_matches_reference(monkeypatch, g, scale):
    monkeypatch.setattr(pcb_module, "CANDIDATE_SHARE", 1)  # never fall back to the full pass for the max
    monkeypatch.setattr(pcb_module, "SMALL_GROUP", 0)      # not even in these small blocks
    full_passes = []
    exact_range = pcb_module.exact_range
    monkeypatch.setattr(pcb_module, "exact_range", lambda *a: full_passes.append(1) or exact_range(*a))
    model = [{n: t * scale for n, t in block.items()} for block in random_model(seed=10 + g)]
    members = sorted(np.random.default_rng(g).choice(M, size=g, replace=False).tolist())
    for b, got in enumerate(merge_all_blocks(model, members)):
        assert_relative(got, ref_pcb(model, b, members), 1e-6)
    assert len(full_passes) < len(model)  # the stripe bounds settle the range in most blocks


def test_small_float32_values_stay_close_to_the_float64_reference():
    model64 = [{n: t * 1e-2 for n, t in block.items()} for block in random_model(seed=4)]
    model32 = [{n: t.float() for n, t in block.items()} for block in model64]
    members = [0, 1, 3, 4, 5]
    for b, got in enumerate(merge_all_blocks(model32, members, lam=0.7)):
        assert_relative(got, ref_pcb(model64, b, members, lam=0.7), 1e-4)

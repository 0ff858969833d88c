"""Consensus (TALL masks) and EMR: check values, references, and mask-method reconstruction."""
from __future__ import annotations

import pytest
import torch

from algorithm_cases import DEVICES, GROUP_SIZES, SHAPES, dyadic_block, reference_ties_merge
from flexmerge_core.algorithms import get_algorithm
from flexmerge_core.algorithms.base import flatten_rows as flat, unflatten_row as unflat


def test_emr_check_values():
    block = {"w": torch.tensor([[1.0, -2, 3], [-1, -1, 1], [2, 0, -1]])}
    res = get_algorithm("emr").merge(block, [0, 1, 2])
    assert res.unified["w"].tolist() == [2, -2, 3]
    assert res.masks["w"].int().tolist() == [[1, 1, 1], [0, 1, 1], [1, 0, 0]]
    assert torch.allclose(res.scales, torch.tensor([6 / 7, 3 / 5, 3 / 2]))


def test_consensus_mask_is_strict():
    # tau_0 = 1 and u = ties_merge([1], [4], [4]) = 3: |1| > 0.5 * |3 - 1| is false
    block = {"w": torch.tensor([[1.0], [4.0], [4.0]])}
    res = get_algorithm("consensus", mask_lambda=0.5).merge(block, [0, 1, 2])
    assert res.unified["w"].tolist() == [3.0]
    assert res.masks["w"][:, 0].tolist() == [False, True, True]


def reference_emr(rows_by_tensor: dict):
    """Per tensor loops as written in ALGORITHMS.md; returns (u, masks, gamma)."""
    u, masks = {}, {}
    g = next(iter(rows_by_tensor.values())).shape[0]
    own, kept = [0.0] * g, [0.0] * g
    for name, rows in rows_by_tensor.items():
        d = rows.shape[1]
        flag = [1.0 if float(rows[:, j].sum()) / g > 0 else -1.0 for j in range(d)]
        mask = torch.tensor([[float(rows[k, j]) * flag[j] > 0 for j in range(d)] for k in range(g)])
        u[name] = torch.tensor([flag[j] * max(abs(float(rows[k, j])) * mask[k, j] for k in range(g))
                                for j in range(d)])
        masks[name] = mask
        for k in range(g):
            own[k] += float(rows[k].abs().mean())
            kept[k] += float((mask[k] * u[name]).abs().mean())
    gamma = [own[k] / kept[k] if kept[k] != 0 else 1.0 for k in range(g)]
    return u, masks, gamma


def per_tensor_rows(block: dict) -> dict:
    return {n: t.reshape(t.shape[0], -1).cpu() for n, t in block.items()}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape_index", range(len(SHAPES)))
@pytest.mark.parametrize("g", GROUP_SIZES)
def test_emr_matches_reference_and_reconstructs(device, shape_index, g):
    block = dyadic_block(SHAPES[shape_index], g, seed=40 + g + shape_index, device=device)
    members = list(range(2, 2 + g))
    algo = get_algorithm("emr")
    res = algo.merge(block, members)
    if g <= 2:  # not merged: each member keeps its own vector
        assert not res.merged
        for k, task in enumerate(members):
            assert all(torch.equal(v, block[n][k]) for n, v in algo.reconstruct(res, task).items())
        return
    u, masks, gamma = reference_emr(per_tensor_rows(block))
    assert torch.allclose(res.scales.cpu(), torch.tensor(gamma), rtol=1e-6)
    pretrained = {n: torch.full(t.shape[1:], 0.75) for n, t in block.items()}
    for n, t in block.items():
        assert torch.equal(res.unified[n].cpu().reshape(-1), u[n])
        assert torch.equal(res.masks[n].cpu().reshape(g, -1), masks[n])
    for k, task in enumerate(members):
        rebuilt = algo.reconstruct(res, task)
        for n in block:
            expected = pretrained[n] + gamma[k] * masks[n][k].float().reshape(pretrained[n].shape) \
                * u[n].reshape(pretrained[n].shape)
            assert torch.allclose(pretrained[n] + rebuilt[n].cpu(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", ["consensus", "consensus_ta"])
@pytest.mark.parametrize("g", [3, 4, 5, 6])
def test_consensus_matches_reference_and_reconstructs(device, variant, g):
    block = dyadic_block(SHAPES[g % 3], g, seed=70 + g, device=device)
    members = list(range(g))
    algo = get_algorithm(variant)
    rows = flat(block).cpu()
    if variant == "consensus":
        u = reference_ties_merge(rows, 1.0)
    else:
        u = 1.5 * (sum(rows[i] for i in range(g)) / g)
    # entry by entry, in float32 like the stored vectors (the strict comparison is rounding-sensitive)
    masks = torch.stack([torch.tensor([bool(rows[k, j].abs() > 0.6 * (u[j] - rows[k, j]).abs())
                                       for j in range(rows.shape[1])]) for k in range(g)])
    res = algo.merge(block, members)
    assert torch.equal(flat({n: v.unsqueeze(0) for n, v in res.unified.items()}).cpu()[0], u)
    assert torch.equal(flat(res.masks).cpu(), masks)
    for k in members:
        rebuilt = flat({n: v.unsqueeze(0) for n, v in algo.reconstruct(res, k).items()}).cpu()[0]
        assert torch.equal(rebuilt, masks[k].float() * u)  # theta_pre + m_k * u, minus theta_pre


@pytest.mark.parametrize("name", ["consensus", "consensus_ta", "emr"])
def test_mask_methods_are_finite_on_zero_and_constant_blocks(name):
    for block in ({"w": torch.zeros(4, 3, 2)}, {"w": torch.full((4, 3, 2), -0.5)}):
        res = get_algorithm(name).merge(block, [0, 1, 2, 3])
        assert torch.isfinite(res.unified["w"]).all() and torch.isfinite(res.scales).all()
    res = get_algorithm("emr").merge({"w": torch.zeros(3, 4)}, [0, 1, 2])
    assert res.scales.tolist() == [1.0, 1.0, 1.0]  # zero denominator -> gamma 1


def test_mask_storage_and_group_sizes():
    assert get_algorithm("emr").storage == "mask" and get_algorithm("consensus").storage == "mask"
    assert not get_algorithm("emr").merges_group(2) and get_algorithm("emr").merges_group(3)
    assert get_algorithm("tsv").merges_group(2) and not get_algorithm("tsv").merges_group(1)
    assert unflat(torch.arange(3.0), {"w": torch.zeros(1, 3)})["w"].tolist() == [0, 1, 2]

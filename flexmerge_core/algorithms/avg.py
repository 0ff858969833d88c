"""avg: the plain mean of the group's task vectors (no hyperparameters).

Cost model: one read of the group, the memory-bandwidth floor every other merge is measured against
(one ViT-B-32 MLP block: 0.038 s of one thread's CPU time at g = 30, 0.014 s at g = 8).
Shared: the mean of the raw rows is the basis of ta and consensus_ta too (base.py `basis_key`), so a
merger handed a group's mean by one of them copies it instead of reading the group again.
"""
from __future__ import annotations

from flexmerge_core.algorithms.base import MergeAlgorithm


def group_mean(block: dict) -> dict:
    """The members' mean per tensor: avg's merge, and the basis ta, dare_ta and consensus_ta scale."""
    return {n: t.mean(dim=0) for n, t in block.items()}


class Average(MergeAlgorithm):
    name = "avg"
    tensorwise = True
    basis = staticmethod(group_mean)

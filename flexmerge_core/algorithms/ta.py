"""ta (task arithmetic): lam * mean of the task vectors.

The paper scales the mean rather than the sum so the strength does not grow with the group size.
Cost model: averaging's one read of the group plus a scaling of the [d] result (1.0x averaging at g = 30).
Shared: its basis is the group's mean of the raw rows, avg's and consensus_ta's too (whatever their lam),
so after one of them a group costs ta one scaling; dare_ta's basis is the mean of its dropped rows.
"""
from __future__ import annotations

from flexmerge_core.algorithms.avg import group_mean
from flexmerge_core.algorithms.base import HyperParam, MergeAlgorithm

LAMBDA = HyperParam("lam", 1.5, float, 0.0, 10.0, help="scaling of the mean task vector")


class TaskArithmetic(MergeAlgorithm):
    name = "ta"
    tensorwise = True
    params = (LAMBDA,)
    basis, basis_scale = staticmethod(group_mean), "lam"

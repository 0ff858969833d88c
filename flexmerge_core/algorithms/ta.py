"""ta (task arithmetic): lam * mean of the task vectors.

The paper scales the mean rather than the sum so the strength does not grow with the group size.
Cost model: averaging's one read of the group plus a scaling of the [d] result (1.0x averaging at g = 30).
"""
from __future__ import annotations

from flexmerge_core.algorithms.base import HyperParam, MergeAlgorithm, MergeResult

LAMBDA = HyperParam("lam", 1.5, float, 0.0, 10.0, help="scaling of the mean task vector")


class TaskArithmetic(MergeAlgorithm):
    name = "ta"
    tensorwise = True
    params = (LAMBDA,)

    def _merge(self, block, members):
        lam = self._hp["lam"]
        # scaled in place: the same products as lam * mean (multiplication commutes exactly), no second tensor
        return MergeResult(unified={n: t.mean(dim=0).mul_(lam) for n, t in block.items()})

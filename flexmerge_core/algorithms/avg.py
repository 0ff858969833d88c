"""avg: the plain mean of the group's task vectors (no hyperparameters)."""
from __future__ import annotations

from flexmerge_core.algorithms.base import MergeAlgorithm, MergeResult


class Average(MergeAlgorithm):
    name = "avg"

    def _merge(self, block, members):
        return MergeResult(unified={n: t.mean(dim=0) for n, t in block.items()})

"""Merged groups' bases (what a unified vector is a scaled copy of), computed once per group and shared by
every algorithm that scales the same basis of the same rows.

Why: Compare, findings and recommend merge the same groups of one zoo with several algorithms, and many of
them scale one basis: ta, avg and consensus_ta the group's mean of the raw rows, consensus (any lam) the
disjoint mean of the raw rows, ties and dare_* the mean or disjoint mean of their preprocessed rows at
any lam. Each merger's memo is keyed by its own algorithm, so without this each one recomputed the basis.

Key of one basis: (zoo fingerprint, block params, members, basis_key, device). basis_key
(MergeAlgorithm) names the basis function and the rows it reads (preprocessing_key), never the scale:
ta's and consensus_ta's mean of the raw rows share one key, dare_ta's mean of its dropped rows and ties'
disjoint mean of its trimmed rows have their own. Algorithms without a basis (pcb, tsv, emr) store none.
Stored bases are never changed: a merge handed one writes its scaled copy to a new tensor, so results are
bit-identical shared or not. Measured (benchmarks/bench_group_bases.py, 8-task fp32 ViT-B-32 zoo, every
group of one plan, ta then consensus_ta, CPU time of one thread, 3 alternating rounds on 2 shared cores):
consensus_ta 3.3-3.8 s shared against 4.1-4.3 s not (its mean was ta's), both merges 6.5-7.5 s against
7.8-8.2 s. A mean costs about one read of the group, so holding one pays most where groups are large
(consensus_ta's kernel on a ViT-B-32 MLP block: 17 -> 13.5 ms at g = 8, 97 -> 76 ms at g = 30). Bounded: least recently used out within $FLEXMERGE_BASES_BYTES, else a
sixteenth of the memory available (memo.budget_from_env); an evicted basis is only computed again.
"""
from __future__ import annotations

import threading
from typing import Optional, Sequence

import torch

from flexmerge_core.algorithms.base import MergeAlgorithm
from flexmerge_core.byte_budget_lru import ByteBudgetLRU
from flexmerge_core.deployment.memo import budget_from_env, tensors_bytes

BASES_ENV = "FLEXMERGE_BASES_BYTES"


class GroupBases:
    """basis(zoo, block, members, algorithm, device, vectors) -> the group's basis, computed once per key.

    `computed` counts the bases computed here (tests and benchmarks check the sharing with it); safe to
    share between threads and mergers.
    """

    def __init__(self, budget: Optional[int] = None):
        self.lru = ByteBudgetLRU(budget_from_env(BASES_ENV, 16) if budget is None else budget)
        self.computed = 0
        self._lock = threading.Lock()

    def basis(self, zoo, block, members: Sequence[int], algorithm: MergeAlgorithm, device,
              vectors: dict) -> Optional[dict]:
        """The basis of the group whose preprocessed rows are `vectors` (None: the algorithm has none).
        `block` has .params (a planning Block); members are the rows' task ids, ascending."""
        if algorithm.basis_key is None:
            return None
        key = (zoo.fingerprint, tuple(block.params), tuple(int(m) for m in members), algorithm.basis_key,
               str(torch.device(device)))
        with self._lock:
            found = self.lru.get(key)
        if found is None:
            found = algorithm.group_basis(vectors)
            with self._lock:
                self.computed += 1
                self.lru.put(key, found, tensors_bytes(found))
        return found

"""Per-group merge results, computed once and reused for every deployment size.

Why: a group's result depends only on (block, task set, algorithm + hyperparameters), and moving the
size slider re-uses almost every group, so recomputing would make the app crawl. GroupMerger keeps an
in-memory memo keyed by exactly that (bounded in bytes, least recently used out: memo.py); an optional
on-disk cache (an object with `load(key) -> MergeResult | None` and `store(key, result)`) is consulted
behind the memo.
"""
from __future__ import annotations

from typing import Optional, Sequence

from flexmerge_core.algorithms.base import MergeAlgorithm, MergeResult
from flexmerge_core.cache import content_hash
from flexmerge_core.byte_budget_lru import ByteBudgetLRU
from flexmerge_core.deployment.group_bases import GroupBases
from flexmerge_core.deployment.memo import default_memo_bytes, tensors_bytes
from flexmerge_core.deployment.prepared_rows import PreparedRows, load_rows
from flexmerge_core.planning.similarity import pick_device


class GroupMerger:
    """result(block_index, members) -> MergeResult, memoised per (block, members, algorithm.key).

    Members' vectors come from zoo.task_vectors(block params), through the row cache (prepared_rows.py:
    each task's rows read and preprocessed once per block, not once per group). Merged groups get the
    algorithm's preprocessing (after one `prepare` pass over the whole zoo, run lazily the first
    time a group is merged); groups the algorithm does not merge (singletons, mask-method pairs)
    keep their members' raw vectors, so reconstruction gives the fine-tuned model exactly.
    memo_bytes: the memo's byte budget (default: memo.default_memo_bytes()). memo=False keeps nothing in
    memory: for callers that visit each group once (a streamed export), where the memo would only churn.
    rows: the PreparedRows the members' (preprocessed) rows come from, shared with other mergers of the
    zoo (pipeline.py hands one to all); None: a private one, or with memo=False none (each group reads
    and preprocesses its members itself, so a streamed export holds one block at a time).
    bases: the GroupBases merged groups' bases come from, shared with the zoo's other mergers (Studio,
    findings and recommend hand one to all), so ta after consensus_ta scales each group's mean instead of
    computing it; None: each merge computes its own (nothing else would reuse it).
    """

    def __init__(self, zoo, spec, algorithm: MergeAlgorithm, cache=None, device=None,
                 memo_bytes: Optional[int] = None, memo: bool = True, rows: Optional[PreparedRows] = None,
                 bases: Optional[GroupBases] = None):
        self.zoo, self.spec, self.algorithm, self.cache = zoo, spec, algorithm, cache
        self.device = pick_device(device)
        self.memo = ByteBudgetLRU(default_memo_bytes() if memo_bytes is None else memo_bytes) if memo else None
        self.rows = rows if rows is not None or not memo else PreparedRows()
        self.bases = bases

    def result(self, block_index: int, members: Sequence[int]) -> MergeResult:
        members = tuple(sorted(int(m) for m in members))
        if self.memo is None:
            return self._cached_or_computed(int(block_index), members)
        memo_key = (int(block_index), members, self.algorithm.key)
        found = self.memo.get(memo_key)
        if found is None:
            found = self._cached_or_computed(int(block_index), members)
            self.memo.put(memo_key, found, tensors_bytes(found.unified, found.masks, found.originals, found.scales))
        return found

    def cache_key(self, block_index: int, members: tuple) -> str:
        """Everything the result depends on: zoo content, the block's tensors, group, algorithm."""
        block = self.spec.blocks[block_index]
        return content_hash("group-merge", self.zoo.fingerprint, list(block.params), list(members),
                            self.algorithm.key)

    def _cached_or_computed(self, block_index: int, members: tuple) -> MergeResult:
        key = self.cache_key(block_index, members) if self.cache is not None else None
        if key is not None:
            found = self.cache.load(key)
            if found is not None:
                return found
        result = self._compute(block_index, members)
        if key is not None:
            self.cache.store(key, result)
        return result

    def _compute(self, block_index: int, members: tuple) -> MergeResult:
        block = self.spec.blocks[block_index]
        merged = self.algorithm.merges_group(len(members))
        if merged:
            self._prepare()
        if self.rows is not None:
            vectors = self.rows.rows(self.zoo, block, members, self.algorithm, self.device, raw=not merged)
        else:
            vectors = load_rows(self.zoo, block.params, list(members), self.device)
            if merged:
                vectors = self.algorithm.preprocess_block(vectors, tasks=members)
        basis = None if not merged or self.bases is None else \
            self.bases.basis(self.zoo, block, members, self.algorithm, self.device, vectors)
        if basis is None:   # merge(block, members): the interface plugins' algorithms implement
            return self.algorithm.merge(vectors, members)
        return self.algorithm.merge(vectors, members, basis=basis)

    def _prepare(self) -> None:
        """The algorithm's global pass, skipped when it already ran on this zoo (the plan's, another merger's)."""
        if self.algorithm.has_preprocessing:
            blocks = self.spec.blocks
            self.algorithm.prepare_for(self.zoo.fingerprint,
                                       lambda: (load_rows(self.zoo, b.params, None, self.device) for b in blocks))

"""Preprocessed task-vector rows per (block, task), computed once and shared by every group, size and
algorithm that needs them.

Why: a spectrum (every group of every size) puts each task in up to M - 1 merged groups per block, and
each group re-read its members' vectors (pread + subtract pretrained) and re-ran their preprocessing
(TIES' trim; DARE's sequential RNG draws, most of dare_*'s cost). Every preprocess_block is row-wise
(row t depends only on task t and the algorithm's prepared state), so a task's rows are computed once
and a group stacks its members' rows.

Key of one task's rows: (zoo fingerprint, block params, task id, preprocessing_key, device).
- The fingerprint names the zoo's files (size, mtime) and its task list, so a rewritten file or a task
  subset (re-numbered ids) never meets old rows; TIES' per-task thresholds, computed over the zoo by
  `prepare`, are covered by it too.
- preprocessing_key (MergeAlgorithm) names the rest, so algorithms share rows when it is equal:
  avg, ta, consensus, consensus_ta, emr the raw vectors (RAW_ROWS); ties its trim's keep; dare_ta
  DARE's (p, seed); dare_ties (p, seed) then keep; tsv the vectors with each member's own singular
  triplets (its factorisation: once per task and block); pcb the vectors with each row's clamp bounds
  and stripe maxima over the block (its clamp quantile; its thresholds only weight the merge).
  When an algorithm's rows are missing but its input-stage rows (input_key) are held, only the rest
  runs: dare_ties after dare_ta with equal p and seed trims dare_ta's dropped rows, drawing nothing;
  pcb summarises held raw rows without reading them again.
- Groups an algorithm does not merge (singletons, mask-method pairs) take the raw rows.
Loading: the first touch of a block loads and preprocesses every task of it missing here at once when
their rows fit in the budget (a spectrum, a curve or Compare come back for the others), else only the
group's members; a task's rows count MergeAlgorithm.row_bytes (TSV-M's carry factors beside the vectors). Bounded: least recently used out within $FLEXMERGE_ROWS_BYTES, else an eighth of the
memory available (memo.budget_from_env); rows are private copies, so an evicted row frees its bytes.
"""
from __future__ import annotations

import threading
from typing import Optional, Sequence

import torch

from flexmerge_core.algorithms.base import RAW_ROWS, MergeAlgorithm, OwnedBlock
from flexmerge_core.byte_budget_lru import ByteBudgetLRU
from flexmerge_core.deployment.memo import budget_from_env, tensors_bytes
from flexmerge_core.reused_buffer import ReusedBuffer

ROWS_ENV = "FLEXMERGE_ROWS_BYTES"


def load_rows(zoo, params: Sequence[str], tasks: Optional[list], device: torch.device) -> dict:
    """{name: float32 [m, *shape]} task vectors of `tasks` (None: all) on `device`."""
    loaded = zoo.task_vectors(list(params), tasks=tasks)
    return {n: t.to(device) for n, t in loaded.items()}


class PreparedRows:
    """rows(zoo, block, members, algorithm, device, raw) -> {key: [g, ...]}, each task's rows computed once.

    `loaded` counts the task rows read from zoos and `preprocessed` those preprocessed (tests and
    benchmarks check the sharing with them); safe to share between threads and mergers.
    """

    def __init__(self, budget: Optional[int] = None):
        self.lru = ByteBudgetLRU(budget_from_env(ROWS_ENV, 8) if budget is None else budget)
        self.loaded = self.preprocessed = 0
        self._lock = threading.Lock()

    def rows(self, zoo, block, members: Sequence[int], algorithm: MergeAlgorithm, device,
             raw: bool = False, stacks: Optional[ReusedBuffer] = None) -> dict:
        """The members' rows stacked in member order: the algorithm's preprocessed rows, or with `raw`
        the task vectors as they are. `block` has .params and .numel (a planning Block). stacks: float32
        CPU rows are stacked into this buffer instead of new memory (overwritten by the next call)."""
        members = [int(m) for m in members]
        where = (zoo.fingerprint, tuple(block.params), str(torch.device(device)))
        key = RAW_ROWS if raw else algorithm.preprocessing_key
        found = self._held(where, key, members)
        missing = [t for t in members if t not in found]
        if missing:
            found.update(self._computed(zoo, block, where, key, missing, algorithm, device, raw))
        first = found[members[0]]
        if stacks is None or any(t.dtype != torch.float32 or t.device.type != "cpu" for t in first.values()):
            return {n: torch.stack([found[t][n] for t in members]) for n in first}
        into = stacks.views({n: (len(members), *t.shape) for n, t in first.items()})
        return {n: torch.stack([found[t][n] for t in members], out=into[n]) for n in first}

    def _held(self, where: tuple, key: str, tasks: Sequence[int]) -> dict:
        with self._lock:
            held = {t: self.lru.get((*where, t, key)) for t in tasks}
        return {t: rows for t, rows in held.items() if rows is not None}

    def _computed(self, zoo, block, where, key, missing, algorithm, device, raw) -> dict:
        """Rows of `missing` (widened to every task of the block missing here when they fit), stored."""
        each = 4 * int(block.numel) if raw else algorithm.row_bytes([zoo.param_shapes[p] for p in block.params])
        every = range(len(zoo.task_names))
        held = self._held(where, key, every)
        absent = [t for t in every if t not in held]
        tasks = absent if len(absent) * each <= self.lru.budget else list(missing)
        staged = {} if raw or key == algorithm.input_key or not algorithm.staged_preprocessing \
            else self._held(where, algorithm.input_key, tasks)
        with self._lock:
            self.lru.reserve(len(tasks) * each)   # the old rows go before the new are built, not after
        out = {}
        if staged:
            done = sorted(staged)
            inputs = OwnedBlock({n: torch.stack([staged[t][n] for t in done]) for n in staged[done[0]]})
            out.update(self._split(algorithm.preprocess_inputs(inputs, tasks=done), done))
        fresh = [t for t in tasks if t not in staged]
        if fresh and key == RAW_ROWS:   # read apart: nothing to copy out of a stack
            rows = zoo.task_vectors_apart(list(block.params), fresh)
            out.update({t: {n: v.to(device) for n, v in vectors.items()} for t, vectors in zip(fresh, rows)})
        elif fresh:
            vectors = OwnedBlock(load_rows(zoo, block.params, fresh, device))
            prepared = algorithm.preprocess_block(vectors, tasks=fresh)
            del vectors   # the raw block is freed before its rows are copied out
            out.update(self._split(prepared, fresh))
        with self._lock:
            self.loaded += len(fresh)
            self.preprocessed += 0 if raw else len(tasks)
            for t, rows in out.items():
                self.lru.put((*where, t, key), rows, tensors_bytes(rows))
        return out

    @staticmethod
    def _split(block: dict, tasks: list) -> dict:
        """{task: {key: private copy of its row}}, freeing each [m, ...] tensor once it is copied."""
        out = {t: {} for t in tasks}
        for name in list(block):
            stacked = block.pop(name)
            for i, t in enumerate(tasks):
                out[t][name] = stacked[i].clone()
            del stacked
        return out

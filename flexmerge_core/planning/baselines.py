"""The two baselines of ALGORITHMS.md section 3, drawn on the same axes as the greedy plan.

Both expose the plan interface the app uses (`achievable_sizes()`, `partition_at(budget)`, `num_tasks`,
`blocks`, `block_numels`, `storage`, `min_size`, `max_size`) for k = M..1 groups:
- Channel Merging: every parameter TENSOR clusters the M tasks into k clusters on its own with cosine
  k-means, so it needs a `parameter`-granularity BlockSpec (one block per tensor; checked).
- Whole-model clustering: agglomerative clustering (linkage as in the plan, default `min`) of the
  whole-model task vectors into k groups; every block gets the same groups.
Both cluster the RAW task vectors (no algorithm preprocessing) and merge within clusters with the chosen
algorithm through the usual GroupMerger/deployment path. With a standard algorithm the size is k.
Cosine k-means runs on each tensor's M x M cosine Gram matrix alone: a centre is the normalised mean of
unit task vectors, so its cosine with any task, its norm and its movement are all Gram-matrix
expressions; one streamed pass over the model gives every Gram matrix and clustering costs microseconds.
"""
from __future__ import annotations

import hashlib
from typing import Callable, Sequence

import numpy as np
from flexmerge_core.errors import InvalidArgumentError
from flexmerge_core.planning.linkage import check_linkage, matrix_sequence
from flexmerge_core.planning.plan import Partition, _check_budget, size_of_partition
from flexmerge_core.planning.similarity import block_vectors, cosine_from_gram, gram_matrix, pick_device
from flexmerge_core.reused_buffer import ReusedBuffer

Group = tuple
CHANNEL_ALGORITHMS = ("avg", "ta", "ties")
MAX_ITERATIONS = 100
TOLERANCE = 1e-4


def tensor_grams(zoo, spec, device=None, progress=None) -> dict:
    """{tensor name: M x M float64 Gram matrix of the raw task vectors}, one streamed pass."""
    device, grams, blocks, buffer = pick_device(device), {}, spec.blocks, ReusedBuffer()
    for index, block in enumerate(blocks):
        for name, tensor in block_vectors(zoo, block, buffer).items():
            grams[name] = gram_matrix({name: tensor}, device)
        if progress is not None:
            progress(index + 1, len(blocks), f"task Gram matrices: block {block.name}")
    return grams


def _seeded_rng(*parts) -> np.random.Generator:
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _groups_from_labels(labels: np.ndarray) -> list:
    clusters: dict = {}
    for task, label in enumerate(labels.tolist()):
        clusters.setdefault(label, []).append(task)
    return sorted(tuple(c) for c in clusters.values())


def cosine_kmeans(unit_gram: np.ndarray, k: int, rng: np.random.Generator) -> list:
    """k groups of tasks from the Gram matrix of their unit vectors (a zero vector has a zero row).

    Centres are coefficient rows W (centre_j = normalised W_j . X). k-means++ seeding, then Lloyd
    iterations (assign to the most cosine-similar centre, lowest index on ties) until no centre moves
    by 1e-4 or more (Euclidean, unit centres) or 100 iterations. An emptied cluster takes the task
    least similar to its own centre, so exactly k clusters always come out (size = k).
    """
    m = unit_gram.shape[0]
    if k >= m:
        return [(t,) for t in range(m)]
    diag = np.diag(unit_gram)
    chosen = [int(rng.integers(m))]
    while len(chosen) < k:
        dist2 = np.min(diag[:, None] + diag[None, chosen] - 2 * unit_gram[:, chosen], axis=1).clip(min=0)
        dist2[chosen] = 0.0
        free = [t for t in range(m) if t not in chosen]
        weights = dist2[free] if dist2[free].sum() > 0 else np.ones(len(free))
        chosen.append(free[int(rng.choice(len(free), p=weights / weights.sum()))])
    W = np.zeros((k, m))
    W[np.arange(k), chosen] = 1.0
    labels = np.zeros(m, dtype=int)
    for _ in range(MAX_ITERATIONS):
        norms = np.sqrt(np.clip(np.einsum("jm,mn,jn->j", W, unit_gram, W), 0.0, None))
        cos = (unit_gram @ W.T) / np.where(norms > 0, norms, 1.0)
        labels = np.argmax(cos, axis=1)
        own = cos[np.arange(m), labels]
        for j in range(k):
            if not (labels == j).any():
                counts = np.bincount(labels, minlength=k)
                movable = np.where(counts[labels] > 1, own, np.inf)
                labels[int(np.argmin(movable))] = j
                own = cos[np.arange(m), labels]
        W_new = np.zeros_like(W)
        W_new[labels, np.arange(m)] = 1.0
        W_new /= W_new.sum(axis=1, keepdims=True)
        new_norms = np.sqrt(np.clip(np.einsum("jm,mn,jn->j", W_new, unit_gram, W_new), 0.0, None))
        cross = np.einsum("jm,mn,jn->j", W_new, unit_gram, W)
        both = (new_norms > 0) & (norms > 0)
        moved2 = np.where(both, 2 - 2 * cross / np.where(both, new_norms * norms, 1.0),
                          ((new_norms > 0) != (norms > 0)).astype(float))
        W = W_new
        if np.sqrt(np.clip(moved2, 0.0, None)).max() < TOLERANCE:
            break
    return _groups_from_labels(labels)


class ClusteringPlan:
    """Plan-like view of a baseline: one partition per group count k = M..1, sizes from the storage rule."""

    def __init__(self, num_tasks: int, blocks: Sequence[str], block_numels: Sequence[int], storage: str,
                 clustering: Callable[[int], list], kind: str, linkage=None, seed: int = 0):
        self.num_tasks, self.blocks, self.block_numels = num_tasks, list(blocks), list(block_numels)
        self.storage, self.kind, self._clustering = storage, kind, clustering
        self.linkage, self.order, self.seed = linkage, kind, seed   # what a deployment recipe records
        self.model_params, self.max_size = int(sum(self.block_numels)), float(num_tasks)
        self._partitions: dict = {}

    @property
    def min_size(self) -> float:
        return self.size_at(1)

    def groups_at(self, k: int) -> list:
        """groups[b] for k clusters per block (memoised: clustering is deterministic per k)."""
        if k not in self._partitions:
            self._partitions[k] = self._clustering(k)
        return self._partitions[k]

    def size_at(self, k: int) -> float:
        return size_of_partition(self.groups_at(k), self.block_numels, self.storage)

    def achievable_sizes(self) -> list:
        sizes = []
        for k in range(self.num_tasks, 0, -1):
            size = self.size_at(k)
            if not sizes or size != sizes[-1]:
                sizes.append(size)
        return sizes

    def partition_at(self, budget) -> Partition:
        """Largest k whose size fits the budget (k = 1, budget not met, when none does)."""
        budget = _check_budget(budget)
        chosen = 1
        for k in range(self.num_tasks, 0, -1):
            if self.size_at(k) <= budget:
                chosen = k
                break
        size = self.size_at(chosen)
        return Partition(groups=[list(g) for g in self.groups_at(chosen)], size=size, budget=budget,
                         budget_met=size <= budget, num_events=self.num_tasks - chosen)


def channel_merging_plan(zoo, spec, algorithm, seed: int = 0, device=None, progress=None) -> ClusteringPlan:
    """Channel Merging: per-tensor cosine k-means of the tasks, merged within clusters (avg/ta/ties)."""
    if algorithm.name not in CHANNEL_ALGORITHMS:
        raise InvalidArgumentError(f"Channel Merging merges with one of {', '.join(CHANNEL_ALGORITHMS)}, "
                                   f"not {algorithm.name!r}")
    multi = [b for b in spec.blocks if len(b.params) != 1]
    if multi:
        raise InvalidArgumentError(f"Channel Merging clusters per tensor: use granularity 'parameter' "
                                   f"(block {multi[0].name!r} holds {len(multi[0].params)} tensors)")
    grams = tensor_grams(zoo, spec, device=device, progress=progress)
    units = [cosine_from_gram(grams[b.params[0]]) for b in spec.blocks]
    num_tasks = len(zoo.task_names)

    def clustering(k: int) -> list:
        return [cosine_kmeans(unit, k, _seeded_rng("channel-merging", seed, b.params[0], k))
                for b, unit in zip(spec.blocks, units)]

    return ClusteringPlan(num_tasks, [b.name for b in spec.blocks], [b.numel for b in spec.blocks],
                          algorithm.storage, clustering, kind="channel-merging", seed=seed)


def whole_model_plan(zoo, spec, algorithm, linkage: str = "min", device=None, progress=None) -> ClusteringPlan:
    """Whole-model clustering: agglomerative on whole-model task vectors, the same groups in every block."""
    check_linkage(linkage)
    grams = tensor_grams(zoo, spec, device=device, progress=progress)
    similarity = cosine_from_gram(sum(grams.values()))
    steps = matrix_sequence(similarity, linkage)
    num_tasks = len(zoo.task_names)

    def clustering(k: int) -> list:
        groups = {(t,) for t in range(num_tasks)}
        for group_a, group_b, _ in steps[:num_tasks - k]:
            groups -= {group_a, group_b}
            groups.add(tuple(sorted(group_a + group_b)))
        return [sorted(groups) for _ in spec.blocks]

    return ClusteringPlan(num_tasks, [b.name for b in spec.blocks], [b.numel for b in spec.blocks],
                          algorithm.storage, clustering, kind="whole-model", linkage=linkage)


BASELINES = {"channel-merging": "parameter", "whole-model": None}   # kind -> the granularity it needs (None: any)


def baseline_plan(kind: str, zoo, spec, algorithm, linkage: str = "min", seed: int = 0, device=None,
                  progress=None) -> ClusteringPlan:
    """The plan of baseline `kind` ("channel-merging" or "whole-model")."""
    if kind == "channel-merging":
        return channel_merging_plan(zoo, spec, algorithm, seed=seed, device=device, progress=progress)
    if kind == "whole-model":
        return whole_model_plan(zoo, spec, algorithm, linkage=linkage, device=device, progress=progress)
    raise InvalidArgumentError(f"unknown baseline {kind!r} (known: {', '.join(BASELINES)})")

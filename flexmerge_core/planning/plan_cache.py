"""Plans (and baseline clusterings) cached on disk, keyed by everything that determines them.

Why: a plan needs one streamed pass over every task vector of the zoo (seconds to minutes for real
checkpoints), but it only changes when the zoo, the task subset, the blocks, the algorithm (its
preprocessing and storage rule) or the plan options change. The key hashes all of those. Baselines
store their groups for every k = M..1, so a warm baseline curve reads no tensor at all.
"""
from __future__ import annotations

from typing import Optional

from flexmerge_core.cache import JsonCache, cache_root, content_hash
from flexmerge_core.planning.baselines import BASELINES, ClusteringPlan, baseline_plan
from flexmerge_core.planning.plan import PLAN_FORMAT, MergePlan, build_plan

BASELINE_FORMAT = "flexmerge-baseline/1"


def plan_cache_key(zoo, spec, algorithm, linkage: str, order: str, seed: int) -> str:
    blocks = [[block.name, list(block.params)] for block in spec.blocks]
    algorithm_key = algorithm.key if algorithm is not None else None
    return content_hash(PLAN_FORMAT, zoo.fingerprint, zoo.task_names, spec.granularity, blocks, algorithm_key,
                        linkage, order, seed)


def cached_plan(zoo, spec, algorithm, linkage: str = "min", order: str = "greedy", seed: int = 0,
                progress=None, cache: Optional[JsonCache] = None) -> MergePlan:
    """build_plan, reusing the stored plan when one exists for exactly these inputs."""
    cache = cache if cache is not None else JsonCache(cache_root() / "plans")
    key = plan_cache_key(zoo, spec, algorithm, linkage, order, seed)
    document = cache.get_or_compute(
        key, lambda: build_plan(zoo, spec, algorithm, linkage, order, seed, progress=progress).to_json())
    return MergePlan.from_json(document)


def baseline_cache_key(zoo, spec, algorithm, kind: str, linkage: str, seed: int) -> str:
    blocks = [[block.name, list(block.params)] for block in spec.blocks]
    return content_hash(BASELINE_FORMAT, kind, zoo.fingerprint, zoo.task_names, spec.granularity, blocks,
                        algorithm.name, algorithm.storage, linkage, seed)


def cached_baseline_plan(zoo, spec, algorithm, kind: str, linkage: str = "min", seed: int = 0,
                         progress=None, cache: Optional[JsonCache] = None) -> ClusteringPlan:
    """A baseline's plan (`kind` in BASELINES) whose groups for every k come from the on-disk cache when known."""
    cache = cache if cache is not None else JsonCache(cache_root() / "plans")
    key = baseline_cache_key(zoo, spec, algorithm, kind, linkage, seed)
    m = len(zoo.task_names)

    def compute() -> dict:
        plan = baseline_plan(kind, zoo, spec, algorithm, linkage=linkage, seed=seed, progress=progress)
        return {str(k): [[list(g) for g in groups] for groups in plan.groups_at(k)] for k in range(1, m + 1)}

    stored = cache.get_or_compute(key, compute)
    groups = {int(k): [[tuple(g) for g in block] for block in per_block] for k, per_block in stored.items()}
    return ClusteringPlan(m, [b.name for b in spec.blocks], [b.numel for b in spec.blocks], algorithm.storage,
                          groups.__getitem__, kind=kind, linkage=linkage if kind == "whole-model" else None,
                          seed=seed)

"""Plans cached on disk, keyed by everything that determines them.

Why: a plan needs one streamed pass over every task vector of the zoo (seconds to minutes for real
checkpoints), but it only changes when the zoo, the task subset, the blocks, the algorithm (its
preprocessing and storage rule) or the plan options change. The key hashes all of those.
"""
from __future__ import annotations

from typing import Optional

from flexmerge_core.cache import JsonCache, cache_root, content_hash
from flexmerge_core.planning.plan import PLAN_FORMAT, MergePlan, build_plan


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

"""The one orchestration path: zoo -> blocks -> plan -> merger -> curve / export.

Why one place: the command line, the dashboard's facade (studio.py) and the benchmarks all need the
same chain of steps, wired the same way (memory guard before loading, cached plans, one memoised
group merger with the on-disk group cache, incremental cached curves); when each wired it itself they
drifted apart (the app's baseline curves re-evaluated every size from scratch). Baselines (Channel
Merging, whole-model clustering) are plans like any other here, so they get the same machinery.
Embedded demo names (DEMO_ZOOS) are resolved here, above the zoo format, so the zoo loader never builds.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from flexmerge_core.errors import InvalidArgumentError
from flexmerge_core.inputs import read_json
from flexmerge_core.zoo import Zoo, open_zoo

Progress = Optional[Callable[[int, int, str], None]]
DEMO_ZOOS = ("demo", "demo-text")   # embedded demos: vision (tiny ViT), text (tiny Llama)
DEFAULT_ALGORITHM = "ta"


def ensure_demo(name: str, progress: Progress = None) -> Path:
    """The folder of the embedded demo zoo `name` (one of DEMO_ZOOS), built first when missing or stale."""
    if name == "demo":
        from flexmerge_core.demo.vision import ensure_demo_zoo

        return ensure_demo_zoo(progress=progress)
    if name == "demo-text":
        from flexmerge_core.demo.text import ensure_text_demo_zoo

        return ensure_text_demo_zoo(progress=progress)
    raise InvalidArgumentError(f"unknown demo zoo {name!r} (known: {', '.join(DEMO_ZOOS)})")


def resolve_zoo(name_or_path, progress: Progress = None) -> Zoo:
    """Open a zoo folder, or an embedded demo by name (built offline on first use, with progress)."""
    if isinstance(name_or_path, str) and name_or_path in DEMO_ZOOS:
        return open_zoo(ensure_demo(name_or_path, progress))
    return open_zoo(name_or_path)


def describe_zoo(zoo: Zoo) -> dict:
    """`zoo info`'s facts, with the block count of every granularity preset."""
    from flexmerge_core.planning.blocks import PRESETS, build_blocks
    from flexmerge_core.zoo.summary import zoo_summary

    counts = {g: len(build_blocks(zoo.param_names, zoo.param_shapes, g).blocks) for g in PRESETS}
    return zoo_summary(zoo, counts)


@dataclass(frozen=True)
class PlanSettings:
    """Everything that determines one plan and its deployments (hashable: a memo key).

    baseline: None for FlexMerge's greedy plan, else "channel-merging" or "whole-model" (ALGORITHMS.md
    section 3), whose partitions are evaluated, cached and exported like the plan's.
    granularity None: the preset the plan kind needs (component; parameter for Channel Merging).
    """

    algorithm: str = DEFAULT_ALGORITHM
    hyperparameters: tuple[tuple[str, Any], ...] = ()
    granularity: Optional[str] = None
    linkage: str = "min"
    order: str = "greedy"
    seed: int = 0
    tasks: tuple[str, ...] = ()          # () = every task of the zoo
    baseline: Optional[str] = None

    def make_algorithm(self):
        from flexmerge_core.algorithms import get_algorithm

        return get_algorithm(self.algorithm, **dict(self.hyperparameters))

    def block_granularity(self) -> str:
        from flexmerge_core.planning.baselines import BASELINES
        from flexmerge_core.planning.blocks import DEFAULT_GRANULARITY

        if self.baseline is None:
            return self.granularity or DEFAULT_GRANULARITY
        if self.baseline not in BASELINES:
            raise InvalidArgumentError(f"unknown baseline {self.baseline!r} (known: {', '.join(BASELINES)})")
        needed = BASELINES[self.baseline]
        if needed is not None and self.granularity not in (None, needed):
            raise InvalidArgumentError(f"baseline {self.baseline} clusters per tensor: granularity must be "
                                       f"'{needed}', not '{self.granularity}'")
        return self.granularity or needed or DEFAULT_GRANULARITY


class Pipeline:
    """One zoo (task subset) + settings: its blocks, its (cached) plan, one memoised merger, curves, exports.

    deploy_size: the largest deployment the caller will build ("all" = a curve over every size; None:
    planning only), so the memory guard refuses before anything is loaded.
    rows: a deployment.prepared_rows.PreparedRows shared by the pipelines of one zoo (Compare, recommend),
    so algorithms with the same preprocessing read and preprocess each task's rows once; None: its own.
    bases: a deployment.group_bases.GroupBases shared the same way, so algorithms scaling the same basis
    (ta, consensus_ta, avg: the group's mean) compute each group's basis once; None: no sharing.
    """

    def __init__(self, zoo: Zoo, settings: PlanSettings = PlanSettings(), progress: Progress = None,
                 deploy_size: Union[float, str, None] = None, rows=None, bases=None):
        from flexmerge_core.planning.blocks import build_blocks
        from flexmerge_core.planning.lazy_plan import LazyPlan
        from flexmerge_core.planning.plan_cache import cached_baseline_plan, cached_plan
        from flexmerge_core.resources import check_memory

        self.settings = settings
        self.zoo = zoo.subset(list(settings.tasks)) if settings.tasks else zoo
        self.algorithm = settings.make_algorithm()
        self.spec = build_blocks(self.zoo.param_names, self.zoo.param_shapes, settings.block_granularity())
        check_memory(self.zoo, deploy_size, self.spec)
        if settings.baseline is None:
            # built on first need: exports and curves at 1x (or the smallest size) and at Mx never need it
            self.plan = LazyPlan(len(self.zoo.task_names), [b.name for b in self.spec.blocks],
                                 [b.numel for b in self.spec.blocks], self.algorithm.storage, settings.linkage,
                                 settings.order, settings.seed,
                                 lambda: cached_plan(self.zoo, self.spec, self.algorithm, settings.linkage,
                                                     settings.order, settings.seed, progress=progress))
        else:
            self.plan = cached_baseline_plan(self.zoo, self.spec, self.algorithm, settings.baseline,
                                             settings.linkage, settings.seed, progress=progress)
        self._merger = None
        self._rows, self._bases = rows, bases
        self._lock = threading.RLock()

    def merger(self):
        """The memoised group merger (on-disk group cache), shared by every curve and export of this plan."""
        from flexmerge_core.deployment.group_cache import GroupResultCache
        from flexmerge_core.deployment.merge import GroupMerger

        with self._lock:
            if self._merger is None:
                self._merger = GroupMerger(self.zoo, self.spec, self.algorithm, cache=GroupResultCache(),
                                           rows=self._rows, bases=self._bases)
            return self._merger

    def curve(self, sizes="all", tasks=None, progress: Progress = None, **options):
        """compute_curve over this plan (incremental and cached): CurveResult(rows, finetuned, stats)."""
        from flexmerge_core.evaluation.curve import compute_curve

        return compute_curve(self.zoo, self.plan, self.algorithm, sizes, tasks, spec=self.spec,
                             merger=self.merger(), progress=progress, **options)

    def export(self, size: float, out, task: Optional[str] = None, zoo_path: Optional[str] = None,
               dtype: Optional[str] = None) -> dict:
        """Write the deployment at `size` (or one task's model, in `dtype`) with its recipe beside it."""
        from flexmerge_core.deployment.export import export

        return export(self.zoo, self.spec, self.plan, self.algorithm, size, out, task=task, zoo_path=zoo_path,
                      dtype=dtype)

    def footprint(self, dtype: Optional[str] = None):
        """Bytes of this plan's deployments stored in `dtype` ('fp32' | 'fp16' | 'bf16'; None: the zoo's)."""
        from flexmerge_core.deployment.footprint import Footprint, parse_dtype

        return Footprint.of(self.zoo, self.spec, self.algorithm, parse_dtype(dtype))

    def budget_for_megabytes(self, megabytes: float, dtype: Optional[str] = None) -> float:
        """The size budget (model units) of the largest deployment of at most `megabytes` MB in `dtype`."""
        from flexmerge_core.deployment.footprint import MEGABYTE

        return self.footprint(dtype).budget_for(self.plan, megabytes * MEGABYTE)

    def with_bytes(self, rows: list[dict], dtype: Optional[str] = None) -> list[dict]:
        """Curve rows plus `bytes` and `megabytes`: what their deployments store in `dtype` (heads excluded)."""
        from flexmerge_core.deployment.footprint import megabytes

        footprint = self.footprint(dtype)
        out = []
        for row in rows:
            stored = footprint.budget_bytes(self.plan, row["size_budget"])
            out.append({**row, "bytes": stored, "megabytes": megabytes(stored)})
        return out


def finetuned_scores(zoo: Zoo, progress: Progress = None) -> dict[str, float]:
    """Each individual fine-tuned model's score on its held-out data, measured (and cached) like any deployment."""
    from flexmerge_core.evaluation.evaluate import finetuned_accuracies

    return finetuned_accuracies(zoo, progress=progress)


def recommend(zoo: Zoo, choices: Sequence[PlanSettings], *, within_points: Optional[float] = None,
              max_mb: Optional[float] = None, dtype: Optional[str] = None, progress: Progress = None) -> dict:
    """The deployment to use, across the plans of `choices` (one per algorithm): the smallest within
    `within_points` points of the fine-tuned models' average accuracy, or the most accurate of at most
    `max_mb` MB in `dtype`. Every curve is evaluated at all achievable sizes (cached) and its rows
    carry `bytes`, `megabytes` and the 95% interval of their average accuracy (`ci_low`, `ci_high`, `n`);
    each curve's knee is reported too. `recommendation` is None when nothing qualifies.
    """
    from flexmerge_core.evaluation import recommend as pick
    from flexmerge_core.evaluation.intervals import example_counts, with_interval

    if (within_points is None) == (max_mb is None):
        raise InvalidArgumentError("recommend needs exactly one of within_points / max_mb")
    names = [c.algorithm for c in choices]
    if not names or len(set(names)) != len(names):
        raise InvalidArgumentError(f"recommend needs distinct algorithms, got {names}")
    from flexmerge_core.deployment.group_bases import GroupBases
    from flexmerge_core.deployment.prepared_rows import PreparedRows

    curves, counts, finetuned, rows, bases = {}, None, {}, PreparedRows(), GroupBases()
    for choice in choices:
        pipeline = Pipeline(zoo, choice, progress=progress, deploy_size="all", rows=rows, bases=bases)
        result = pipeline.curve("all", progress=progress)
        if counts is None and any("n" not in row for row in result.rows):
            counts = example_counts(pipeline.zoo)
        other = sorted({m for row in result.rows for m in row.get("metric", {}).values()} - {"accuracy"})
        if other:
            raise InvalidArgumentError(f"recommend compares accuracies; zoo '{zoo.name}' has tasks scored by {other[0]}")
        curves[choice.algorithm] = [with_interval(row, counts) for row in pipeline.with_bytes(result.rows, dtype)]
        finetuned = result.finetuned
    finetuned_avg = sum(finetuned.values()) / len(finetuned)
    if within_points is not None:
        best = pick.smallest_within(curves, finetuned_avg, within_points)
    else:
        best = pick.best_under(curves, max_mb)
    return {"within_points": within_points, "max_mb": max_mb, "dtype": dtype,
            "finetuned": finetuned, "finetuned_avg": finetuned_avg,
            "recommendation": None if best is None else {"algorithm": best.algorithm, **best.row},
            "knees": {name: pick.knee(rows) for name, rows in curves.items()}, "curves": curves}


def reproduce_export(recipe_file, out, progress=None) -> dict:
    """Re-create an export from its recipe JSON; refuses when the zoo's files changed since."""
    from flexmerge_core.deployment.export import RECIPE_FORMAT

    recipe_file = Path(recipe_file)
    try:
        recipe = read_json(recipe_file, "export recipe", InvalidArgumentError)
        if recipe.get("format") != RECIPE_FORMAT:
            raise ValueError(f"format {recipe.get('format')!r}")
        zoo = resolve_zoo(recipe["zoo_path"])
        settings = PlanSettings(recipe["algorithm"], tuple(recipe["hyperparameters"].items()),
                                recipe["granularity"], recipe["linkage"], recipe["order"], recipe["seed"],
                                tuple(recipe["tasks"]) if recipe["tasks"] != zoo.task_names else ())
        settings.make_algorithm()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidArgumentError(f"{recipe_file}: not a FlexMerge export recipe ({exc})") from exc
    if zoo.subset(recipe["tasks"]).fingerprint != recipe["zoo_fingerprint"]:
        raise InvalidArgumentError(f"{recipe_file}: zoo {recipe['zoo_path']} changed since the export "
                                   f"(fingerprint {zoo.fingerprint} != {recipe['zoo_fingerprint']})")
    pipeline = Pipeline(zoo, settings, progress=progress, deploy_size=recipe["budget"])
    return pipeline.export(recipe["budget"], out, task=recipe["task"], zoo_path=recipe["zoo_path"],
                           dtype=recipe.get("dtype"))

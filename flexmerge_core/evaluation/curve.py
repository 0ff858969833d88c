"""Metric-size curves (accuracy for classification tasks), evaluated incrementally along the plan.

Why incremental: between neighbouring sizes one merge event changes one block for the tasks of
two groups; everything else is the same. Partitions are walked from the all-separate deployment
(M) towards 1x, so groups only grow: a task whose routing is unchanged keeps its score (memory
and disk caches are keyed by routing), a changed task re-runs only from the first encoder stage
its change touches (task_eval.TaskEvaluator keeps stage inputs), and materialised groups that left
the partition are dropped (they never come back in this direction).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional

from flexmerge_core.deployment.deploy import GroupStore, deployment_from_partition, deployment_recipe
from flexmerge_core.errors import InvalidArgumentError
from flexmerge_core.evaluation.intervals import row_interval
from flexmerge_core.evaluation.scores import TaskScore
from flexmerge_core.evaluation.task_eval import (Evaluators, ScoreBook, default_activation_budget, eval_key, summarize,
                                                 task_ids_of)

Progress = Optional[Callable[[int, int, str], None]]


@dataclass
class CurveResult:
    rows: list[dict]                       # curve rows (curve_row), in the order of the requested sizes
    finetuned: dict[str, float]            # metric value of each individual fine-tuned model
    stats: dict = field(default_factory=dict)
    # scores[budget][task]: the per-example scores behind rows (paired tests need them, not re-evaluation)
    scores: dict[float, dict[str, TaskScore]] = field(default_factory=dict)


_ROW_KEYS = ("avg_accuracy", "avg_normalized_accuracy", "accuracy", "metric", "n", "higher_is_better")


def curve_row(budget: float, size: float, summary: Mapping, scores: Mapping[str, TaskScore]) -> dict:
    """One curve row from task_eval.summarize's dict (or an EvalResult's fields, which share its names).

    DESIGN.md's keys keep their names whatever the tasks' metrics: `accuracy` = {task: metric value},
    `avg_accuracy` = their mean, `avg_normalized_accuracy` = mean of the normalised values
    (task_eval.normalized_value: 1 = parity with fine-tuned, higher is better for every metric); beside
    them, per task, `metric` (its name), `n` (examples) and `higher_is_better`; and `ci_low`, `ci_high`:
    the 95% interval of avg_accuracy from the tasks' per-example `scores` (intervals.row_interval).
    """
    row = {"size_budget": float(budget), "size": size,
           **{k: dict(summary[k]) if isinstance(summary[k], dict) else summary[k] for k in _ROW_KEYS}}
    row["ci_low"], row["ci_high"] = row_interval(row, scores)
    return row


def spec_for_plan(zoo, plan):
    """The block spec whose blocks are the plan's (plans record block names, not the granularity)."""
    from flexmerge_core.planning.blocks import PRESETS, build_blocks

    for granularity in PRESETS:
        spec = build_blocks(zoo.param_names, zoo.param_shapes, granularity=granularity)
        layout = [(b.name, b.numel) for b in spec.blocks]
        if layout == list(zip(plan.blocks, plan.block_numels)):
            return spec
    raise InvalidArgumentError("the plan's blocks match no granularity preset of this zoo: pass spec=")


def requested_budgets(plan, sizes) -> list[float]:
    """The budgets a curve over `sizes` evaluates: 'all' = every achievable size, ascending."""
    if isinstance(sizes, str):
        if sizes != "all":
            raise InvalidArgumentError(f"sizes must be 'all' or a list of numbers, got {sizes!r}")
        return sorted(plan.achievable_sizes())
    budgets = list(sizes)
    if not budgets:
        raise InvalidArgumentError("no sizes requested")
    return budgets


def _merged_blocks(spec, algorithm, partition, task_id: int) -> list:
    """[(block params, members)] where the task runs a merged group (as task_eval.merged_blocks, from a partition)."""
    out = []
    for block, groups in zip(spec.blocks, partition.groups):
        group = next(g for g in groups if task_id in g)
        if algorithm.merges_group(len(group)):
            out.append([list(block.params), list(group)])
    return out


def partition_eval_keys(zoo, spec, algorithm, partition, task_ids) -> dict[int, str]:
    """{task id: the evaluation cache key of that task at `partition`}, known without merging anything."""
    return {t: eval_key(zoo, t, _merged_blocks(spec, algorithm, partition, t), algorithm.key, zoo.fingerprint)
            for t in task_ids}


def _stage_blocks(spec, evaluators: Evaluators, incremental: bool, activation_budget: Optional[int]) -> list[list[int]]:
    """Which blocks have parameters in each encoder stage; also fixes the activation budget."""
    runner = evaluators.runner
    if activation_budget is None:
        activation_budget = default_activation_budget(runner.device)
    evaluators.activation_budget = activation_budget if incremental else 0
    return [[b for b, blk in enumerate(spec.blocks) if any(runner.stage_of(n) == s for n in blk.params)]
            for s in range(runner.num_stages)]


def _stage_signature(deployment, task_id: int, stage_blocks: list[list[int]]) -> list:
    """Per encoder stage, what the task's tensors of that stage are (equal tokens = same tensors)."""
    tokens = [(e.kind, e.members) for e in (deployment.entries[b][deployment.routing[b][task_id]]
                                             for b in range(len(deployment.entries)))]
    return [tuple(tokens[b] for b in blocks) for blocks in stage_blocks]


def compute_curve(zoo, plan, algorithm, sizes="all", tasks=None, *, spec=None, merger=None, device=None,
                  progress: Progress = None, batch_size: int = 256, use_cache: bool = True,
                  incremental: bool = True, activation_budget: Optional[int] = None) -> CurveResult:
    """Curve rows at `sizes` (budgets, or 'all' achievable sizes ascending) plus fine-tuned metric values.

    incremental=False evaluates every task at every size from scratch (the benchmark's baseline).
    """
    from flexmerge_core.deployment.group_cache import GroupResultCache
    from flexmerge_core.deployment.merge import GroupMerger

    spec = spec or (merger.spec if merger is not None else spec_for_plan(zoo, plan))
    merger = merger or GroupMerger(zoo, spec, algorithm, cache=GroupResultCache() if use_cache else None,
                                   device=device)
    budgets = requested_budgets(plan, sizes)
    partitions = {b: plan.partition_at(b) for b in budgets}
    walk = {0: plan.partition_at(plan.max_size)}
    walk.update({p.num_events: p for p in partitions.values()})
    ids = task_ids_of(zoo, tasks)
    book = ScoreBook(use_cache)
    evaluators = Evaluators(zoo, device, batch_size, 0)
    store = GroupStore(zoo, spec, algorithm, merger)
    stage_blocks = None
    by_events: dict[int, dict[str, TaskScore]] = {}
    for step, events in enumerate(sorted(walk)):
        part = walk[events]
        keys = partition_eval_keys(zoo, spec, algorithm, part, ids)
        scores = {t: book.known(keys[t]) if incremental else None for t in ids}
        needed = [t for t in ids if scores[t] is None]
        if needed:
            recipe = deployment_recipe(zoo, spec, plan, algorithm, part.budget, part.size)
            deployment = deployment_from_partition(zoo, spec, algorithm, part, store, recipe)
            if stage_blocks is None:
                stage_blocks = _stage_blocks(spec, evaluators, incremental, activation_budget)
            for t in needed:
                signature = _stage_signature(deployment, t, stage_blocks) if incremental else None
                score = evaluators.task(t, share=len(ids)).evaluate(deployment.encoder_state_dict(t), signature)
                scores[t] = book.record(keys[t], score)
        by_events[events] = {zoo.task_names[t]: scores[t] for t in ids}
        store.retain((b, g) for b, groups in enumerate(part.groups) for g in groups)
        if progress:
            progress(step + 1, len(walk), f"size {part.size:.3f}")
    finetuned = {task: score.value for task, score in by_events[0].items()}
    scores_at = {float(b): by_events[partitions[b].num_events] for b in budgets}
    rows = [curve_row(b, partitions[b].size, summarize(scores_at[float(b)], finetuned), scores_at[float(b)])
            for b in budgets]
    stats = {"evaluated": book.evaluated, "stages_run": evaluators.stages_run,
             "activation_bytes": evaluators.kept_bytes, "partitions": len(walk)}
    return CurveResult(rows=rows, finetuned=finetuned, stats=stats, scores=scores_at)


def accuracy_curve(zoo, plan, algorithm, sizes="all", tasks=None, **options) -> list[dict]:
    """INTERFACES.md's curve: the rows of compute_curve."""
    return compute_curve(zoo, plan, algorithm, sizes, tasks, **options).rows


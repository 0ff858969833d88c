"""Paired comparisons of deployments evaluated on the same held-out examples (issue 16).

Why a module: the Compare page's rankings and the findings both ask "is A better than B here, beyond
what test-set sampling explains?" from curve results' per-example scores (CurveResult.scores), and
must turn TaskScores into statistics' rows the same way: 0/1 accuracies as booleans (McNemar per task,
combined), other metrics as numbers (Wilcoxon per task, combined), oriented by the metric's direction.
Nothing here is re-evaluated.
"""
from __future__ import annotations

from typing import Mapping, NamedTuple, Optional

import numpy as np

from flexmerge_core.errors import InvalidArgumentError
from flexmerge_core.evaluation.scores import TaskScore
from flexmerge_core.evaluation.statistics import average_mean_interval, paired_test, rankings_with_ties

ALPHA = 0.05
TaskScores = Mapping[str, TaskScore]     # {task: TaskScore} of one deployment


def example_rows(scores: TaskScores, tasks: Optional[list[str]] = None) -> tuple[list[np.ndarray], bool]:
    """(per-task arrays in `tasks` order, higher_is_better) for statistics' paired tests.

    Accuracy (0/1 scores): booleans, higher is better. One other metric: its values and direction.
    Tasks whose directions differ: each lower-is-better task's values negated, so higher is better
    for every task (the per-task tests are scale-free, so their combination stays meaningful).
    """
    tasks = list(scores) if tasks is None else tasks
    missing = [t for t in tasks if t not in scores]
    if missing:
        raise InvalidArgumentError(f"no per-example scores for task '{missing[0]}'")
    values = [scores[t].scores.numpy() for t in tasks]
    if all(scores[t].metric == "accuracy" for t in tasks) and all(np.all((v == 0) | (v == 1)) for v in values):
        return [v == 1 for v in values], True
    directions = {scores[t].higher_is_better for t in tasks}
    if len(directions) == 1:
        return [v.astype(float) for v in values], directions.pop()
    return [v.astype(float) * (1 if scores[t].higher_is_better else -1) for t, v in zip(tasks, values)], True


def rank(deployments: Mapping[str, TaskScores], alpha: float = ALPHA) -> list[list[str]]:
    """The labels in rank groups, best first (statistics.rankings_with_ties on the same examples)."""
    if not deployments:
        raise InvalidArgumentError("rank needs at least one deployment")
    tasks = list(next(iter(deployments.values())))
    rows = {label: example_rows(scores, tasks) for label, scores in deployments.items()}
    directions = {higher for _, higher in rows.values()}
    if len(directions) != 1:
        raise InvalidArgumentError("the deployments' tasks are scored in different directions")
    return rankings_with_ties({label: r for label, (r, _) in rows.items()}, directions.pop(), alpha)


class Comparison(NamedTuple):
    difference: float     # average of A minus average of B (the rows' avg_accuracy units)
    ci_low: float         # 95% paired interval of `difference`
    ci_high: float
    p_value: float        # two-sided paired test (statistics.paired_test)
    favours: str          # "a", "b" or "tie": which side the data lean to (not significance)
    identical: bool       # every example scored the same: an exact tie, no test behind it


def compare_paired(a: TaskScores, b: TaskScores, confidence: float = 0.95) -> Comparison:
    """A vs B on the same examples: the difference of their averages with its paired interval (the t
    interval of the mean over tasks of per-example differences) and the paired test's p-value."""
    tasks = list(a)
    a_rows, higher = example_rows(a, tasks)
    b_rows, _ = example_rows(b, tasks)
    unequal = [t for t in tasks if a[t].n != b[t].n]
    if unequal:
        raise InvalidArgumentError(f"task '{unequal[0]}': the two deployments were not scored on the same examples")
    raw = [a[t].scores.numpy().astype(float) - b[t].scores.numpy().astype(float) for t in tasks]
    difference = float(np.mean([d.mean() for d in raw]))
    identical = not any(np.any(d != 0) for d in raw)
    low, high = (difference, difference) if identical else average_mean_interval(raw, confidence)
    test = paired_test(a_rows, b_rows, higher)
    return Comparison(difference, low, high, test.p_value, test.favours, identical)

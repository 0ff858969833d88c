"""Uncertainty of curve rows: the interval of a row's average accuracy, from its tasks' example counts.

Why: a recommendation ("1.5x is within 1 point of fine-tuned") is only as good as the test sets
behind it; with 200 examples a task's accuracy is uncertain by several points. Each task's accuracy
is a binomial proportion over its held-out examples, so the average gets statistics.average_interval
(Wilson per task, combined by MOVER). A row that already carries its per-task example counts (`n`,
{task: examples}) is trusted; otherwise the counts come from the zoo's held-out sets. Wilson is for
proportions: rows whose tasks are scored by another metric get the t interval of the mean of per-task
example means (statistics.average_mean_interval), which needs the per-example scores (curve.py has them).
"""
from __future__ import annotations

from typing import Mapping, Optional

from flexmerge_core.errors import InvalidArgumentError
from flexmerge_core.evaluation.scores import TaskScore
from flexmerge_core.evaluation.statistics import average_interval, average_mean_interval

CONFIDENCE = 0.95


def example_counts(zoo) -> dict[str, int]:
    """{task: number of held-out examples}; a task without held-out data is an error naming it."""
    counts = {}
    for t, name in enumerate(zoo.task_names):
        data = zoo.heldout(t)
        if data is None:
            raise InvalidArgumentError(f"task '{name}' of zoo '{zoo.name}' has no held-out data to count")
        counts[name] = int(len(data[1]))
    return counts


def _accuracy_only(row: Mapping) -> bool:
    metrics = row.get("metric")
    return not isinstance(metrics, Mapping) or all(m == "accuracy" for m in metrics.values())


def row_interval(row: Mapping, scores: Mapping[str, TaskScore],
                 confidence: float = CONFIDENCE) -> tuple[Optional[float], Optional[float]]:
    """The interval of a curve row's avg_accuracy from its tasks' per-example `scores` ({task: TaskScore}):
    Wilson + MOVER when every task is scored by accuracy, else the t interval (None, None when a task
    has fewer than 2 examples: no variance to estimate)."""
    tasks = list(row["accuracy"])
    if _accuracy_only(row):
        return average_interval([(row["accuracy"][t], scores[t].n) for t in tasks], confidence)
    if any(scores[t].n < 2 for t in tasks):
        return None, None
    return average_mean_interval([scores[t].scores.numpy() for t in tasks], confidence)


def with_interval(row: Mapping, counts: Optional[Mapping[str, int]] = None, confidence: float = CONFIDENCE) -> dict:
    """The row plus `ci_low`, `ci_high` (interval of avg_accuracy) and `n` ({task: examples}).

    Other metrics than accuracy need per-example scores: the row's own `ci_low`/`ci_high` (from
    compute_curve) are kept, and a row without them gets None."""
    accuracy = row["accuracy"]
    n = row.get("n")
    if not isinstance(n, Mapping):
        if counts is None:
            raise InvalidArgumentError("curve row has no example counts 'n': pass counts=")
        missing = [t for t in accuracy if t not in counts]
        if missing:
            raise InvalidArgumentError(f"no example count for task '{missing[0]}'")
        n = {t: counts[t] for t in accuracy}
    if not _accuracy_only(row):
        low, high = row.get("ci_low"), row.get("ci_high")
    else:
        low, high = average_interval([(accuracy[t], n[t]) for t in accuracy], confidence)
    return {**row, "ci_low": low, "ci_high": high, "n": dict(n)}

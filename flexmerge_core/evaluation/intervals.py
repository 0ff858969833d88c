"""Uncertainty of curve rows: the interval of a row's average accuracy, from its tasks' example counts.

Why: a recommendation ("1.5x is within 1 point of fine-tuned") is only as good as the test sets
behind it; with 200 examples a task's accuracy is uncertain by several points. Each task's accuracy
is a binomial proportion over its held-out examples, so the average gets statistics.average_interval
(Wilson per task, combined by MOVER). A row that already carries its per-task example counts (`n`,
{task: examples}) is trusted; otherwise the counts come from the zoo's held-out sets. Rows whose
tasks are scored by another metric than accuracy get no interval (None): Wilson is for proportions.
"""
from __future__ import annotations

from typing import Mapping, Optional

from flexmerge_core.errors import InvalidArgumentError
from flexmerge_core.evaluation.statistics import average_interval

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


def with_interval(row: Mapping, counts: Optional[Mapping[str, int]] = None, confidence: float = CONFIDENCE) -> dict:
    """The row plus `ci_low`, `ci_high` (interval of avg_accuracy) and `n` ({task: examples})."""
    accuracy = row["accuracy"]
    n = row.get("n")
    if not isinstance(n, Mapping):
        if counts is None:
            raise InvalidArgumentError("curve row has no example counts 'n': pass counts=")
        missing = [t for t in accuracy if t not in counts]
        if missing:
            raise InvalidArgumentError(f"no example count for task '{missing[0]}'")
        n = {t: counts[t] for t in accuracy}
    metrics = row.get("metric")
    if isinstance(metrics, Mapping) and any(m != "accuracy" for m in metrics.values()):
        low = high = None
    else:
        low, high = average_interval([(accuracy[t], n[t]) for t in accuracy], confidence)
    return {**row, "ci_low": low, "ci_high": high, "n": dict(n)}

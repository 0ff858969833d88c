"""What the charts' value axis shows, read from the curve rows' `metric` and `higher_is_better`.

Why: a zoo's tasks may be scored by accuracy (a fraction, drawn in %), by an error where lower is
better (e.g. MSE, drawn as is), or by different metrics per task, whose values cannot be averaged in
one unit; then every task is drawn relative to its own fine-tuned model (normalised score, 100% =
parity, higher is better whatever the metric). Pages ask this module instead of assuming accuracy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

from flexmerge_core.evaluation.task_eval import normalized_value


@dataclass(frozen=True)
class MetricAxis:
    name: str                 # "accuracy", "MSE", ... or "normalised score" when the tasks' metrics differ
    higher_is_better: bool
    percent: bool             # values are fractions drawn in %
    normalized: bool          # every task relative to its fine-tuned model

    @property
    def title(self) -> str:
        """The axis title, e.g. "accuracy (%)", "MSE (lower is better)", "normalised score (% of fine-tuned)"."""
        if self.normalized:
            return f"{self.name} (% of fine-tuned)"
        if self.percent:
            return f"{self.name} (%)"
        return f"{self.name} ({'higher' if self.higher_is_better else 'lower'} is better)"

    @property
    def capitalized(self) -> str:
        return self.name[:1].upper() + self.name[1:]

    def scale(self, value: float) -> float:
        return 100 * value if self.percent else value

    def average(self, row: Mapping) -> float:
        """The row's average in axis units (its normalised average when the tasks' metrics differ)."""
        return self.scale(row["avg_normalized_accuracy"] if self.normalized else row["avg_accuracy"])

    def task_values(self, row: Mapping, finetuned: Optional[Mapping[str, float]]) -> dict[str, float]:
        """Each task's value of the row in axis units (normalised ones need the fine-tuned values)."""
        if self.normalized:
            return {t: self.scale(normalized_value(v, finetuned[t], row["higher_is_better"][t]))
                    for t, v in row["accuracy"].items()}
        return {t: self.scale(v) for t, v in row["accuracy"].items()}

    def finetuned_values(self, finetuned: Optional[Mapping[str, float]]) -> Optional[dict[str, float]]:
        """The fine-tuned models' values in axis units (100% each when normalised); None when unknown."""
        if not finetuned:
            return None
        return {t: self.scale(1.0 if self.normalized else v) for t, v in finetuned.items()}

    def finetuned_average(self, finetuned: Optional[Mapping[str, float]]) -> Optional[float]:
        """The fine-tuned models' average in axis units (the reference line); None when unknown."""
        if not finetuned:
            return None
        return self.scale(1.0 if self.normalized else sum(finetuned.values()) / len(finetuned))

    def format(self, value: float, decimals: int = 1) -> str:
        """A value in axis units as text: "68.8%" (`decimals` after the point) or "0.01234"."""
        return f"{value:.{decimals}f}%" if self.percent else f"{value:.4g}"

PERCENT_METRICS = ("accuracy", "exact match")   # fractions of examples, drawn in %
ACCURACY = MetricAxis("accuracy", higher_is_better=True, percent=True, normalized=False)


def axis_for(rows: Sequence[Mapping]) -> MetricAxis:
    """The axis for curve rows: their shared metric, else normalised scores (accuracy when there are no rows)."""
    metrics = {(m, row["higher_is_better"][t]) for row in rows for t, m in row["metric"].items()}
    if not metrics:
        return ACCURACY
    if len(metrics) > 1:
        return MetricAxis("normalised score", higher_is_better=True, percent=True, normalized=True)
    name, higher = metrics.pop()
    return MetricAxis(name, higher_is_better=higher, percent=name in PERCENT_METRICS, normalized=False)

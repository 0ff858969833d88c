"""Deployment recommendations from accuracy-size curves (issue 16).

Input: curves = {algorithm: [row, ...]} with curve rows holding at least "size" (model units),
"avg_accuracy" (a fraction in [0, 1]) and, where a function needs them, "ci_low" / "ci_high" (the
interval of avg_accuracy) and "megabytes". Picks are returned with their row unchanged; "nothing
qualifies" is an answer (None), malformed input is an InvalidArgumentError naming the culprit.
"""
from __future__ import annotations

import math
import numbers
from typing import NamedTuple, Optional

from flexmerge_core.errors import InvalidArgumentError

TOLERANCE = 1e-9    # thresholds are inclusive up to float rounding (0.8 - 0.02 != 0.78 in binary)


class Pick(NamedTuple):
    algorithm: str
    size: float
    row: dict


def _value(row, key: str, where: str) -> float:
    """row[key] as a finite number, else an error naming the row and key."""
    value = row.get(key) if isinstance(row, dict) else None
    if not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise InvalidArgumentError(f"{where}: '{key}' must be a finite number, got {value!r}")
    return float(value)


def _picks(curves: dict, keys: tuple[str, ...]) -> list[Pick]:
    """Every row of every curve as a Pick, after checking that it has finite `keys`."""
    if not isinstance(curves, dict):
        raise InvalidArgumentError("curves must map algorithm names to lists of curve rows")
    picks = []
    for algorithm, rows in curves.items():
        if not isinstance(rows, list):
            raise InvalidArgumentError(f"curve '{algorithm}' must be a list of curve rows")
        for index, row in enumerate(rows):
            where = f"curve '{algorithm}' row {index}"
            for key in keys:
                _value(row, key, where)
            picks.append(Pick(algorithm, float(row["size"]), row))
    return picks


def _fraction(value, name: str) -> float:
    if not isinstance(value, numbers.Real) or not 0 <= value <= 1:
        raise InvalidArgumentError(f"{name} must be an accuracy fraction in [0, 1], got {value!r}")
    return float(value)


def smallest_within(curves: dict, finetuned_avg: float, points: float, conservative: bool = False) -> Optional[Pick]:
    """Smallest deployment whose average accuracy is at most `points` percentage points below the
    fine-tuned models' average (accuracies are fractions, so 2 points = 0.02); None if none is.

    conservative=True asks the same of the row's ci_low (the loss is within P points even at the low
    end of its interval). Equal sizes: higher accuracy wins (strictly better at no cost), then name.
    """
    target = _fraction(finetuned_avg, "finetuned_avg")
    if not isinstance(points, numbers.Real) or not 0 <= points <= 100:
        raise InvalidArgumentError(f"points must be percentage points in [0, 100], got {points!r}")
    key = "ci_low" if conservative else "avg_accuracy"
    qualifying = [pick for pick in _picks(curves, ("size", "avg_accuracy", key))
                  if pick.row[key] >= target - points / 100 - TOLERANCE]
    return min(qualifying, key=lambda p: (p.size, -p.row["avg_accuracy"], p.algorithm), default=None)


def best_under(curves: dict, max_mb: float) -> Optional[Pick]:
    """Most accurate deployment of at most `max_mb` megabytes; ties: smaller size, then algorithm name.
    None if every deployment is larger."""
    if not isinstance(max_mb, numbers.Real) or not max_mb > 0 or not math.isfinite(max_mb):
        raise InvalidArgumentError(f"max_mb must be a finite positive number of megabytes, got {max_mb!r}")
    fitting = [pick for pick in _picks(curves, ("size", "avg_accuracy", "megabytes"))
               if pick.row["megabytes"] <= max_mb * (1 + TOLERANCE)]
    return min(fitting, key=lambda p: (-p.row["avg_accuracy"], p.size, p.algorithm), default=None)


def knee(curve: list) -> Optional[dict]:
    """The row farthest above the chord joining the curve's smallest-size and largest-size rows.

    Both axes are normalised to [0, 1] first (size by the size range, accuracy by the accuracy range
    of the curve), so the answer does not depend on units; in those axes the vertical height above
    the chord ranks points like their perpendicular distance. It is where extra size stops buying
    much accuracy. None when no row lies strictly above the chord (straight or convex curve, fewer
    than three sizes, flat accuracy). Ties: the smaller size. Duplicate sizes: the first such row
    is the chord's end.
    """
    picks = _picks({"curve": curve}, ("size", "avg_accuracy"))
    if not picks:
        return None
    first = min(picks, key=lambda p: p.size)
    last = max(picks, key=lambda p: p.size)
    accuracies = [p.row["avg_accuracy"] for p in picks]
    width, height = last.size - first.size, max(accuracies) - min(accuracies)
    if width == 0 or height == 0:
        return None

    def above_chord(pick: Pick) -> float:
        x = (pick.size - first.size) / width
        chord = first.row["avg_accuracy"] + x * (last.row["avg_accuracy"] - first.row["avg_accuracy"])
        return (pick.row["avg_accuracy"] - chord) / height

    best = max(picks, key=lambda p: (above_chord(p), -p.size))
    return best.row if above_chord(best) > TOLERANCE else None

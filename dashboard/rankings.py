"""Rankings of several curves at common size budgets, and where the ranking changes.

Why: the Compare page's question is "which algorithm should I use at my memory budget?", and the
answer can flip as the budget grows; a table that marks those flips answers it at a glance.
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence

import pandas as pd


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def ranking_table(values: Mapping[str, Mapping[float, Optional[float]]], budgets: Sequence[float],
                  higher_is_better: bool = True, fmt: Callable[[float], str] = _percent) -> pd.DataFrame:
    """One row per budget: the labels best-first (highest first, or lowest when lower is better, e.g.
    an error; ties by name), each with its value as `fmt` writes it (default: a fraction in %), and
    whether the order changed from the previous budget. values[label][budget] is None where that curve
    cannot reach the budget (it is then left out of that row's ranking)."""
    rows, previous = [], None
    width = len(values)
    sign = -1 if higher_is_better else 1
    for budget in budgets:
        scored = [(label, v[budget]) for label, v in values.items() if v.get(budget) is not None]
        scored.sort(key=lambda item: (sign * item[1], item[0]))
        order = [label for label, _ in scored]
        row = {"budget": f"{budget:.2f}x"}
        for rank in range(width):
            row[f"#{rank + 1}"] = (f"{scored[rank][0]} ({fmt(scored[rank][1])})"
                                   if rank < len(scored) else "")
        row["ranking changed"] = previous is not None and order != previous
        rows.append(row)
        previous = order
    return pd.DataFrame(rows)


def highlight_changes(table: pd.DataFrame):
    """A Styler that shades the rows where the ranking changed."""
    def shade(row):
        colour = "background-color: #ffe8a3" if row["ranking changed"] else ""
        return [colour] * len(row)

    return table.style.apply(shade, axis=1)

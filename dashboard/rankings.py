"""Rankings of several curves at common size budgets, and where a significant order flips.

Why: the Compare page's question is "which algorithm should I use at my memory budget?", and the
answer can flip as the budget grows; a table that marks those flips answers it at a glance. A flip
counts only when it is significant: the engine ranks with paired tests on the same held-out
examples (studio.Studio.rankings), so algorithms whose difference sampling explains share a rank,
and "ranking changed" marks only sizes where an order that was significant is now significantly
reversed (statistics.flips_along), not a reshuffle of ties.
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence

import pandas as pd

from flexmerge_core.evaluation.statistics import flips_along

TIE = " = "


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def ranking_table(values: Mapping[str, Mapping[float, Optional[float]]], rankings: Mapping[float, list[list[str]]],
                  budgets: Sequence[float], fmt: Callable[[float], str] = _percent) -> pd.DataFrame:
    """One row per budget: column "#k" holds the labels of rank k (rankings[budget][k - 1], best first;
    labels of one rank, i.e. not significantly different, joined by " = "), each with its value as
    `fmt` writes it (values[label][budget]; default: a fraction in %); "ranking changed" is True where
    a significant order flips, and "change" says which (e.g. "ties now above ta")."""
    width = max((len(groups) for groups in rankings.values()), default=0)
    flips = flips_along([rankings[b] for b in budgets])
    rows = []
    for budget, flipped in zip(budgets, flips):
        groups = rankings[budget]
        row = {"budget": f"{budget:.2f}x"}
        for rank in range(width):
            row[f"#{rank + 1}"] = (TIE.join(f"{label} ({fmt(values[label][budget])})" for label in groups[rank])
                                   if rank < len(groups) else "")
        row["ranking changed"] = bool(flipped)
        row["change"] = "; ".join(f"{now} now above {before}" for before, now in flipped)
        rows.append(row)
    return pd.DataFrame(rows)


def highlight_changes(table: pd.DataFrame):
    """A Styler that shades the rows where a significant order flipped."""
    def shade(row):
        colour = "background-color: #ffe8a3" if row["ranking changed"] else ""
        return [colour] * len(row)

    return table.style.apply(shade, axis=1)

"""The paper's findings judged on evaluated curves: each one "reproduced", "not reproduced" or
"inconclusive", with the numbers, intervals and p-values behind the verdict.

Why verdicts with rules written down: a chart invites reading a one-point gap as a result; here a
claim counts only when a paired test on the same held-out examples says the gap is larger than
test-set sampling explains. The rules:
- a gain (1x -> 2x): reproduced when the larger deployment is significantly better (paired test at
  alpha), not reproduced when it is significantly worse, else inconclusive;
- rankings change with size: reproduced when some significant order flips (statistics.flips_along),
  inconclusive when only the averages' order changes (no flip is significant), not reproduced when
  the averages' order never changes;
- A beats B1, B2, ... (FlexMerge vs baselines, greedy vs other orders, min vs other linkages), per
  size: the comparisons of one finding are one family, Holm-adjusted (statistics.holm), because
  "B is ahead somewhere" looks at many sizes. Per alternative: reproduced when A is significantly
  ahead at some size and never behind, not reproduced when the alternative is significantly ahead
  at some size, else inconclusive. The finding: not reproduced if any alternative is, reproduced if
  all are, else inconclusive. Deployments that score every example identically (e.g. at 1x and Mx,
  where every method keeps the same models) are exact ties and not counted as tests.
Values are in the curve rows' units (fractions for accuracy); differences are A minus B.
"""
from __future__ import annotations

from typing import Mapping, Sequence

from flexmerge_core.errors import InvalidArgumentError
from flexmerge_core.evaluation.curve import CurveResult
from flexmerge_core.evaluation.paired import ALPHA, compare_paired, rank
from flexmerge_core.evaluation.statistics import flips_along, holm

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)


def _row(curve: CurveResult, budget: float) -> dict:
    row = next((r for r in curve.rows if r["size_budget"] == budget), None)
    if row is None or budget not in curve.scores:
        raise InvalidArgumentError(f"the curve was not evaluated at budget {budget:g}")
    return row


def _meets(curve: CurveResult, budget: float) -> bool:
    return _row(curve, budget)["size"] <= budget     # as Partition.budget_met


def point(row: Mapping) -> dict:
    """What a finding reports about one deployment: its size and average with the 95% interval."""
    return {key: row[key] for key in ("size_budget", "size", "avg_accuracy", "ci_low", "ci_high")}


def _text(value: float, percent: bool, signed: bool = False) -> str:
    sign = "+" if signed else ""
    return f"{100 * value:{sign}.2f}" + (" points" if signed else "%") if percent else f"{value:{sign}.4g}"


def _percent(curve: CurveResult) -> bool:
    return all(m == "accuracy" for row in curve.rows for m in row["metric"].values())


def _direction(curve: CurveResult) -> bool:
    directions = {h for row in curve.rows for h in row["higher_is_better"].values()}
    return directions != {False}


def gain_finding(curve: CurveResult, algorithm: str, low: float = 1.0, high: float = 2.0,
                 alpha: float = ALPHA) -> dict:
    """(a) The gain from `low` to `high` (budgets of `curve`): paired test of the two deployments."""
    small, large = _row(curve, low), _row(curve, high)
    c = compare_paired(curve.scores[high], curve.scores[low])
    significant = not c.identical and c.p_value < alpha
    verdict = (INCONCLUSIVE if not significant else REPRODUCED if c.favours == "a" else NOT_REPRODUCED)
    pct = _percent(curve)
    summary = (f"{algorithm} at {large['size']:.2f}x: {_text(large['avg_accuracy'], pct)} vs "
               f"{_text(small['avg_accuracy'], pct)} at {small['size']:.2f}x, a change of "
               f"{_text(c.difference, pct, signed=True)} (95% interval {_text(c.ci_low, pct, True)} to "
               f"{_text(c.ci_high, pct, True)}), paired p = {c.p_value:.2g}.")
    return {"id": "gain_1x_to_2x", "title": f"Gain from {low:g}x to {high:g}x",
            "claim": f"Growing the deployment from {low:g}x to {high:g}x recovers accuracy lost by merging.",
            "verdict": verdict, "summary": summary, "algorithm": algorithm,
            "points": [point(small), point(large)], "gain": c.difference, "gain_ci": [c.ci_low, c.ci_high],
            "p_value": c.p_value}


def _average_order(rows: Mapping[str, dict], higher: bool) -> list[str]:
    return sorted(rows, key=lambda a: ((-1 if higher else 1) * rows[a]["avg_accuracy"], a))


def rank_finding(curves: Mapping[str, CurveResult], budgets: Sequence[float], alpha: float = ALPHA) -> dict:
    """(b) Rankings of algorithms at each budget (ties = no significant difference) and where a
    significant order flips as size grows. An algorithm is ranked only at budgets it meets."""
    if len(curves) < 2:
        raise InvalidArgumentError("rank changes need at least two algorithms")
    steps, previous_order, reorders = [], None, 0
    for budget in budgets:
        present = {a: c for a, c in curves.items() if _meets(c, budget)}
        rows = {a: _row(c, budget) for a, c in present.items()}
        groups = rank({a: c.scores[budget] for a, c in present.items()}, alpha) if present else []
        order = _average_order(rows, _direction(next(iter(curves.values()))))
        if previous_order is not None:
            common = [a for a in order if a in previous_order]
            reorders += common != [a for a in previous_order if a in common]
        previous_order = order
        steps.append({"size_budget": budget, "groups": groups, "points": {a: point(r) for a, r in rows.items()}})
    flips = flips_along([s["groups"] for s in steps])
    for step, found in zip(steps, flips):
        step["flips"] = [list(f) for f in found]
    where = [f"{s['size_budget']:g}x ({', '.join(f'{y} over {x}' for x, y in s['flips'])})"
             for s in steps if s["flips"]]
    if where:
        verdict = REPRODUCED
        summary = "Significant order flips (now-above over formerly-above) at " + "; ".join(where) + "."
    elif reorders:
        verdict = INCONCLUSIVE
        summary = (f"The averages' order changes {reorders} time(s) as size grows, but no change is significant "
                   f"(paired tests at alpha = {alpha:g}).")
    else:
        verdict = NOT_REPRODUCED
        summary = "The averages' order is the same at every size."
    return {"id": "rank_changes", "title": "Rankings change with size",
            "claim": "The best algorithm at one size is not the best at every size.",
            "verdict": verdict, "summary": summary, "algorithms": list(curves), "rankings": steps}


def _sub_verdict(ahead: int, behind: int) -> str:
    return NOT_REPRODUCED if behind else REPRODUCED if ahead else INCONCLUSIVE


def versus_finding(finding_id: str, title: str, claim: str, reference: str, reference_curve: CurveResult,
                   alternatives: Mapping[str, CurveResult], budgets: Sequence[float], alpha: float = ALPHA) -> dict:
    """(c), (d), (e): `reference` against each alternative at each budget both meet (see the module's rules)."""
    rows = []
    for label, curve in alternatives.items():
        for budget in budgets:
            if _meets(reference_curve, budget) and _meets(curve, budget):
                c = compare_paired(reference_curve.scores[budget], curve.scores[budget])
                rows.append((label, budget, c))
    tested = [i for i, (_, _, c) in enumerate(rows) if not c.identical]
    adjusted = dict(zip(tested, holm([rows[i][2].p_value for i in tested]))) if tested else {}
    pct = _percent(reference_curve)
    out = []
    for label in alternatives:
        comparisons = []
        for i, (name, budget, c) in enumerate(rows):
            if name != label:
                continue
            p_holm = adjusted.get(i, 1.0)
            ahead = ("tie" if p_holm >= alpha or c.favours == "tie" else
                     reference if c.favours == "a" else label)
            comparisons.append({"size_budget": budget, "reference": point(_row(reference_curve, budget)),
                                "alternative": point(_row(alternatives[label], budget)),
                                "difference": c.difference, "ci_low": c.ci_low, "ci_high": c.ci_high,
                                "p_value": c.p_value, "p_holm": p_holm, "identical": c.identical, "ahead": ahead})
        mine = [c["size_budget"] for c in comparisons if c["ahead"] == reference]
        theirs = [c["size_budget"] for c in comparisons if c["ahead"] == label]
        differing = [c for c in comparisons if not c["identical"]]
        largest = max(differing, key=lambda c: abs(c["difference"]), default=None)
        text = (f"{reference} vs {label}: " + (
            "every example scored identically at every size." if largest is None else
            f"{reference} significantly ahead at {_sizes(mine)}, {label} at {_sizes(theirs)}; largest gap "
            f"{_text(largest['difference'], pct, True)} (95% interval {_text(largest['ci_low'], pct, True)} to "
            f"{_text(largest['ci_high'], pct, True)}) at {largest['size_budget']:g}x, "
            f"Holm p = {largest['p_holm']:.2g}."))
        out.append({"label": label, "verdict": _sub_verdict(len(mine), len(theirs)), "summary": text,
                    "reference_ahead_at": mine, "alternative_ahead_at": theirs, "comparisons": comparisons})
    verdicts = {a["verdict"] for a in out}
    verdict = (NOT_REPRODUCED if NOT_REPRODUCED in verdicts else REPRODUCED if verdicts == {REPRODUCED}
               else INCONCLUSIVE)
    return {"id": finding_id, "title": title, "claim": claim, "verdict": verdict,
            "summary": " ".join(a["summary"] for a in out), "reference": reference, "alternatives": out,
            "tests": len(tested)}


def _sizes(budgets: Sequence[float]) -> str:
    return ", ".join(f"{b:g}x" for b in budgets) if budgets else "no size"

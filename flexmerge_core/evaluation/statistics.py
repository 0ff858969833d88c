"""Confidence intervals and paired significance tests for evaluation results (issue 16).

Why: accuracies on finite test sets are estimates. Before the studio says "algorithm A beats B" or
"the ranking changed", the difference must be larger than what the test-set sampling alone explains.

Conventions. Accuracies are fractions in [0, 1]. Per-example results of one algorithm are "rows": one
1-D array per task, aligned example by example with the other algorithm's rows (same tasks, same
examples, same order). Boolean arrays mean "this example is correct"; numeric arrays are any
per-example metric (e.g. squared error), with `higher_is_better` saying which way is good.
Intervals are two-sided at `confidence`; tests are two-sided at level `alpha`.
"""
from __future__ import annotations

import itertools
import math
import numbers
from collections import defaultdict
from typing import NamedTuple, Sequence

import numpy as np
from scipy import stats

from flexmerge_core.errors import InvalidArgumentError

EXACT_MCNEMAR_BELOW = 25        # mcnemar(): exact binomial below this many discordant pairs, else chi-square
EXACT_STATES_MAX = 1_000_000    # combined_paired_test(): exact null distribution up to this many states


def _level(confidence: float) -> float:
    if not isinstance(confidence, numbers.Real) or not 0 < confidence < 1:
        raise InvalidArgumentError(f"confidence must be a number in (0, 1), got {confidence!r}")
    return float(confidence)


def _z(confidence: float) -> float:
    """Two-sided standard-normal quantile for `confidence` (0.95 -> 1.96)."""
    return float(stats.norm.ppf(0.5 + _level(confidence) / 2))


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion: all p the score test at `confidence` keeps.

    Why Wilson: unlike p_hat +- z*se it never leaves [0, 1] and is not empty-width at 0 or n successes.
    n = 0 raises InvalidArgumentError: a task without examples has no accuracy to bound, and (0, 1)
    would hide that bug. `successes` may be fractional (accuracy * n from a rounded accuracy).
    """
    z = _z(confidence)
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise InvalidArgumentError(f"n must be a positive whole number of examples, got {n!r}")
    if not isinstance(successes, numbers.Real) or not 0 <= successes <= n:
        raise InvalidArgumentError(f"successes must lie in [0, n={n}], got {successes!r}")
    p = successes / n
    shrink = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / shrink
    half = z / shrink * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def average_interval(per_task: Sequence[tuple[float, int]], confidence: float = 0.95) -> tuple[float, float]:
    """Interval for the mean of independent per-task accuracies, given (accuracy, n) per task.

    Method: MOVER (Zou & Donner 2008, "method of variance estimates recovery"), which recovers each
    task's variance from its Wilson limits: with mean m = sum p_k / K,
      low  = m - sqrt(sum (p_k - wilson_low_k)^2) / K,   high = m + sqrt(sum (wilson_high_k - p_k)^2) / K.
    Why: for large n it is the normal interval with var = sum p_k(1-p_k)/n_k / K^2, but it stays inside
    [0, 1], always contains m, is asymmetric near 0 and 1 like Wilson (a plain normal interval has zero
    width when every task is perfect), and for one task it is exactly the Wilson interval.
    """
    if not per_task:
        raise InvalidArgumentError("average_interval needs at least one (accuracy, n) pair")
    for value, _ in per_task:
        if not isinstance(value, numbers.Real) or not 0 <= value <= 1:
            raise InvalidArgumentError(f"accuracy must be a fraction in [0, 1], got {value!r}")
    values = np.array([value for value, _ in per_task], dtype=float)
    lows, highs = np.array([wilson_interval(value * n, n, confidence) for value, n in per_task]).T
    k = len(values)
    mean = float(values.mean())
    low = mean - math.sqrt(float(np.sum((values - lows) ** 2))) / k
    high = mean + math.sqrt(float(np.sum((highs - values) ** 2))) / k
    return max(0.0, low), min(1.0, high)


def _as_rows(rows, name: str) -> list[np.ndarray]:
    """Validated list of non-empty 1-D per-task arrays (bool or finite numbers)."""
    if not isinstance(rows, (list, tuple)) or not rows:
        raise InvalidArgumentError(f"{name} must be a non-empty list of per-task arrays")
    out = []
    for task, row in enumerate(rows):
        row = np.asarray(row)
        if row.ndim != 1 or row.size == 0:
            raise InvalidArgumentError(f"{name}[{task}] must be a non-empty 1-D array of per-example results")
        if row.dtype != bool and (not np.issubdtype(row.dtype, np.number) or not np.all(np.isfinite(row))):
            raise InvalidArgumentError(f"{name}[{task}] must hold booleans or finite numbers")
        out.append(row)
    return out


def average_mean_interval(values_per_task, confidence: float = 0.95) -> tuple[float, float]:
    """t interval for the mean over tasks of per-task example means (any numeric metric).

    var = sum s_k^2/n_k / K^2 with Welch-Satterthwaite degrees of freedom: the standard interval for a
    linear combination of independent sample means. Each task needs >= 2 examples (s_k^2 needs them).
    """
    _level(confidence)
    rows = [row.astype(float) for row in _as_rows(values_per_task, "values_per_task")]
    if any(row.size < 2 for row in rows):
        raise InvalidArgumentError("every task needs at least 2 examples for a variance estimate")
    k = len(rows)
    mean = float(np.mean([row.mean() for row in rows]))
    parts = np.array([row.var(ddof=1) / row.size for row in rows])
    variance = parts.sum() / k ** 2
    if variance == 0:
        return mean, mean
    dof = parts.sum() ** 2 / np.sum(parts ** 2 / np.array([row.size - 1 for row in rows]))
    half = float(stats.t.ppf(0.5 + confidence / 2, dof)) * math.sqrt(variance)
    return mean - half, mean + half


def mean_interval(values_per_example, confidence: float = 0.95) -> tuple[float, float]:
    """Student t interval for the mean of one task's per-example values (e.g. squared errors)."""
    return average_mean_interval([values_per_example], confidence)


class McNemarResult(NamedTuple):
    b: int              # examples A gets right and B wrong
    c: int              # examples A gets wrong and B right
    statistic: float    # exact: min(b, c); chi-square: (|b - c| - 1)^2 / (b + c)
    p_value: float      # two-sided
    exact: bool         # True: exact binomial test; False: chi-square (1 dof) with continuity correction


def _paired_bools(correct_a, correct_b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(correct_a), np.asarray(correct_b)
    if a.dtype != bool or b.dtype != bool or a.ndim != 1 or a.shape != b.shape:
        raise InvalidArgumentError("correct_a and correct_b must be 1-D boolean arrays of the same length")
    return a, b


def _discordant(correct_a, correct_b) -> tuple[int, int]:
    a, b = _paired_bools(correct_a, correct_b)
    return int(np.sum(a & ~b)), int(np.sum(~a & b))


def mcnemar(correct_a, correct_b) -> McNemarResult:
    """McNemar's test of equal accuracy on the same examples (only discordant pairs carry evidence).

    Exact two-sided binomial test (b ~ Bin(b + c, 1/2) under the null) below EXACT_MCNEMAR_BELOW
    discordant pairs, where the chi-square approximation is poor; chi-square with continuity
    correction above.
    """
    b, c = _discordant(correct_a, correct_b)
    d = b + c
    if d < EXACT_MCNEMAR_BELOW:
        p = 1.0 if d == 0 else min(1.0, 2 * float(stats.binom.cdf(min(b, c), d, 0.5)))
        return McNemarResult(b, c, float(min(b, c)), p, True)
    statistic = max(abs(b - c) - 1, 0) ** 2 / d
    return McNemarResult(b, c, statistic, float(stats.chi2.sf(statistic, 1)), False)


def combined_paired_test(per_task: Sequence[tuple]) -> float:
    """Two-sided p-value that A and B have the same average accuracy, from per-task (correct_a, correct_b).

    Statistic: T = sum_k (b_k - c_k) / n_k, i.e. K times the difference of the average accuracies
    (each task weighs the same, as in the reported average). Null distribution: conditional on the
    discordant counts d_k, b_k ~ Bin(d_k, 1/2) independently (McNemar's null in every task). It is
    computed exactly (tasks of equal size pooled into one binomial) while it has at most
    EXACT_STATES_MAX states, else by its normal approximation (var T = sum d_k / n_k^2), which is then
    accurate because so many discordant pairs exist. For one task it is the exact McNemar test.
    Why not pooled b vs c: it weighs tasks by example count, not as the average does; why not
    Fisher/Stouffer: they ignore how many examples each task has and need per-task approximations.
    """
    if not per_task:
        raise InvalidArgumentError("combined_paired_test needs at least one task")
    discordant = defaultdict(int)          # task size -> pooled discordant pairs
    observed = 0.0
    for correct_a, correct_b in per_task:
        b, c = _discordant(correct_a, correct_b)
        n = len(correct_a)
        if n == 0:
            raise InvalidArgumentError("every task needs at least one example")
        discordant[n] += b + c
        observed += (b - c) / n
    groups = [(n, d) for n, d in sorted(discordant.items()) if d]
    if not groups:
        return 1.0
    if math.prod(d + 1 for _, d in groups) > EXACT_STATES_MAX:
        sd = math.sqrt(sum(d / n ** 2 for n, d in groups))
        return min(1.0, float(2 * stats.norm.sf(abs(observed) / sd)))
    values, probs = np.zeros(1), np.ones(1)
    for n, d in groups:
        wins = np.arange(d + 1)
        values = np.add.outer(values, (2 * wins - d) / n).ravel()
        probs = np.multiply.outer(probs, stats.binom.pmf(wins, d, 0.5)).ravel()
    return min(1.0, float(probs[np.abs(values) >= abs(observed) - 1e-12].sum()))


class PairedResult(NamedTuple):
    p_value: float      # two-sided
    favours: str        # "a", "b" or "tie": which side the observed differences lean to (not significance)


def _lean(score: float) -> str:
    return "a" if score > 0 else "b" if score < 0 else "tie"


def paired_metric_test(values_a, values_b, higher_is_better: bool) -> PairedResult:
    """Wilcoxon signed-rank test on per-example differences of a numeric metric (one task).

    Why Wilcoxon: per-example errors are skewed (squared errors), so a t test is unreliable, and it
    uses the size of each difference where the sign test only uses its sign. Zero differences are
    dropped (scipy's default "wilcox"); all-zero differences give p = 1.
    """
    a, b = _as_rows([values_a], "values_a")[0], _as_rows([values_b], "values_b")[0]
    if a.shape != b.shape:
        raise InvalidArgumentError("values_a and values_b must have the same length (the same examples)")
    diff = (a.astype(float) - b.astype(float)) * (1 if higher_is_better else -1)
    diff = diff[diff != 0]
    if diff.size == 0:
        return PairedResult(1.0, "tie")
    signed_rank_sum = float(np.sum(np.sign(diff) * stats.rankdata(np.abs(diff))))
    return PairedResult(float(stats.wilcoxon(diff).pvalue), _lean(signed_rank_sum))


def combined_metric_test(a_rows, b_rows, higher_is_better: bool) -> PairedResult:
    """Per-task Wilcoxon tests combined by Stouffer's method with equal task weights.

    Each task's two-sided p becomes a signed z = +-Phi^-1(1 - p/2) (sign: which side it favours);
    Z = sum z_k / sqrt(K). Why: ranks of different tasks' metrics are not comparable (different
    scales), per-task tests are; equal weights match the plain average over tasks. For one task the
    p-value is that task's Wilcoxon p-value.
    """
    a_rows, b_rows = _aligned(a_rows, b_rows)
    z = []
    for a, b in zip(a_rows, b_rows):
        result = paired_metric_test(a, b, higher_is_better)
        sign = {"a": 1, "b": -1, "tie": 0}[result.favours]
        z.append(sign * float(stats.norm.isf(result.p_value / 2)))
    total = sum(z) / math.sqrt(len(z))
    return PairedResult(min(1.0, float(2 * stats.norm.sf(abs(total)))), _lean(total))


def _aligned(a_rows, b_rows) -> tuple[list[np.ndarray], list[np.ndarray]]:
    a_rows, b_rows = _as_rows(a_rows, "a_rows"), _as_rows(b_rows, "b_rows")
    if len(a_rows) != len(b_rows) or any(a.shape != b.shape for a, b in zip(a_rows, b_rows)):
        raise InvalidArgumentError("a_rows and b_rows must cover the same tasks with the same examples")
    return a_rows, b_rows


def paired_test(a_rows, b_rows, higher_is_better: bool = True) -> PairedResult:
    """The paired test for these rows: combined McNemar for booleans, combined Wilcoxon otherwise."""
    a_rows, b_rows = _aligned(a_rows, b_rows)
    if not all(row.dtype == bool for row in a_rows + b_rows):
        return combined_metric_test(a_rows, b_rows, higher_is_better)
    if not higher_is_better:
        a_rows, b_rows = [~row for row in a_rows], [~row for row in b_rows]
    lean = sum((a.sum() - b.sum()) / a.size for a, b in zip(a_rows, b_rows))
    return PairedResult(combined_paired_test(list(zip(a_rows, b_rows))), _lean(float(lean)))


def compare(a_rows, b_rows, alpha: float = 0.05, higher_is_better: bool = True) -> str:
    """"a" or "b" when that one is significantly better at level alpha, else "tie"."""
    if not isinstance(alpha, numbers.Real) or not 0 < alpha < 1:
        raise InvalidArgumentError(f"alpha must be a number in (0, 1), got {alpha!r}")
    result = paired_test(a_rows, b_rows, higher_is_better)
    return result.favours if result.p_value < alpha else "tie"


def _average(rows, higher_is_better: bool) -> float:
    """Average over tasks of the per-task mean, oriented so that larger is better."""
    return float(np.mean([np.mean(row) for row in rows])) * (1 if higher_is_better else -1)


def rankings_with_ties(scores: dict, higher_is_better: bool = True, alpha: float = 0.05) -> list[list[str]]:
    """Algorithms in rank groups, best first: group i holds the algorithms of rank i + 1.

    Algorithms are sorted by their average (best first, then by name); walking down, an algorithm
    joins the current group unless compare() finds it significantly worse than the group's leader
    (its best member), in which case it starts the next group. So members of a group are never
    significantly worse than its leader (two members may still differ). alpha is per comparison
    (no multiplicity correction: at most one comparison per algorithm).
    """
    if not scores:
        raise InvalidArgumentError("rankings_with_ties needs at least one algorithm")
    order = sorted(scores, key=lambda name: (-_average(scores[name], higher_is_better), name))
    groups = [[order[0]]]
    for name in order[1:]:
        if compare(scores[groups[-1][0]], scores[name], alpha, higher_is_better) == "a":
            groups.append([name])
        else:
            groups[-1].append(name)
    return groups


def flipped_pairs(prev: list[list[str]], cur: list[list[str]]) -> list[tuple[str, str]]:
    """(x, y) pairs ranked significantly above each other in prev (x over y) and the other way in cur."""
    rank_prev = {name: i for i, group in enumerate(prev) for name in group}
    rank_cur = {name: i for i, group in enumerate(cur) for name in group}
    common = sorted(set(rank_prev) & set(rank_cur))
    return [(x, y) for x in common for y in common
            if rank_prev[x] < rank_prev[y] and rank_cur[x] > rank_cur[y]]


def ranking_changed(prev: list[list[str]], cur: list[list[str]]) -> bool:
    """True only when some significant order flips (tie <-> order changes are not flips)."""
    return bool(flipped_pairs(prev, cur))


def flips_along(rankings: Sequence[list[list[str]]]) -> list[list[tuple[str, str]]]:
    """Per step of a sequence of rankings (e.g. by growing size), the significant flips that land there.

    Entry i lists (x, y) where x was ranked significantly above y at the last earlier step that
    ordered the pair and y is ranked significantly above x in rankings[i] (so a flip across sizes
    where the two were tied still counts). Steps where an algorithm is absent leave its pairs' memory
    as it was. Entry 0 is always empty. Between two steps alone it is flipped_pairs(prev, cur).
    """
    last: dict[tuple[str, str], str] = {}      # (a, b) with a < b -> the one last ranked above
    out = []
    for groups in rankings:
        rank = {name: i for i, group in enumerate(groups) for name in group}
        flips = []
        for a, b in itertools.combinations(sorted(rank), 2):
            if rank[a] == rank[b]:
                continue
            above, below = (a, b) if rank[a] < rank[b] else (b, a)
            if last.get((a, b), above) != above:
                flips.append((below, above))
            last[(a, b)] = above
        out.append(sorted(flips))
    return out


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order: rejecting those below alpha keeps the
    chance of any false rejection among the family at most alpha (any dependence between tests).

    Why: a finding that says "B is ahead somewhere" looks at many sizes; at alpha each, one of twenty
    equal pairs would look significant by chance. Holm is uniformly more powerful than Bonferroni.
    """
    p = np.asarray(p_values, dtype=float)
    if p.ndim != 1 or np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise InvalidArgumentError("holm needs a list of p-values in [0, 1]")
    order = np.argsort(p, kind="stable")
    m = len(p)
    adjusted = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return [float(v) for v in out]

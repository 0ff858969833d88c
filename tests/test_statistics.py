"""evaluation.statistics against independent references: grid inversion of the score test, exact
binomial sums, brute-force enumeration of null distributions, scipy's t tests, Monte Carlo coverage."""
import itertools
import math
from statistics import NormalDist

import numpy as np
import pytest
from scipy import stats

from flexmerge_core.errors import InvalidArgumentError
from flexmerge_core.evaluation import statistics as st

Z95 = NormalDist().inv_cdf(0.975)


def correct(n: int, first: int) -> np.ndarray:
    """n examples of which the first `first` are correct."""
    return np.arange(n) < first


def pair(both: int, a_only: int, b_only: int, neither: int):
    """Aligned correctness of A and B with the given 2x2 counts."""
    a = np.array([True] * both + [True] * a_only + [False] * b_only + [False] * neither)
    b = np.array([True] * both + [False] * a_only + [True] * b_only + [False] * neither)
    return a, b


def binomial_two_sided(k: int, n: int) -> float:
    """P(|X - n/2| >= |k - n/2|) for X ~ Bin(n, 1/2), by summing the pmf."""
    return sum(math.comb(n, i) for i in range(n + 1) if abs(2 * i - n) >= abs(2 * k - n)) / 2 ** n


# --- intervals -------------------------------------------------------------------------------------

@pytest.mark.parametrize("x,n,confidence", [(0, 5, 0.95), (3, 5, 0.95), (5, 5, 0.95), (17, 40, 0.9),
                                            (1, 1, 0.99), (99, 250, 0.95)])
def test_wilson_is_the_set_of_p_the_score_test_keeps(x, n, confidence):
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    grid = np.linspace(0, 1, 400_001)
    kept = grid[np.abs(x / n - grid) <= z * np.sqrt(grid * (1 - grid) / n)]
    low, high = st.wilson_interval(x, n, confidence)
    assert low == pytest.approx(kept.min(), abs=3e-6) and high == pytest.approx(kept.max(), abs=3e-6)


def test_wilson_edges_have_closed_forms():
    n = 30
    assert st.wilson_interval(0, n) == (0.0, pytest.approx(Z95 ** 2 / (n + Z95 ** 2)))
    assert st.wilson_interval(n, n) == (pytest.approx(n / (n + Z95 ** 2)), 1.0)


def test_wilson_coverage_is_close_to_nominal_on_average():
    n = 40
    intervals = [st.wilson_interval(x, n) for x in range(n + 1)]
    coverage = []
    for p in np.linspace(0.02, 0.98, 97):
        pmf = [math.comb(n, x) * p ** x * (1 - p) ** (n - x) for x in range(n + 1)]
        coverage.append(sum(q for q, (lo, hi) in zip(pmf, intervals) if lo <= p <= hi))
    assert 0.94 <= np.mean(coverage) <= 0.96 and min(coverage) > 0.85


@pytest.mark.parametrize("args", [(0, 0), (3, 2), (-1, 5), ("1", 5), (1, 5.0), (1, 5, 1.0), (1, 5, 0)])
def test_wilson_rejects_bad_arguments(args):
    with pytest.raises(InvalidArgumentError):
        st.wilson_interval(*args)


def test_average_interval_of_one_task_is_wilson():
    assert st.average_interval([(0.7, 50)], 0.9) == pytest.approx(st.wilson_interval(35, 50, 0.9))


def test_average_interval_matches_the_normal_interval_for_large_n():
    per_task = [(0.62, 20_000), (0.81, 50_000), (0.9, 30_000)]
    mean = np.mean([p for p, _ in per_task])
    half = Z95 * math.sqrt(sum(p * (1 - p) / n for p, n in per_task)) / len(per_task)
    low, high = st.average_interval(per_task)
    assert low == pytest.approx(mean - half, rel=1e-3) and high == pytest.approx(mean + half, rel=1e-3)


def test_average_interval_of_perfect_tasks_touches_one_and_keeps_width():
    low, high = st.average_interval([(1.0, 50)] * 4)
    assert high == 1.0 and 0.9 < low < 1.0


def test_average_interval_covers_the_true_average():
    rng = np.random.default_rng(0)
    p, n = np.array([0.55, 0.7, 0.85, 0.97]), 60
    hits = 0
    for _ in range(3000):
        low, high = st.average_interval([(x / n, n) for x in rng.binomial(n, p)])
        hits += low <= p.mean() <= high
    assert 0.93 <= hits / 3000 <= 0.97


def test_mean_interval_is_scipys_one_sample_t_interval():
    values = np.array([0.3, 1.2, 0.05, 2.5, 0.8, 0.4, 1.9])
    reference = stats.ttest_1samp(values, 0).confidence_interval(0.9)
    assert st.mean_interval(values, 0.9) == pytest.approx((reference.low, reference.high))


def test_average_mean_interval_of_two_tasks_is_half_the_welch_difference_interval():
    x, y = np.array([1.0, 2.5, 0.4, 3.3, 1.1]), np.array([0.2, 0.3, 0.25, 0.9, 0.1, 0.4, 0.35, 0.5])
    welch = stats.ttest_ind(x, y, equal_var=False).confidence_interval()
    half = (welch.high - welch.low) / 4
    mean = (x.mean() + y.mean()) / 2
    assert st.average_mean_interval([x, y]) == pytest.approx((mean - half, mean + half))


def test_mean_interval_edges():
    assert st.mean_interval([2.0, 2.0, 2.0]) == (2.0, 2.0)
    for bad in ([1.0], [], [1.0, float("nan")], "abc"):
        with pytest.raises(InvalidArgumentError):
            st.mean_interval(bad)


# --- paired tests ----------------------------------------------------------------------------------

def test_mcnemar_exact_branch_is_the_binomial_sum():
    result = st.mcnemar(*pair(40, 7, 2, 11))
    assert (result.b, result.c, result.statistic, result.exact) == (7, 2, 2.0, True)
    assert result.p_value == pytest.approx(2 * (1 + 9 + 36) / 512) == binomial_two_sided(2, 9)


def test_mcnemar_chi_square_branch_with_continuity_correction():
    result = st.mcnemar(*pair(10, 30, 15, 5))
    assert result.statistic == pytest.approx(14 ** 2 / 45) and not result.exact
    assert result.p_value == pytest.approx(math.erfc(math.sqrt(14 ** 2 / 45 / 2)))


@pytest.mark.parametrize("counts", [(5, 0, 0, 5), (0, 4, 4, 0), (0, 20, 20, 0)])
def test_mcnemar_without_evidence_gives_p_one(counts):
    assert st.mcnemar(*pair(*counts)).p_value == 1.0


@pytest.mark.parametrize("a,b", [([1, 0], [1, 0]), ([True], [True, False]), ([[True]], [[True]])])
def test_mcnemar_rejects_non_boolean_or_misaligned_input(a, b):
    with pytest.raises(InvalidArgumentError):
        st.mcnemar(np.array(a), np.array(b))


def test_combined_test_of_one_task_is_exact_mcnemar():
    assert st.combined_paired_test([pair(3, 9, 3, 1)]) == pytest.approx(binomial_two_sided(3, 12))
    assert st.combined_paired_test([pair(0, 40, 22, 0)]) == pytest.approx(binomial_two_sided(22, 62))


def test_combined_test_of_equal_sized_tasks_pools_the_discordant_pairs():
    tasks = [pair(10, 4, 1, 5), pair(12, 3, 0, 5), pair(8, 2, 3, 7)]
    assert st.combined_paired_test(tasks) == pytest.approx(binomial_two_sided(9, 13))


def test_combined_test_of_unequal_tasks_matches_brute_force_enumeration():
    tasks = [pair(10, 4, 1, 5), pair(30, 2, 2, 6), pair(3, 0, 3, 1)]
    sizes, wins = [20, 40, 7], [4, 2, 0]
    discordant = [5, 4, 3]
    observed = sum((2 * w - d) / n for w, d, n in zip(wins, discordant, sizes))
    p = 0.0
    for outcome in itertools.product(*[range(d + 1) for d in discordant]):
        value = sum((2 * w - d) / n for w, d, n in zip(outcome, discordant, sizes))
        if abs(value) >= abs(observed) - 1e-12:
            p += math.prod(math.comb(d, w) / 2 ** d for w, d in zip(outcome, discordant))
    assert st.combined_paired_test(tasks) == pytest.approx(p)


def test_combined_test_falls_back_to_the_normal_approximation(monkeypatch):
    tasks = [pair(100, 60, 40, 0), pair(50, 45, 30, 25)]
    exact = st.combined_paired_test(tasks)
    monkeypatch.setattr(st, "EXACT_STATES_MAX", 0)
    observed, sd = 20 / 200 + 15 / 150, math.sqrt(100 / 200 ** 2 + 75 / 150 ** 2)
    normal = 2 * (1 - NormalDist().cdf(observed / sd))
    assert st.combined_paired_test(tasks) == pytest.approx(normal)
    assert normal == pytest.approx(exact, rel=0.1)


def test_combined_test_without_discordant_pairs_is_one():
    assert st.combined_paired_test([pair(5, 0, 0, 5), pair(1, 0, 0, 0)]) == 1.0


def signed_rank_p_by_enumeration(diff: np.ndarray) -> float:
    """Two-sided exact Wilcoxon p: share of the 2^n sign patterns with |signed rank sum| >= observed."""
    ranks = stats.rankdata(np.abs(diff))
    observed = abs(np.sum(np.sign(diff) * ranks))
    sums = [abs(np.dot(signs, ranks)) for signs in itertools.product((-1, 1), repeat=len(diff))]
    return float(np.mean(np.array(sums) >= observed - 1e-9))


def test_paired_metric_test_is_the_exact_signed_rank_test_and_respects_direction():
    errors_a = np.array([0.10, 0.40, 0.05, 0.90, 0.30, 0.20, 0.70, 0.15, 0.01, 0.50])
    errors_b = np.array([0.31, 0.45, 0.17, 0.60, 0.62, 0.28, 0.80, 0.19, 0.22, 0.52])
    expected = signed_rank_p_by_enumeration(errors_a - errors_b)
    lower = st.paired_metric_test(errors_a, errors_b, higher_is_better=False)
    higher = st.paired_metric_test(errors_a, errors_b, higher_is_better=True)
    assert lower.p_value == pytest.approx(expected) == higher.p_value
    assert (lower.favours, higher.favours) == ("a", "b")


def test_paired_metric_test_drops_zero_differences():
    a, b = np.array([3.0, 1.0, 4.0, 1.5, 5.0, 9.0]), np.array([2.0, 1.2, 4.0, 1.0, 5.0, 6.5])
    kept = (a - b)[a != b]
    assert st.paired_metric_test(a, b, True).p_value == pytest.approx(signed_rank_p_by_enumeration(kept))
    assert st.paired_metric_test(a, a, True) == (1.0, "tie")


def test_combined_metric_test_is_stouffer_of_the_task_tests():
    task1 = (np.array([1.0, 2.0, 3.5, 4.0, 5.5, 6.0, 7.2]), np.array([0.5, 2.2, 3.0, 3.1, 5.0, 4.0, 7.0]))
    task2 = (np.array([10.0, 11.0, 9.0, 12.0, 8.0]), np.array([10.5, 11.6, 9.8, 11.0, 8.9]))
    p1, p2 = signed_rank_p_by_enumeration(task1[0] - task1[1]), signed_rank_p_by_enumeration(task2[0] - task2[1])
    z = (NormalDist().inv_cdf(1 - p1 / 2) - NormalDist().inv_cdf(1 - p2 / 2)) / math.sqrt(2)
    result = st.combined_metric_test([task1[0], task2[0]], [task1[1], task2[1]], higher_is_better=True)
    assert result.p_value == pytest.approx(2 * (1 - NormalDist().cdf(abs(z))))
    assert result.favours == ("a" if z > 0 else "b")
    assert st.combined_metric_test([task1[0]], [task1[1]], True).p_value == pytest.approx(p1)


def test_compare_booleans_picks_the_significantly_better_side_or_tie():
    a, b = pair(50, 12, 1, 37)
    assert st.compare([a], [b]) == "a" and st.compare([b], [a]) == "b"
    assert st.compare([a], [b], higher_is_better=False) == "b"    # booleans as "is an error"
    close_a, close_b = pair(50, 3, 1, 46)
    assert st.compare([close_a, close_a], [close_b, close_b]) == "tie"
    assert binomial_two_sided(3, 12) == pytest.approx(0.146, abs=1e-3)   # three tasks: 9 vs 3 pairs
    assert st.compare([close_a] * 3, [close_b] * 3, alpha=0.1) == "tie"
    assert st.compare([close_a] * 3, [close_b] * 3, alpha=0.2) == "a"


def test_compare_numeric_metric_respects_direction():
    rng = np.random.default_rng(1)
    truth = rng.normal(size=40)
    error_small, error_large = (truth * 0.1) ** 2, (truth * 0.1 + 0.5) ** 2
    assert st.compare([error_small], [error_large], higher_is_better=False) == "a"
    assert st.compare([error_small], [error_large], higher_is_better=True) == "b"
    assert st.compare([error_small], [error_small + 1e-3 * rng.normal(size=40)], higher_is_better=False) == "tie"


@pytest.mark.parametrize("a_rows,b_rows,alpha", [([], [], 0.05), ([np.ones(3, bool)], [np.ones(4, bool)], 0.05),
                                                 ([np.ones(3, bool)], [np.ones(3, bool)] * 2, 0.05),
                                                 ([np.ones(3, bool)], [np.ones(3, bool)], 1.5)])
def test_compare_rejects_misaligned_rows_and_bad_alpha(a_rows, b_rows, alpha):
    with pytest.raises(InvalidArgumentError):
        st.compare(a_rows, b_rows, alpha)


# --- rankings --------------------------------------------------------------------------------------

def test_rankings_group_algorithms_not_significantly_worse_than_the_group_leader():
    # two tasks of 100 examples; A vs B: 2 discordant pairs (p=0.5), B vs C: 28 -> separate, C vs D: 2
    scores = {name: [correct(100, k), correct(100, k)] for name, k in
              {"B": 79, "A": 80, "D": 64, "C": 65}.items()}
    assert st.rankings_with_ties(scores) == [["A", "B"], ["C", "D"]]
    assert st.rankings_with_ties(scores, alpha=1e-12) == [["A", "B", "C", "D"]]


def test_rankings_compare_with_the_leader_not_the_neighbour():
    # A-B and B-C differ by 5 examples (p = 0.0625), A-C by 10 (p = 0.002)
    scores = {"A": [correct(100, 80)], "B": [correct(100, 75)], "C": [correct(100, 70)]}
    assert st.rankings_with_ties(scores) == [["A", "B"], ["C"]]


def test_rankings_of_errors_put_the_lowest_first():
    rng = np.random.default_rng(2)
    base = rng.normal(size=30) ** 2
    scores = {"big": [base + 1.0 + 0.01 * rng.random(30)], "small": [base], "same": [base.copy()]}
    assert st.rankings_with_ties(scores, higher_is_better=False) == [["same", "small"], ["big"]]


def test_ranking_changed_only_on_significant_flips():
    assert st.ranking_changed([["a"], ["b", "c"]], [["b"], ["a", "c"]])
    assert st.flipped_pairs([["a"], ["b", "c"]], [["b"], ["a", "c"]]) == [("a", "b")]
    assert not st.ranking_changed([["a"], ["b"]], [["a", "b"]])
    assert not st.ranking_changed([["a", "b"]], [["b"], ["a"]])
    assert not st.ranking_changed([["a"], ["b"]], [["new"], ["a"], ["b"]])


def test_flips_along_sizes_remember_the_last_significant_order():
    steps = [[["a"], ["b"], ["c"]],      # a > b > c
             [["a", "b"], ["c"]],        # a ~ b: no flip yet
             [["b"], ["a"], ["c"]],      # b > a: flip of (a, b) across the tie
             [["c"], ["b"]],             # a absent; c > b: flip of (b, c)
             [["a"], ["c"], ["b"]]]      # a back: over b again (flip), over c as before (none)
    assert st.flips_along(steps) == [[], [], [("a", "b")], [("b", "c")], [("b", "a")]]
    for prev, cur in zip(steps, steps[1:3]):   # adjacent steps alone: flipped_pairs
        assert st.flips_along([prev, cur])[1] == st.flipped_pairs(prev, cur)


def holm_by_definition(p, alpha):
    """Holm's step-down procedure: reject the smallest p-values while p_(i) <= alpha / (m - i)."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    rejected = set()
    for i, j in enumerate(order):
        if p[j] > alpha / (len(p) - i):
            break
        rejected.add(j)
    return rejected


def test_holm_adjusted_p_values_reject_exactly_what_the_step_down_procedure_rejects():
    rng = np.random.default_rng(5)
    for _ in range(50):
        p = list(np.concatenate([rng.uniform(0, 0.05, 3), rng.uniform(0, 1, 5)]))
        adjusted = st.holm(p)
        assert all(a >= q for a, q in zip(adjusted, p)) and max(adjusted) <= 1
        for alpha in (0.01, 0.05, 0.1):
            assert {i for i, a in enumerate(adjusted) if a <= alpha} == holm_by_definition(p, alpha)
    assert st.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert st.holm([]) == []
    with pytest.raises(InvalidArgumentError):
        st.holm([0.5, 1.5])

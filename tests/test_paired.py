"""evaluation.paired: TaskScores -> statistics' rows (direction, booleans vs numbers), ranks and paired
differences, checked against hand-made per-example scores and intervals computed here."""
import numpy as np
import pytest
import torch
from scipy import stats

from flexmerge_core.errors import InvalidArgumentError
from flexmerge_core.evaluation.paired import compare_paired, example_rows, rank
from flexmerge_core.evaluation.scores import TaskScore
from flexmerge_core.evaluation.statistics import combined_paired_test


def accuracy(bits) -> TaskScore:
    values = torch.tensor(bits, dtype=torch.float32)
    return TaskScore("accuracy", float(values.mean()), len(bits), True, values)


def errors(values, metric="MSE", higher=False) -> TaskScore:
    values = torch.tensor(values, dtype=torch.float32)
    return TaskScore(metric, float(values.mean()), len(values), higher, values)


def correct(n, first):
    return [1.0] * first + [0.0] * (n - first)


def test_accuracies_become_booleans_and_errors_keep_their_direction():
    rows, higher = example_rows({"t1": accuracy([1, 0, 1]), "t2": accuracy([0, 0])})
    assert higher and [r.dtype for r in rows] == [bool, bool] and rows[0].tolist() == [True, False, True]
    rows, higher = example_rows({"r": errors([0.5, 2.0])})
    assert not higher and rows[0].tolist() == [0.5, 2.0]
    # mixed directions: the lower-is-better task is negated so that higher is better everywhere
    rows, higher = example_rows({"r": errors([0.5, 2.0]), "s": errors([3.0, 1.0], "R2", True)}, ["s", "r"])
    assert higher and rows[0].tolist() == [3.0, 1.0] and rows[1].tolist() == [-0.5, -2.0]
    with pytest.raises(InvalidArgumentError, match="'missing'"):
        example_rows({"r": errors([1.0, 2.0])}, ["missing"])


def test_rank_puts_ties_in_one_group_and_the_lowest_error_first():
    # 100 examples: A 80 right, B 79 (1 discordant pair: tie), C 60 (20 pairs: worse)
    tied = rank({"B": {"t": accuracy(correct(100, 79))}, "A": {"t": accuracy(correct(100, 80))},
                 "C": {"t": accuracy(correct(100, 60))}})
    assert tied == [["A", "B"], ["C"]]
    rng = np.random.default_rng(0)
    base = rng.normal(size=40) ** 2
    ranked = rank({"big": {"r": errors(base + 1.0)}, "small": {"r": errors(base)}})
    assert ranked == [["small"], ["big"]]


def test_compare_paired_gives_the_difference_its_paired_interval_and_the_combined_mcnemar_p():
    a = {"t1": accuracy(correct(50, 40)), "t2": accuracy([1.0, 0.0] * 15)}
    b = {"t1": accuracy(correct(50, 30)), "t2": accuracy([0.0, 1.0] * 15)}
    c = compare_paired(a, b)
    d1, d2 = np.array(correct(50, 40)) - np.array(correct(50, 30)), np.array([1.0, -1.0] * 15)
    assert c.difference == pytest.approx((d1.mean() + d2.mean()) / 2)
    parts = [d.var(ddof=1) / len(d) for d in (d1, d2)]
    dof = sum(parts) ** 2 / sum(p ** 2 / (len(d) - 1) for p, d in zip(parts, (d1, d2)))
    half = stats.t.ppf(0.975, dof) * np.sqrt(sum(parts)) / 2
    assert (c.ci_low, c.ci_high) == pytest.approx((c.difference - half, c.difference + half))
    expected_p = combined_paired_test([(np.array(correct(50, 40)) == 1, np.array(correct(50, 30)) == 1),
                                       (np.array([1.0, 0.0] * 15) == 1, np.array([0.0, 1.0] * 15) == 1)])
    assert c.p_value == expected_p and c.favours == "a" and not c.identical
    same = compare_paired(a, a)
    assert same.identical and same.p_value == 1.0 and (same.difference, same.ci_low, same.ci_high) == (0, 0, 0)


def test_compare_paired_refuses_different_examples():
    with pytest.raises(InvalidArgumentError, match="task 't'"):
        compare_paired({"t": accuracy([1, 0, 1])}, {"t": accuracy([1, 0])})

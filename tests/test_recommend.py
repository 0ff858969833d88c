"""evaluation.recommend against hand-worked answers and brute force over random curves."""
import math

import numpy as np
import pytest

from flexmerge_core.errors import InvalidArgumentError
from flexmerge_core.evaluation.recommend import best_under, knee, smallest_within


def rows(points, mb_per_size=100.0, half_width=0.02):
    return [{"size": s, "avg_accuracy": a, "ci_low": a - half_width, "ci_high": a + half_width,
             "megabytes": s * mb_per_size} for s, a in points]


CURVES = {"ta": rows([(1, 0.70), (2, 0.80), (3, 0.84), (4, 0.85)]),
          "ties": rows([(1, 0.72), (2, 0.78), (3, 0.86), (4, 0.86)])}


def brute_smallest_within(curves, finetuned, points, key="avg_accuracy"):
    best = None
    for algorithm, curve in curves.items():
        for row in curve:
            if round(finetuned - row[key], 9) > points / 100:
                continue
            candidate = (row["size"], -row["avg_accuracy"], algorithm)
            if best is None or candidate < best[0]:
                best = (candidate, algorithm, row)
    return None if best is None else best[1:]


def brute_best_under(curves, max_mb):
    """Filter by size, keep the top accuracy, then the smallest size, then the first name."""
    fitting = [(algorithm, row) for algorithm, curve in curves.items() for row in curve if row["megabytes"] <= max_mb]
    if not fitting:
        return None
    top = [(a, r) for a, r in fitting if r["avg_accuracy"] == max(r["avg_accuracy"] for _, r in fitting)]
    smallest = [(a, r) for a, r in top if r["size"] == min(r["size"] for _, r in top)]
    return sorted(smallest, key=lambda item: item[0])[0]


def brute_knee(curve):
    """Largest perpendicular distance above the chord in normalised axes (cross product)."""
    sizes, accs = [r["size"] for r in curve], [r["avg_accuracy"] for r in curve]
    if max(sizes) == min(sizes) or max(accs) == min(accs):
        return None
    norm = [((s - min(sizes)) / (max(sizes) - min(sizes)), (a - min(accs)) / (max(accs) - min(accs))) for s, a in
            zip(sizes, accs)]
    (x0, y0), (x1, y1) = norm[sizes.index(min(sizes))], norm[sizes.index(max(sizes))]
    best, best_distance = None, 1e-9
    for row, (x, y) in sorted(zip(curve, norm), key=lambda item: item[0]["size"]):
        distance = ((x1 - x0) * (y - y0) - (y1 - y0) * (x - x0)) / math.hypot(x1 - x0, y1 - y0)
        if distance > best_distance + 1e-12:
            best, best_distance = row, distance
    return best


@pytest.mark.parametrize("points,expected", [(2, ("ties", 3)), (3, ("ties", 3)), (4, ("ties", 3)),
                                             (7, ("ta", 2)), (15, ("ties", 1)), (17, ("ties", 1)), (0, None)])
def test_smallest_within_hand_worked(points, expected):
    pick = smallest_within(CURVES, 0.87, points)
    assert (pick if pick is None else (pick.algorithm, pick.size)) == expected


def test_smallest_within_includes_the_exact_boundary_and_breaks_size_ties_by_accuracy_then_name():
    assert smallest_within(CURVES, 0.87, 2).row["avg_accuracy"] == 0.86       # ta's 0.85 at size 4 is bigger
    pick = smallest_within(CURVES, 0.80, 0)                                    # 0.80 - 0 meets ta size 2 exactly
    assert (pick.algorithm, pick.size) == ("ta", 2)
    same = {"b": rows([(2, 0.8)]), "a": rows([(2, 0.8)]), "c": rows([(2, 0.9)])}
    assert smallest_within(same, 0.9, 20).algorithm == "c"
    del same["c"]
    assert smallest_within(same, 0.9, 20).algorithm == "a"


def test_smallest_within_conservative_uses_the_interval_low_end():
    pick = smallest_within(CURVES, 0.87, 3, conservative=True)                 # needs ci_low >= 0.84
    assert (pick.algorithm, pick.size) == ("ties", 3)
    assert smallest_within(CURVES, 0.87, 2, conservative=True) is None


@pytest.mark.parametrize("max_mb,expected", [(250, ("ta", 2)), (300, ("ties", 3)), (400, ("ties", 3)),
                                             (100, ("ties", 1)), (99.9, None)])
def test_best_under_hand_worked(max_mb, expected):
    pick = best_under(CURVES, max_mb)
    assert (pick if pick is None else (pick.algorithm, pick.size)) == expected


def test_best_under_ties_go_to_the_smaller_size_then_the_name():
    curves = {"z": rows([(1.5, 0.9)]), "y": rows([(2, 0.9)]), "x": rows([(1.5, 0.9)])}
    assert best_under(curves, 1000)[:2] == ("x", 1.5)


def test_picks_match_brute_force_on_random_curves():
    rng = np.random.default_rng(3)
    for _ in range(200):
        curves = {name: rows([(float(s), float(np.round(rng.uniform(0.5, 0.95), 2)))
                              for s in rng.choice([1, 1.5, 2, 3, 4, 6], size=rng.integers(1, 6), replace=False)],
                             half_width=float(rng.uniform(0, 0.05)))
                  for name in rng.choice(["ta", "ties", "dare", "pcb"], size=rng.integers(1, 4), replace=False)}
        finetuned, points = float(rng.uniform(0.8, 0.97)), float(rng.integers(0, 15))
        max_mb = float(rng.uniform(50, 700))
        for conservative, key in ((False, "avg_accuracy"), (True, "ci_low")):
            pick = smallest_within(curves, finetuned, points, conservative)
            expected = brute_smallest_within(curves, finetuned, points, key)
            assert (pick if pick is None else (pick.algorithm, pick.row)) == expected
        pick = best_under(curves, max_mb)
        assert (pick if pick is None else (pick.algorithm, pick.row)) == brute_best_under(curves, max_mb)
        for curve in curves.values():
            assert knee(curve) is brute_knee(curve)


def test_knee_hand_worked():
    # normalised heights above the chord: size 2 -> 1/3, size 3 -> 4/15
    assert knee(CURVES["ta"])["size"] == 2
    assert knee(rows([(1, 0.6), (2, 0.7), (4, 0.9)])) is None                 # straight line
    assert knee(rows([(1, 0.6), (2, 0.62), (3, 0.7), (4, 0.9)])) is None     # convex: nothing above
    assert knee(rows([(1, 0.6), (4, 0.9)])) is None and knee([]) is None
    assert knee(rows([(1, 0.8), (2, 0.8), (3, 0.8)])) is None
    assert knee(rows([(1, 0.5), (2, 0.9), (3, 0.9), (4, 0.6)]))["size"] == 2   # a drop at the end still works


def test_knee_does_not_depend_on_units():
    scaled = [dict(r, size=r["size"] * 250.0, avg_accuracy=r["avg_accuracy"] * 100) for r in CURVES["ta"]]
    assert knee(scaled)["size"] == 500.0


@pytest.mark.parametrize("call", [
    lambda: smallest_within(CURVES, 87, 2),
    lambda: smallest_within(CURVES, 0.87, -1),
    lambda: smallest_within({"ta": [{"size": 1}]}, 0.87, 2),
    lambda: smallest_within({"ta": [{"size": 1, "avg_accuracy": float("nan")}]}, 0.87, 2),
    lambda: best_under(CURVES, 0),
    lambda: best_under({"ta": [{"size": 1, "avg_accuracy": 0.8}]}, 10),
    lambda: best_under([("ta", [])], 10),
    lambda: knee({"size": 1}),
])
def test_malformed_input_is_a_clear_error(call):
    with pytest.raises(InvalidArgumentError):
        call()

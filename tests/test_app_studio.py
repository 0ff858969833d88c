"""The dashboard's facade (flexmerge_core.studio) and its pure helpers (rankings, chart builders).

Checked against independent computations: the plan's own partitions, a fresh uncached engine curve,
the zoo's tensor sizes, and hand-worked ranking tables.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dashboard import charts  # noqa: E402
from dashboard.rankings import ranking_table  # noqa: E402


@pytest.fixture(scope="module")
def studio(app_zoo):
    from flexmerge_core.studio import Studio, open_studio_zoo

    return Studio(open_studio_zoo(str(app_zoo)))


@pytest.fixture(scope="module")
def explorer(studio):
    from flexmerge_core.studio import PlanChoice

    return studio.explorer(PlanChoice())


def test_explorer_is_memoised_per_choice(studio, explorer):
    from flexmerge_core.studio import PlanChoice

    assert studio.explorer(PlanChoice()) is explorer
    assert studio.explorer(PlanChoice(linkage="max")) is not explorer


def test_groups_by_step_matches_the_plans_partitions(explorer):
    table = explorer.groups_by_step()
    plan = explorer.plan
    assert table.shape == (len(plan.blocks), len(plan.events) + 1)
    for size in plan.achievable_sizes():
        partition = plan.partition_at(size)
        assert list(table[:, partition.num_events]) == [len(groups) for groups in partition.groups]
    assert (table[:, 0] == plan.num_tasks).all() and (table[:, -1] == 1).all()


def test_partition_view_reports_size_and_megabytes(app_zoo, explorer):
    from flexmerge_core.zoo import open_zoo

    zoo = open_zoo(app_zoo)
    one_model_bytes = sum(int(np.prod(zoo.param_shapes[n])) * zoo.param_dtypes[n].itemsize for n in zoo.param_names)
    for budget in (1.0, 1.4, 2.0, float(explorer.plan.num_tasks)):
        view = explorer.partition(budget)
        partition = explorer.plan.partition_at(budget)
        assert view.size == partition.size and view.num_events == partition.num_events
        assert view.cluster_counts == [len(g) for g in partition.groups]
        assert view.megabytes == pytest.approx(partition.size * one_model_bytes / 1e6)
        assert view.budget_met == (partition.size <= budget)


def test_grid_spans_the_achievable_range(explorer):
    grid = explorer.grid(0.5)
    assert grid[0] == explorer.plan.min_size and grid[-1] == explorer.plan.max_size
    assert all(b > a for a, b in zip(grid, grid[1:]))
    assert all(g * 2 == int(g * 2) for g in grid[1:])


def test_curve_equals_a_fresh_engine_curve_and_is_memoised(explorer):
    from flexmerge_core.evaluation.curve import compute_curve

    budgets = [1.0, 1.5, 2.0]
    rows = explorer.curve(budgets)
    fresh = compute_curve(explorer.zoo, explorer.plan, explorer.algorithm, sizes=budgets, spec=explorer.spec,
                          use_cache=False).rows
    for row, ref in zip(rows, fresh):
        assert row["size"] == ref["size"] and row["size_budget"] == ref["size_budget"]
        assert row["accuracy"] == pytest.approx(ref["accuracy"], abs=1e-12)
    same_partition = explorer.plan.partition_at(1.5).size
    again = explorer.row_at(same_partition)
    assert again["accuracy"] == rows[1]["accuracy"] and again["size_budget"] == same_partition
    assert explorer.known(1.5) and explorer.known(same_partition)


def test_unknown_task_subset_is_a_clear_error(studio):
    from flexmerge_core.errors import InvalidArgumentError
    from flexmerge_core.studio import PlanChoice

    with pytest.raises(InvalidArgumentError, match="no-such-task"):
        studio.explorer(PlanChoice(tasks=("no-such-task",)))


def test_ranking_table_shows_ties_as_one_rank_and_marks_only_significant_flips():
    accuracy = {"a": {1.0: 0.5, 2.0: 0.7, 3.0: 0.9, 4.0: 0.91},
                "b": {1.0: 0.6, 2.0: 0.65, 3.0: 0.8, 4.0: 0.85},
                "mask": {1.0: None, 2.0: None, 3.0: None, 4.0: 0.95}}
    rankings = {1.0: [["b"], ["a"]], 2.0: [["a", "b"]], 3.0: [["a"], ["b"]], 4.0: [["mask"], ["a"], ["b"]]}
    table = ranking_table(accuracy, rankings, [1.0, 2.0, 3.0, 4.0])
    assert list(table["#1"]) == ["b (60.0%)", "a (70.0%) = b (65.0%)", "a (90.0%)", "mask (95.0%)"]
    assert list(table["#2"]) == ["a (50.0%)", "", "b (80.0%)", "a (91.0%)"]
    assert list(table["#3"]) == ["", "", "", "b (85.0%)"]
    # b over a at 1x, tied at 2x, a over b at 3x: the flip lands at 3x, across the tie
    assert list(table["ranking changed"]) == [False, False, True, False]
    assert list(table["change"]) == ["", "", "a now above b", ""]


def test_reshuffles_within_a_tie_and_ties_replacing_an_order_are_not_changes():
    values = {"x": {1.0: 0.5, 2.0: 0.5, 3.0: 0.4}, "y": {1.0: 0.5, 2.0: 0.6, 3.0: 0.5}}
    rankings = {1.0: [["x", "y"]], 2.0: [["y", "x"]], 3.0: [["y", "x"]]}
    table = ranking_table(values, rankings, [1.0, 2.0, 3.0])
    assert list(table["ranking changed"]) == [False, False, False]
    assert list(ranking_table(values, {1.0: [["x"], ["y"]], 2.0: [["x", "y"]]}, [1.0, 2.0])["ranking changed"]) \
        == [False, False]


def test_rank_at_is_the_paired_ranking_of_fresh_engine_curves(studio):
    from flexmerge_core.algorithms import get_algorithm
    from flexmerge_core.evaluation.curve import compute_curve
    from flexmerge_core.evaluation.statistics import rankings_with_ties
    from flexmerge_core.planning.blocks import build_blocks
    from flexmerge_core.planning.plan import build_plan
    from flexmerge_core.studio import PlanChoice

    zoo = studio.zoo
    spec = build_blocks(zoo.param_names, zoo.param_shapes, granularity="component")
    budgets = [1.0, 2.0, float(len(zoo.task_names))]
    correct = {}
    for name in ("avg", "ta", "ties"):
        algorithm = get_algorithm(name)
        result = compute_curve(zoo, build_plan(zoo, spec, algorithm), algorithm, budgets, spec=spec, use_cache=False)
        correct[name] = {b: [result.scores[b][t].scores.numpy() == 1 for t in zoo.task_names] for b in budgets}
    for budget in budgets:
        expected = rankings_with_ties({a: correct[a][budget] for a in correct})
        got = studio.rank_at({a: PlanChoice(algorithm=a) for a in correct}, budget)
        assert got == expected
    assert studio.rank_at({a: PlanChoice(algorithm=a) for a in correct}, budgets[-1]) == [sorted(correct)]  # Mx: equal


def test_rows_figure_draws_each_interval_as_a_band_under_its_line():
    from dashboard.metric_axis import ACCURACY, MetricAxis

    rows = [{"size": 2.0, "avg_accuracy": 0.6, "ci_low": 0.55, "ci_high": 0.64, "avg_normalized_accuracy": 0.7},
            {"size": 1.0, "avg_accuracy": 0.5, "ci_low": 0.45, "ci_high": 0.56, "avg_normalized_accuracy": 0.6}]
    fig = charts.rows_figure({"ta": rows, "ties": rows[:1]}, ACCURACY)
    band, other_band, line, other = fig.data
    assert list(band.x) == [1.0, 2.0, 2.0, 1.0] and list(band.y) == pytest.approx([45.0, 55.0, 64.0, 56.0])
    assert band.fill == "toself" and band.showlegend is False and list(line.y) == [50.0, 60.0]
    red, green, blue = (int(line.line.color[i:i + 2], 16) for i in (1, 3, 5))
    assert band.fillcolor.startswith(f"rgba({red},{green},{blue},") and other.line.color != line.line.color
    normalised = MetricAxis("normalised score", higher_is_better=True, percent=True, normalized=True)
    assert charts.curve_bands(rows, normalised) == [] and charts.curve_bands([{**rows[0], "ci_low": None}]) == []
    assert len(charts.rows_figure({"ta": rows}, normalised).data) == 1


def test_curve_figure_marks_the_current_budget():
    fig = charts.curve_figure({"ta": [(2.0, 60.0), (1.0, 50.0)]}, finetuned=70.0, current=(1.5, 55.0),
                              current_budget=1.6)
    line, marker = fig.data
    assert list(line.x) == [1.0, 2.0] and list(line.y) == [50.0, 60.0]
    assert marker.name == "current size (budget 1.60x)" and list(marker.x) == [1.5]
    assert fig.layout.shapes[0].y0 == 70.0


def test_curve_points_are_percent_of_achieved_size():
    rows = [{"size": 1.25, "avg_accuracy": 0.5, "size_budget": 1.3}]
    assert charts.curve_points(rows) == [(1.25, 50.0)]


@pytest.mark.parametrize("count", [3, 41, 150])
def test_merge_heatmap_names_every_block(count):
    names = [f"transformer.resblocks.{i // 6}.part{i % 6}" for i in range(count)]
    fig = charts.merge_heatmap_figure(names, np.arange(count * 5).reshape(count, 5))
    axis = fig.layout.yaxis
    assert axis.tickmode == "array" and list(axis.tickvals) == names and list(axis.ticktext) == names
    assert axis.showticklabels is not False
    assert fig.layout.height >= 16 * count   # one label height per block: none is dropped for overlap


def test_megabyte_budgets_select_the_largest_fitting_partition(explorer):
    plan = explorer.plan
    views = [explorer.partition(size) for size in plan.achievable_sizes()]
    for view in views[1:-1]:
        # exactly the MB of an achievable deployment selects it; a byte less selects a smaller one
        assert explorer.partition(explorer.budget_for_megabytes(view.megabytes)).num_events == view.num_events
        smaller = explorer.partition(explorer.budget_for_megabytes(view.megabytes - 1e-6))
        assert smaller.num_events > view.num_events and smaller.megabytes < view.megabytes
    below = explorer.partition(explorer.budget_for_megabytes(views[-1].megabytes / 2))
    assert not below.budget_met and below.num_events == len(plan.events)


def test_recommendation_is_the_knee_with_its_interval(app_zoo, explorer):
    from flexmerge_core.evaluation.recommend import knee
    from flexmerge_core.evaluation.statistics import average_interval
    from flexmerge_core.zoo import open_zoo

    zoo = open_zoo(app_zoo)
    rows = explorer.curve(explorer.grid())
    assert (explorer.recommendation(rows) is None) == (knee(rows) is None)
    # the same sizes with a concave curve (accuracy 1 - 0.5 / size): a knee exists
    rows = [{**row, "accuracy": {t: 1 - 0.5 / row["size"] for t in row["accuracy"]},
             "avg_accuracy": 1 - 0.5 / row["size"]} for row in rows]
    expected = knee(rows)
    got = explorer.recommendation(rows)
    assert expected is not None and 1 < expected["size"] < explorer.plan.max_size
    counts = {t: len(zoo.heldout(i)[1]) for i, t in enumerate(zoo.task_names)}
    assert got["size"] == expected["size"] and got["n"] == counts
    assert (got["ci_low"], got["ci_high"]) == average_interval([(expected["accuracy"][t], counts[t]) for t in counts])
    assert got["megabytes"] == explorer.partition(expected["size_budget"]).megabytes


def test_knee_text_states_size_megabytes_and_interval():
    from dashboard.metric_axis import ACCURACY
    from dashboard.recommendation import knee_text

    knee = {"size": 1.5, "megabytes": 12.345, "avg_accuracy": 0.8512, "ci_low": 0.8301, "ci_high": 0.8699,
            "n": {"a": 1000, "b": 500}}
    text = knee_text(knee, ACCURACY)
    assert "**1.50x** (12.35 MB)" in text and "**85.1%** average accuracy" in text
    assert "95% interval 83.0%-87.0% over 1,500 held-out examples" in text
    assert "interval" not in knee_text({**knee, "ci_low": None, "ci_high": None}, ACCURACY)
    assert knee_text(None, ACCURACY).startswith("No knee")


def test_recommendation_for_an_error_metric_uses_normalised_scores(explorer):
    from flexmerge_core.evaluation.recommend import knee

    rows = explorer.curve(explorer.grid())
    # an error falling like 0.5 / size: on the raw values the curve bends the wrong way for knee()
    rows = [{**row, "metric": {t: "mse" for t in row["accuracy"]},
             "higher_is_better": {t: False for t in row["accuracy"]},
             "accuracy": {t: 0.5 / row["size"] for t in row["accuracy"]}, "avg_accuracy": 0.5 / row["size"],
             "avg_normalized_accuracy": 1 - 0.5 / row["size"]} for row in rows]
    assert knee(rows) is None
    expected = knee([{**r, "avg_accuracy": r["avg_normalized_accuracy"]} for r in rows])
    got = explorer.recommendation(rows)
    assert expected is not None and got["size"] == expected["size"]
    assert got["avg_accuracy"] == 0.5 / got["size"]
    assert (got["ci_low"], got["ci_high"]) == (expected["ci_low"], expected["ci_high"])   # the row's own interval
    stripped = [{k: v for k, v in r.items() if k not in ("ci_low", "ci_high")} for r in rows]
    assert explorer.recommendation(stripped)["ci_low"] is None          # no per-example scores: no interval


def test_background_order_draws_the_curve_anchors_then_fills_the_biggest_gaps():
    from dashboard.background import evaluation_order

    grid = [1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0]
    assert evaluation_order(grid, 1.0, 4.0) == [1.0, 4.0, 2.0, 3.0, 1.5, 2.5, 3.5]
    assert evaluation_order([1.2, 1.5, 2.0, 2.5, 3.0], 1.2, 3.0) == [1.2, 3.0, 2.0, 2.5, 1.5]
    assert evaluation_order([1.0, 2.0], 1.0, 2.0) == [1.0, 2.0]


class _GatedExplorer:
    """Stands in for an Explorer: sizes are partitions by their integer part; curve waits for a gate."""

    def __init__(self, gate, fail_at=None):
        self.gate, self.fail_at, self.done, self.order = gate, fail_at, set(), []
        self.algorithm = type("Algorithm", (), {"name": "ta"})()
        self.choice = "choice"

    def partition(self, budget):
        return type("View", (), {"num_events": int(budget)})()

    def known(self, budget):
        return int(budget) in self.done

    def curve(self, budgets):
        self.gate.wait(60)
        self.order.append(budgets[0])
        if int(budgets[0]) == self.fail_at:
            raise ValueError("out of\n memory")
        self.done.add(int(budgets[0]))


def test_background_runs_each_partition_once_urgent_first_and_drops_cancelled_work():
    import threading
    import time

    from dashboard.background import Background

    gate, work = threading.Event(), Background()
    explorer = _GatedExplorer(gate, fail_at=4)
    work.want("a", explorer, [1.0])
    while work.tasks("a")[0].state != "running":   # the worker takes it (and waits at the gate)
        time.sleep(0.01)
    work.want("a", explorer, [2.0, 2.5, 3.0, 4.0, 5.0])        # 2.5 is 2.0's partition: queued once
    work.want("b", explorer, [6.0, 3.5], urgent=True)          # the sizes on screen jump the queue
    assert [t.budget for t in work.pending()] == [1.0, 6.0, 3.0, 2.0, 4.0, 5.0]
    assert [t.budget for t in work.cancel("a")] == [3.0, 2.0, 4.0, 5.0], "3.0 stays a's: a asked first"
    work.want("a", explorer, [2.0, 4.0])
    gate.set()
    assert work.wait_idle(60)
    assert explorer.order == [1.0, 6.0, 2.0, 4.0]
    assert work.failure(explorer, 4.0) == "out of memory"
    work.want("a", explorer, [4.0, 1.0])
    assert work.pending() == [], "known sizes and failed ones are not queued again"

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


def test_ranking_table_marks_where_the_order_changes():
    accuracy = {"a": {1.0: 0.5, 2.0: 0.7, 3.0: 0.9},
                "b": {1.0: 0.6, 2.0: 0.65, 3.0: 0.8},
                "mask": {1.0: None, 2.0: None, 3.0: 0.95}}
    table = ranking_table(accuracy, [1.0, 2.0, 3.0])
    assert list(table["#1"]) == ["b (60.0%)", "a (70.0%)", "mask (95.0%)"]
    assert list(table["#2"]) == ["a (50.0%)", "b (65.0%)", "a (90.0%)"]
    assert list(table["#3"]) == ["", "", "b (80.0%)"]
    assert list(table["ranking changed"]) == [False, True, True]


def test_ranking_ties_break_by_name_and_do_not_flag_a_change():
    table = ranking_table({"y": {1.0: 0.5, 2.0: 0.5}, "x": {1.0: 0.5, 2.0: 0.5}}, [1.0, 2.0])
    assert list(table["#1"]) == ["x (50.0%)", "x (50.0%)"]
    assert list(table["ranking changed"]) == [False, False]


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
    assert got["avg_accuracy"] == 0.5 / got["size"] and got["ci_low"] is None and got["ci_high"] is None

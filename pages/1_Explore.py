"""Explore: one plan, a size slider, and what the deployment at that size looks like."""
from __future__ import annotations

import math

import streamlit as st

from dashboard import charts
from dashboard.controls import explorer_from_settings
from dashboard.metric_axis import MetricAxis, axis_for
from dashboard.session import engine_errors, open_studio, progress_bar
from flexmerge_core.studio import Explorer, PartitionView

st.title("Explore a deployment size")
studio = open_studio()

explorer = explorer_from_settings(studio, "explore")
with engine_errors(), progress_bar("Evaluating the overview curve") as bar:
    explorer.curve(explorer.grid(), progress=bar)

SLIDER_STEP = 0.05
FIGURE_MEMO_LIMIT = 512


def size_figures(explorer: Explorer, budget: float, view: PartitionView, row: dict, axis: MetricAxis) -> tuple:
    """The three size-dependent figures, memoised per (plan, budget, curve points known) in this
    session: building Plotly figures is the slowest part of a slider move, so a size seen before is
    redrawn from the figures already built."""
    memo = st.session_state.setdefault("explore_figures", {})
    key = (explorer.choice, budget, len(explorer.known_rows()))
    if key not in memo:
        if len(memo) >= FIGURE_MEMO_LIMIT:
            memo.clear()
        finetuned = explorer.finetuned()
        memo[key] = (
            charts.task_figure(explorer.task_names, axis.task_values(row, finetuned),
                               axis.finetuned_values(finetuned), view.size, axis),
            charts.curve_figure({explorer.algorithm.name: charts.curve_points(explorer.known_rows(), axis)},
                                finetuned=axis.finetuned_average(finetuned), axis=axis,
                                current=(view.size, axis.average(row)), current_budget=budget),
            charts.cluster_count_figure(explorer.block_names, view.cluster_counts, explorer.plan.num_tasks))
    return memo[key]


@st.fragment
def size_view(explorer: Explorer) -> None:
    """Everything that depends on the size: re-run alone when the slider moves (fast for known sizes)."""
    plan = explorer.plan
    low = math.floor(plan.min_size / SLIDER_STEP) * SLIDER_STEP
    budget = st.slider("Size budget (x one model)", min_value=round(low, 2), max_value=float(plan.max_size),
                       value=float(min(2.0, plan.max_size)), step=SLIDER_STEP, format="%.2fx", key="explore_size")
    view = explorer.partition(budget)
    with engine_errors(), progress_bar("Evaluating this size") as bar:
        row = explorer.row_at(budget, progress=bar)
    axis = axis_for([row])
    cols = st.columns(5)
    cols[0].metric("Budget asked", f"{budget:.2f}x")
    cols[1].metric("Size achieved", f"{view.size:.3f}x")
    cols[2].metric("Memory", f"{view.megabytes:.2f} MB")
    cols[3].metric(f"Average {axis.name}", axis.format(axis.average(row), decimals=2),
                   help=f"{100 * row['avg_normalized_accuracy']:.1f}% of the fine-tuned models")
    cols[4].metric("Merge events applied", f"{view.num_events} of {len(plan.events)}")
    if not view.budget_met:
        st.warning(f"A budget of {budget:.2f}x cannot be met with {explorer.algorithm.name}: the smallest "
                   f"achievable size is {plan.min_size:.3f}x, shown here.")
    tasks, curve, clusters = size_figures(explorer, budget, view, row, axis)
    left, right = st.columns(2)
    left.plotly_chart(tasks, key="chart_explore_tasks")
    right.plotly_chart(curve, key="chart_explore_curve")
    st.plotly_chart(clusters, key="chart_explore_clusters")


size_view(explorer)

st.subheader("Merge order")
st.caption("Each column applies one more merge event of the plan; the size metric above says how many events "
           "the current size applies. Drawn once, outside the slider's fast path.")
st.plotly_chart(charts.merge_heatmap_figure(explorer.block_names, explorer.groups_by_step()),
                key="chart_explore_heatmap")

st.subheader("Block similarity")
block = st.selectbox("Block", range(len(explorer.block_names)), format_func=lambda b: explorer.block_names[b],
                     key="explore_block")
with engine_errors(), st.spinner("Computing block similarities"):
    matrix = explorer.similarity(block)
st.plotly_chart(charts.similarity_figure(explorer.task_names, matrix, explorer.block_names[block]),
                key="chart_explore_similarity")

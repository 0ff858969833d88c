"""Explore: one plan, a size slider, and what the deployment at that size looks like.

The page never waits on evaluations: the partition at any size is instant (the plan alone), and the
accuracies are evaluated in the background (dashboard/live.py), the curve's anchors first; the
slider's view marks an unseen size "pending" and refreshes as results land."""
from __future__ import annotations

import math

import streamlit as st

from dashboard import charts
from dashboard.controls import explorer_from_settings
from dashboard.metric_axis import MetricAxis, axis_for
from dashboard.recommendation import knee_text
from dashboard.background import background
from dashboard.live import live_fragment, want, want_curve, work_panel
from dashboard.session import engine_errors, open_studio
from flexmerge_core.studio import Explorer, PartitionView

st.title("Explore a deployment size")
studio = open_studio()

explorer = explorer_from_settings(studio, "explore")
want_curve(explorer)
work_panel()

SLIDER_STEP = 0.05
MB_SLIDER_STEPS = 200     # the MB slider moves in about this many steps from the smallest deployment to Mx
FIGURE_MEMO_LIMIT = 512
UNITS = ("x one model", "MB")


def knee_note(explorer: Explorer) -> None:
    """The recommendation once the overview curve is known; until then, how much of it is."""
    rows = [explorer.known_row(budget) for budget in explorer.grid()]
    if all(rows):
        with engine_errors():
            st.info(knee_text(explorer.recommendation(rows), axis_for(rows)))
    else:
        st.caption(f"The recommended size appears when the overview curve is evaluated "
                   f"({sum(r is not None for r in rows)} of {len(rows)} sizes ready; see Work in progress).")


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
            charts.rows_figure({explorer.algorithm.name: explorer.known_rows()}, axis,
                               finetuned=axis.finetuned_average(finetuned), current=(view.size, axis.average(row)),
                               current_budget=budget),
            charts.cluster_count_figure(explorer.block_names, view.cluster_counts, explorer.plan.num_tasks))
    return memo[key]


def megabyte_slider(explorer: Explorer) -> tuple[float, str]:
    """A slider in MB from the smallest deployment to all M models; (MB asked, how it reads)."""
    low = explorer.partition(explorer.plan.min_size).megabytes
    high = explorer.partition(explorer.plan.max_size).megabytes
    step = 10.0 ** math.floor(math.log10((high - low) / MB_SLIDER_STEPS)) if high > low else 0.01
    decimals = max(0, -round(math.log10(step)))
    low, high = math.floor(low / step) * step, math.ceil(high / step) * step
    mb = st.slider("Size budget (MB)", min_value=round(low, decimals), max_value=round(high, decimals),
                   value=round(min(high, max(low, 2 * high / explorer.plan.max_size)), decimals),
                   step=step, format=f"%.{decimals}f MB", key="explore_size_mb")
    return mb, f"{mb:.{decimals}f} MB"


def pending_figures(explorer: Explorer, view: PartitionView) -> tuple:
    """The figures while this size's accuracies are pending: the curve so far (if any) and the partition."""
    rows = explorer.known_rows()
    curve = None
    if rows:
        axis = axis_for(rows)
        curve = charts.rows_figure({explorer.algorithm.name: rows}, axis,
                                   finetuned=axis.finetuned_average(explorer.finetuned()))
    return curve, charts.cluster_count_figure(explorer.block_names, view.cluster_counts, explorer.plan.num_tasks)


def size_view(explorer: Explorer) -> None:
    """Everything that depends on the size: re-run alone when the slider moves (fast for known sizes),
    and every second while evaluations of this plan are pending."""
    knee_note(explorer)
    plan = explorer.plan
    unit = st.radio("Size in", UNITS, horizontal=True, key="explore_unit",
                    help="The budget as a multiple of one model's merged parameters, or in megabytes "
                         "(exact bytes of the stored tensors at the zoo's dtypes; heads excluded)")
    if unit == UNITS[0]:
        low = math.floor(plan.min_size / SLIDER_STEP) * SLIDER_STEP
        budget = st.slider("Size budget (x one model)", min_value=round(low, 2), max_value=float(plan.max_size),
                           value=float(min(2.0, plan.max_size)), step=SLIDER_STEP, format="%.2fx",
                           key="explore_size")
        asked = f"{budget:.2f}x"
    else:
        mb, asked = megabyte_slider(explorer)
        budget = explorer.budget_for_megabytes(mb)
    view = explorer.partition(budget)
    row = explorer.known_row(budget)
    failure = None if row is not None else background().failure(explorer, budget)
    if row is None and failure is None:
        want(explorer, [budget], urgent=True)
    cols = st.columns(5)
    cols[0].metric("Budget asked", asked)
    cols[1].metric("Size achieved", f"{view.size:.3f}x")
    cols[2].metric("Memory", f"{view.megabytes:.2f} MB")
    if row is None:
        cols[3].metric("Average accuracy", "failed" if failure else "pending",
                       help=failure or "Being evaluated in the background; shown as soon as it lands")
    else:
        axis = axis_for([row])
        cols[3].metric(f"Average {axis.name}", axis.format(axis.average(row), decimals=2),
                       help=f"{100 * row['avg_normalized_accuracy']:.1f}% of the fine-tuned models")
    cols[4].metric("Merge events applied", f"{view.num_events} of {len(plan.events)}")
    if not view.budget_met:
        st.warning(f"A budget of {asked} cannot be met with {explorer.algorithm.name}: the smallest "
                   f"achievable size is {plan.min_size:.3f}x, shown here.")
    if failure:
        st.error(f"Evaluating this size failed: {failure}")
    left, right = st.columns(2)
    if row is None:
        curve, clusters = pending_figures(explorer, view)
        left.caption(f"Per-task accuracies at {asked}: pending.")
    else:
        tasks, curve, clusters = size_figures(explorer, budget, view, row, axis)
        left.plotly_chart(tasks, key="chart_explore_tasks")
    if curve is None:
        right.caption("The curve appears as its first sizes are evaluated.")
    else:
        right.plotly_chart(curve, key="chart_explore_curve")
    st.plotly_chart(clusters, key="chart_explore_clusters")


live_fragment(size_view, explorer)

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

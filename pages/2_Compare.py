"""Compare: several algorithms' metric/size curves (accuracy, or each task kind's metric), rankings per size
(best first in the metric's direction), baselines and ablations."""
from __future__ import annotations

from dataclasses import replace

import streamlit as st

from dashboard import charts
from dashboard.controls import algorithm_input
from dashboard.metric_axis import axis_for
from dashboard.rankings import highlight_changes, ranking_table
from dashboard.session import engine_errors, open_studio, progress_bar, requested
from flexmerge_core.planning.baselines import CHANNEL_ALGORITHMS
from flexmerge_core.planning.linkage import LINKAGES
from flexmerge_core.planning.plan import ORDERS
from flexmerge_core.studio import GRANULARITIES, PlanChoice, Studio, algorithm_names

st.title("Compare algorithms")
studio = open_studio()

GRID_STEP = 0.5
names = list(algorithm_names())
chosen = st.multiselect("Algorithms", names, default=[n for n in ("avg", "ta", "ties", "emr") if n in names],
                        key="compare_algorithms")
granularity = st.selectbox("Granularity", GRANULARITIES, key="compare_granularity")


def curves_for(studio: Studio, choices: dict[str, PlanChoice], step: float, label: str) -> dict[str, list[dict]]:
    """label -> curve rows on the plan's grid, each plan built and evaluated once (with progress)."""
    out = {}
    with engine_errors():
        for i, (name, choice) in enumerate(choices.items()):
            with progress_bar(f"{label} {i + 1}/{len(choices)}: {name}") as bar:
                explorer = studio.explorer(choice, progress=bar)
                out[name] = explorer.curve(explorer.grid(step), progress=bar)
    return out


if not chosen:
    st.info("Pick at least one algorithm.")
    st.stop()
curves = curves_for(studio, {a: PlanChoice(algorithm=a, granularity=granularity) for a in chosen}, GRID_STEP,
                    "Algorithm")
axis = axis_for([r for rows in curves.values() for r in rows])
with engine_errors(), progress_bar("Measuring the fine-tuned models") as bar:
    ft_avg = axis.finetuned_average(studio.finetuned(progress=bar))
st.plotly_chart(charts.rows_figure(curves, axis, finetuned=ft_avg,
                                   title=f"Average {axis.name} vs size (mask methods start at their minimum size)"),
                key="chart_compare_curves")

st.subheader("Rankings per size")
budgets = sorted({r["size_budget"] for rows in curves.values() for r in rows})
by_budget = {a: {r["size_budget"]: r for r in rows} for a, rows in curves.items()}
values = {a: {b: (axis.average(by_budget[a][b]) if b in by_budget[a] and by_budget[a][b]["size"] <= b else None)
              for b in budgets} for a in curves}
with engine_errors(), progress_bar("Ranking with paired tests") as bar:
    rankings = {b: studio.rank_at({a: PlanChoice(algorithm=a, granularity=granularity)
                                   for a in chosen if values[a][b] is not None}, b, progress=bar) for b in budgets}
table = ranking_table(values, rankings, budgets, fmt=lambda v: axis.format(v, decimals=2))
st.dataframe(highlight_changes(table), hide_index=True, key="compare_rankings")
test = "McNemar" if axis.name == "accuracy" else "Wilcoxon signed-rank"
st.caption(f"Ranked by average {axis.title}, best first. Algorithms joined by \"=\" share a rank: a paired test on "
           f"the same held-out examples ({test} per task, combined over tasks) finds no significant difference from "
           "the best of that rank (5% level). Shaded rows: an order that was significant is now significantly "
           "reversed. An algorithm is ranked only at budgets it can meet.")


st.subheader("FlexMerge vs the baselines (integer sizes)")
base_algorithm = st.selectbox("Merge function", [a for a in CHANNEL_ALGORITHMS if a in names],
                              key="compare_baseline_algorithm")
if requested("Run the baselines", "baseline_run", "Channel Merging clusters every tensor's tasks with cosine "
             "k-means, whole-model clustering clusters whole task vectors; both are evaluated at sizes 1..M."):
    flex = curves_for(studio, {base_algorithm: PlanChoice(algorithm=base_algorithm, granularity=granularity)},
                      1.0, "FlexMerge")[base_algorithm]
    series = {f"FlexMerge ({base_algorithm})": flex}
    with engine_errors():
        for kind, label in (("channel-merging", "Channel Merging"), ("whole-model", "Whole-model clustering")):
            with progress_bar(label) as bar:
                series[f"{label} ({base_algorithm})"] = studio.baseline_curve(kind, base_algorithm, progress=bar)
    st.plotly_chart(charts.rows_figure(series, axis, finetuned=ft_avg,
                                       title="FlexMerge vs Channel Merging and whole-model clustering"),
                    key="chart_compare_baseline")

st.subheader("Ablations: linkage and merge order")
algorithm, hyper = algorithm_input("Algorithm for the ablations", key="ablation_algorithm")
if requested("Run the ablations", "ablation_run",
             "Builds one plan per linkage and per order and evaluates each at integer sizes."):
    base = PlanChoice(algorithm=algorithm, hyperparameters=hyper, granularity=granularity)
    by_linkage = curves_for(studio, {lk: replace(base, linkage=lk) for lk in LINKAGES}, 1.0, "Linkage")
    by_order = curves_for(studio, {o: replace(base, order=o) for o in ORDERS}, 1.0, "Order")
    left, right = st.columns(2)
    left.plotly_chart(charts.rows_figure(by_linkage, axis, finetuned=ft_avg,
                                         title=f"Linkage ({algorithm}, greedy order)"),
                      key="chart_ablation_linkage")
    right.plotly_chart(charts.rows_figure(by_order, axis, finetuned=ft_avg,
                                          title=f"Merge order ({algorithm}, min linkage)"),
                       key="chart_ablation_order")

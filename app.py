"""FlexMerge Studio: the Streamlit entry point (navigation, zoo choice) and the Overview page.

Run with `bash scripts/app.sh`. The other pages live in pages/; all of them call flexmerge_core only
(through flexmerge_core.studio) and draw with dashboard/.
"""
from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import charts
from dashboard.metric_axis import MetricAxis, axis_for
from dashboard.live import live_fragment, want_curve, work_panel
from dashboard.recommendation import knee_text
from dashboard.session import engine_errors, open_studio, progress_bar, zoo_picker
from flexmerge_core.studio import DEFAULT_ALGORITHM, Explorer, PlanChoice


def _near_finetuned(rows: list[dict], axis: MetricAxis) -> tuple[dict | None, str]:
    """The smallest evaluated deployment close to the fine-tuned models (the last row, Mx), and what
    "close" meant: within 1 point of their average accuracy; for other metrics within 1% of their
    normalised score (1 point of accuracy is a unit only percentages have)."""
    if axis.percent and not axis.normalized:
        target = rows[-1]["avg_accuracy"]
        close = [r for r in rows if r["avg_accuracy"] >= target - 0.01]
        how = f"within 1 point of the fine-tuned models' {axis.format(axis.average(rows[-1]))}"
    else:
        close = [r for r in rows if r["avg_normalized_accuracy"] >= 0.99]
        how = "within 1% of the fine-tuned models (normalised)"
    return (min(close, key=lambda r: r["size"]) if close else None), how


SOURCE_LABELS = {"hf_clip": "HuggingFace CLIP folders", "task_vectors_pickle": "task-vectors pickles",
                 "open_clip_research": "open_clip research checkpoints", "demo": "the embedded demo"}


def overview() -> None:
    """The open zoo, and the headline numbers of its trade-off in plain words."""
    st.title("FlexMerge Studio")
    st.caption("Merge M fine-tuned models into one deployment of any size between 1x and Mx, block by block.")
    studio = open_studio()
    summary = studio.summary()

    st.header(f"Zoo: {summary.name}")
    cols = st.columns(4)
    cols[0].metric("Tasks", len(summary.tasks))
    cols[1].metric("Merged parameters per model", f"{summary.merged_params:,}")
    cols[2].metric("Blocks (component granularity)", summary.num_blocks)
    cols[3].metric("One model", f"{summary.model_megabytes:.2f} MB")
    with engine_errors(), progress_bar("Measuring the fine-tuned models") as bar:
        finetuned = studio.finetuned(progress=bar)
    if set(summary.metrics.values()) == {"accuracy"}:
        st.dataframe(pd.DataFrame({"task": summary.tasks,
                                   "fine-tuned accuracy (%)": [100 * finetuned[t] if t in finetuned else None
                                                               for t in summary.tasks]}), hide_index=True,
                     column_config={"fine-tuned accuracy (%)": st.column_config.NumberColumn(format="%.1f")})
    else:
        st.dataframe(pd.DataFrame({"task": summary.tasks, "metric": [summary.metrics[t] for t in summary.tasks],
                                   "fine-tuned value": [finetuned.get(t) for t in summary.tasks]}), hide_index=True)
    st.caption(f"Folder: {summary.root} · architecture {summary.architecture} · imported from: "
               f"{SOURCE_LABELS.get(summary.source, summary.source or 'an unrecorded source (hand-written zoo.json)')}")

    st.header(f"The trade-off with {DEFAULT_ALGORITHM.upper()} (default settings)")
    with engine_errors(), progress_bar("Building the merge plan") as bar:
        explorer = studio.explorer(PlanChoice(), progress=bar)
    want_curve(explorer, first=[2.0])   # the headline's 2x first
    work_panel()
    live_fragment(trade_off, explorer, len(summary.tasks), summary.model_megabytes)
    st.caption("Explore a size interactively on the Explore page; compare algorithms on Compare; "
               "download a deployment on Export; check the paper's findings on this zoo on Findings. "
               "Shaded bands: 95% intervals of the average.")


def trade_off(explorer: Explorer, m: int, model_megabytes: float) -> None:
    """The headline numbers and the curve, drawn from the sizes evaluated so far (refreshed as more land)."""
    grid = explorer.grid()
    known = [row for row in (explorer.known_row(b) for b in grid) if row is not None]
    if not known:
        st.caption(f"Evaluating the curve in the background (0 of {len(grid)} sizes ready; see Work in progress).")
        return
    axis = axis_for(known)
    low, two, full = (explorer.known_row(b) for b in (grid[0], 2.0, grid[-1]))
    lines = [
        f"- **{low['size']:.2f}x** (everything merged into one model): **{axis.format(axis.average(low))}** "
        f"average {axis.name}, {100 * low['avg_normalized_accuracy']:.1f}% of the fine-tuned models." if low else
        "- 1x (everything merged into one model): pending.",
        f"- **{two['size']:.2f}x** (a budget of twice one model): **{axis.format(axis.average(two))}** "
        f"({100 * two['avg_normalized_accuracy']:.1f}% of fine-tuned)." if two else
        "- 2x (a budget of twice one model): pending.",
        f"- **{full['size']:.0f}x** (all {m} fine-tuned models kept): **{axis.format(axis.average(full))}**." if full
        else f"- {m}x (all {m} fine-tuned models kept): pending.",
    ]
    if len(known) == len(grid):
        near, how = _near_finetuned(known, axis)
        lines.append(f"- {axis.capitalized} comes {how} at "
                     f"**{near['size']:.2f}x** ({explorer.partition(near['size_budget']).megabytes:.2f} MB instead of "
                     f"{m * model_megabytes:.2f} MB for all {m} models; sizes tried every "
                     f"{grid[-1] - grid[-2]:g}x).")
    st.markdown("\n".join(lines))
    if len(known) == len(grid):
        with engine_errors():
            st.info(knee_text(explorer.recommendation(known), axis))
    else:
        st.caption(f"The recommended size appears when the curve is evaluated ({len(known)} of {len(grid)} sizes "
                   f"ready; see Work in progress).")
    st.plotly_chart(charts.rows_figure({DEFAULT_ALGORITHM: known}, axis,
                                       finetuned=axis.average(full) if full else None),
                    key="chart_overview_curve")


st.set_page_config(page_title="FlexMerge Studio", layout="wide")
navigation = st.navigation([
    st.Page(overview, title="Overview", icon=":material/home:", default=True),
    st.Page("pages/1_Explore.py", title="Explore", icon=":material/tune:"),
    st.Page("pages/2_Compare.py", title="Compare", icon=":material/compare_arrows:"),
    st.Page("pages/3_Export.py", title="Export", icon=":material/download:"),
    st.Page("pages/4_Findings.py", title="Findings", icon=":material/fact_check:"),
])
zoo_picker()
navigation.run()

"""FlexMerge Studio, Overview page: the open zoo and the headline numbers of its size/accuracy trade-off.

Run with `bash scripts/app.sh`. The other pages live in pages/; all of them call flexmerge_core only.
"""
from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import charts
from dashboard.session import engine_errors, engine_has, open_studio, progress_bar
from flexmerge_core.studio import DEFAULT_ALGORITHM, PlanChoice

st.set_page_config(page_title="FlexMerge Studio", layout="wide")
st.title("FlexMerge Studio")
st.caption("Merge M fine-tuned models into one deployment of any size between 1x and Mx, block by block.")

studio = open_studio()
if not engine_has("The zoo summary", "blocks"):
    st.stop()
summary = studio.summary()

st.header(f"Zoo: {summary.name}")
cols = st.columns(4)
cols[0].metric("Tasks", len(summary.tasks))
cols[1].metric("Merged parameters per model", f"{summary.merged_params:,}")
cols[2].metric("Blocks (component granularity)", summary.num_blocks)
cols[3].metric("One model", f"{summary.model_megabytes:.2f} MB")
finetuned = summary.finetuned or {}
st.dataframe(pd.DataFrame({"task": summary.tasks,
                           "fine-tuned accuracy (%)": [100 * finetuned[t] if t in finetuned else None
                                                       for t in summary.tasks]}),
             hide_index=True)
st.caption(f"Folder: {summary.root}")


def _within_one_point(rows: list[dict], target: float) -> dict | None:
    """The smallest evaluated deployment whose average accuracy is within 1 point of `target`."""
    close = [r for r in rows if r["avg_accuracy"] >= target - 0.01]
    return min(close, key=lambda r: r["size"]) if close else None


st.header(f"The trade-off with {DEFAULT_ALGORITHM.upper()} (default settings)")
if not engine_has("The accuracy/size trade-off", "similarity", "evaluate"):
    st.stop()
with engine_errors():
    with progress_bar("Building the merge plan") as bar:
        explorer = studio.explorer(PlanChoice(), progress=bar)
    with progress_bar("Evaluating deployments") as bar:
        rows = explorer.curve(explorer.grid(), progress=bar)
m = len(summary.tasks)
low, full = rows[0], rows[-1]
two = explorer.row_at(2.0) if m >= 2 else full
ft_avg = sum(finetuned.values()) / len(finetuned) if finetuned else full["avg_accuracy"]
lines = [
    f"- **{low['size']:.2f}x** (everything merged into one model): **{100 * low['avg_accuracy']:.1f}%** "
    f"average accuracy, {100 * low['avg_normalized_accuracy']:.1f}% of the fine-tuned models.",
    f"- **{two['size']:.2f}x** (twice the memory of one model): **{100 * two['avg_accuracy']:.1f}%** "
    f"({100 * two['avg_normalized_accuracy']:.1f}% of fine-tuned).",
    f"- **{full['size']:.0f}x** (all {m} fine-tuned models kept): **{100 * full['avg_accuracy']:.1f}%**.",
]
near = _within_one_point(rows, ft_avg)
if near is not None:
    lines.append(f"- Accuracy comes within 1 point of the fine-tuned models' {100 * ft_avg:.1f}% at "
                 f"**{near['size']:.2f}x** ({near['size'] * summary.model_megabytes:.2f} MB instead of "
                 f"{m * summary.model_megabytes:.2f} MB for all {m} models).")
st.markdown("\n".join(lines))
st.plotly_chart(charts.curve_figure({DEFAULT_ALGORITHM: [(r["size"], 100 * r["avg_accuracy"]) for r in rows]},
                                    finetuned=100 * ft_avg), key="chart_overview_curve")
st.caption("Explore a size interactively on the Explore page; compare algorithms on Compare; "
           "download a deployment on Export.")

"""Plotly figure builders for the dashboard pages.

Why a separate module: the pages only decide *what* to show; these functions turn plain numbers
(lists, dicts, numpy arrays the engine computed) into figures, so every page draws the same kind of
data the same way and the builders can be tested without Streamlit. No engine logic here.
Speed matters (the size slider redraws several figures per move): each figure is built in one
constructor call with its whole layout, without a named template and without `add_hline`-style
helpers, which re-validate the figure and cost tens of milliseconds each (Streamlit themes charts).
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np
import plotly.graph_objects as go

from dashboard.metric_axis import ACCURACY, MetricAxis

_HEIGHT = 340
_LABEL_HEIGHT = 16    # pixels per category label at tick font size 11: no two labels overlap


def _layout(title: str, x_title: str, y_title: str, height: int = _HEIGHT, **extra) -> dict:
    return dict(title=dict(text=title), height=height, margin=dict(l=10, r=10, t=50, b=10),
                xaxis=dict(title=dict(text=x_title)), yaxis=dict(title=dict(text=y_title)),
                legend=dict(orientation="h", yanchor="bottom", y=1.0, x=1.0, xanchor="right"),
                hovermode="closest", **extra)


def _reference_line(y: float, label: str) -> tuple[dict, dict]:
    """A dashed horizontal line across the plot at y, and its label."""
    line = dict(type="line", xref="paper", x0=0, x1=1, yref="y", y0=y, y1=y,
                line=dict(dash="dash", color="gray"))
    note = dict(xref="paper", x=1, xanchor="right", yref="y", y=y, yanchor="top", text=label, showarrow=False)
    return line, note


def _hover_y(axis: MetricAxis) -> str:
    """Plotly's hover text of a y value: two decimals for percentages, 4 significant digits else."""
    return "%{y:.2f}" if axis.percent else "%{y:.4g}"


def curve_points(rows: Sequence[Mapping], axis: MetricAxis = ACCURACY) -> list[tuple[float, float]]:
    """(size achieved, average in axis units, e.g. accuracy in %) of curve rows (the curve JSON of docs/ARCHITECTURE.md)."""
    return [(r["size"], axis.average(r)) for r in rows]


def curve_figure(series: Mapping[str, Sequence[tuple[float, float]]], *, finetuned: Optional[float] = None,
                 current: Optional[tuple[float, float]] = None, current_budget: Optional[float] = None,
                 axis: MetricAxis = ACCURACY, title: Optional[str] = None) -> go.Figure:
    """One line per label through (size, value) points, sorted by size; an optional dashed reference
    line for the fine-tuned models and a marker for the current slider position (its legend names
    the budget asked, so a new budget always redraws the marker). Values are in `axis` units."""
    data, hover = [], _hover_y(axis)
    for label, points in series.items():
        pts = sorted(points)
        data.append(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers", name=label,
                               hovertemplate=f"{label}<br>size %{{x:.3f}}x<br>{hover}<extra></extra>"))
    if current is not None:
        name = "current size" if current_budget is None else f"current size (budget {current_budget:.2f}x)"
        data.append(go.Scatter(x=[current[0]], y=[current[1]], mode="markers", name=name,
                               marker=dict(size=14, symbol="star", color="crimson"),
                               hovertemplate=f"current<br>size %{{x:.3f}}x<br>{hover}<extra></extra>"))
    shapes, notes = [], []
    if finetuned is not None:
        line, note = _reference_line(finetuned, "fine-tuned models")
        shapes, notes = [line], [note]
    return go.Figure(data=data, layout=_layout(title or f"{axis.capitalized} vs deployment size",
                                               "deployment size (x one model)", f"average {axis.title}",
                                               shapes=shapes, annotations=notes))


def task_figure(tasks: Sequence[str], merged: Mapping[str, float], finetuned: Optional[Mapping[str, float]],
                size: float, axis: MetricAxis = ACCURACY) -> go.Figure:
    """Per-task values of the deployment next to each task's own fine-tuned model, in `axis` units."""
    value = _hover_y(axis) + ("%" if axis.percent else "")
    data = [go.Bar(x=list(tasks), y=[merged[t] for t in tasks], name=f"merged at {size:.3f}x",
                   hovertemplate=f"%{{x}}<br>merged {value}<extra></extra>")]
    if finetuned:
        data.append(go.Bar(x=list(tasks), y=[finetuned[t] for t in tasks], name="fine-tuned",
                           marker_color="lightgray", hovertemplate=f"%{{x}}<br>fine-tuned {value}<extra></extra>"))
    layout = _layout(f"Per-task {axis.name}", "task", axis.title, barmode="group")
    if axis.percent and not axis.normalized:
        layout["yaxis"]["range"] = [0, 100]
    return go.Figure(data=data, layout=layout)


def cluster_count_figure(block_names: Sequence[str], counts: Sequence[int], num_tasks: int) -> go.Figure:
    """Number of task groups kept in each block, in model order (1 = fully merged, M = all separate)."""
    positions = list(range(len(block_names)))
    layout = _layout("Task groups per block (model order)", "block", "groups", bargap=0.1)
    layout["yaxis"]["range"] = [0, num_tasks + 0.5]
    layout["xaxis"].update(tickmode="array", tickvals=positions, ticktext=_short(block_names))
    return go.Figure(data=[go.Bar(x=positions, y=list(counts), customdata=list(block_names),
                                  hovertemplate="%{customdata}<br>%{y} group(s)<extra></extra>")], layout=layout)


def merge_heatmap_figure(block_names: Sequence[str], groups_by_step: np.ndarray) -> go.Figure:
    """Blocks (rows, model order top to bottom) x merge step (columns): how many groups each block
    still has after that many merge events of the plan. Every block is named: Plotly thins category
    labels that would overlap, so the ticks are forced (one per block) and the figure grows by one
    label height per block instead."""
    z = np.asarray(groups_by_step)
    names = list(block_names)
    layout = _layout("Merge order: groups per block after each merge", "merge events applied", "block",
                     height=max(_HEIGHT, _LABEL_HEIGHT * len(names) + 120))
    layout["yaxis"].update(autorange="reversed", tickmode="array", tickvals=names, ticktext=names,
                           automargin=True, tickfont=dict(size=11))
    return go.Figure(data=[go.Heatmap(z=z, x=list(range(z.shape[1])), y=names, colorscale="Viridis",
                                      colorbar=dict(title=dict(text="groups")),
                                      hovertemplate="%{y}<br>after %{x} merges: %{z} group(s)<extra></extra>")],
                     layout=layout)


def similarity_figure(task_names: Sequence[str], matrix: np.ndarray, block_name: str) -> go.Figure:
    """The M x M cosine similarity of the block task vectors of one block."""
    matrix = np.asarray(matrix)
    layout = _layout(f"Task-vector similarity in block {block_name}", "task", "task")
    layout["yaxis"]["autorange"] = "reversed"
    return go.Figure(data=[go.Heatmap(z=matrix, x=list(task_names), y=list(task_names), zmin=-1, zmax=1,
                                      colorscale="RdBu", reversescale=True, text=np.round(matrix, 2),
                                      texttemplate="%{text}",
                                      hovertemplate="%{y} vs %{x}<br>cosine %{z:.3f}<extra></extra>")],
                     layout=layout)


def _short(names: Sequence[str], width: int = 18) -> list[str]:
    """Tick labels that fit: the tail of long parameter-path names."""
    return [n if len(n) <= width else "…" + n[-(width - 1):] for n in names]

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
from plotly.colors import hex_to_rgb, qualitative

from dashboard.metric_axis import ACCURACY, MetricAxis

_HEIGHT = 340
_LABEL_HEIGHT = 16    # pixels per category label at tick font size 11: no two labels overlap
_COLOURS = qualitative.Plotly   # Plotly's own default colour order, set explicitly so a band matches its line
_BAND_OPACITY = 0.18


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


def curve_bands(rows: Sequence[Mapping], axis: MetricAxis = ACCURACY) -> list[tuple[float, float, float]]:
    """(size, low, high) of the rows' 95% intervals of their average, in axis units; [] when a row has
    none or the axis is normalised (the intervals are of the raw average, not of normalised scores)."""
    if axis.normalized or any(r.get("ci_low") is None or r.get("ci_high") is None for r in rows):
        return []
    return [(r["size"], axis.scale(r["ci_low"]), axis.scale(r["ci_high"])) for r in rows]


def _band(label: str, band: Sequence[tuple[float, float, float]], colour: str) -> go.Scatter:
    """A filled polygon from the lows (left to right) back along the highs: the 95% interval of a line."""
    pts = sorted(band)
    red, green, blue = hex_to_rgb(colour)
    return go.Scatter(x=[p[0] for p in pts] + [p[0] for p in reversed(pts)],
                      y=[p[1] for p in pts] + [p[2] for p in reversed(pts)], fill="toself", mode="lines",
                      line=dict(width=0), fillcolor=f"rgba({red},{green},{blue},{_BAND_OPACITY})",
                      name=f"{label} (95% interval)", hoverinfo="skip", showlegend=False)


def curve_figure(series: Mapping[str, Sequence[tuple[float, float]]], *, finetuned: Optional[float] = None,
                 current: Optional[tuple[float, float]] = None, current_budget: Optional[float] = None,
                 axis: MetricAxis = ACCURACY, title: Optional[str] = None,
                 bands: Optional[Mapping[str, Sequence[tuple[float, float, float]]]] = None) -> go.Figure:
    """One line per label through (size, value) points, sorted by size, over a shaded band of its 95%
    interval where `bands` has (size, low, high) points for it (curve_bands); an optional dashed
    reference line for the fine-tuned models and a marker for the current slider position (its legend
    names the budget asked, so a new budget always redraws the marker). Values are in `axis` units."""
    hover, bands = _hover_y(axis), bands or {}
    colours = {label: _COLOURS[i % len(_COLOURS)] for i, label in enumerate(series)}
    data = [_band(label, bands[label], colours[label]) for label in series if bands.get(label)]
    for label, points in series.items():
        pts = sorted(points)
        data.append(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers", name=label,
                               line=dict(color=colours[label]),
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


def rows_figure(curves: Mapping[str, Sequence[Mapping]], axis: MetricAxis = ACCURACY, **options) -> go.Figure:
    """curve_figure of curve rows ({label: rows}): each label's line over the band of its 95% intervals."""
    return curve_figure({label: curve_points(rows, axis) for label, rows in curves.items()}, axis=axis,
                        bands={label: curve_bands(rows, axis) for label, rows in curves.items()}, **options)


def difference_figure(series: Mapping[str, Sequence[tuple[float, float, float, float, bool]]], *, title: str,
                      y_title: str) -> go.Figure:
    """Paired differences (reference minus each label) by size, with their 95% intervals as error bars
    and a zero line: points (size, difference, low, high, significant); filled markers are significant."""
    data = []
    for i, (label, points) in enumerate(series.items()):
        pts = sorted(points)
        data.append(go.Scatter(
            x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers", name=label,
            line=dict(color=_COLOURS[i % len(_COLOURS)]),
            marker=dict(size=10, symbol=["circle" if p[4] else "circle-open" for p in pts]),
            error_y=dict(type="data", symmetric=False, array=[p[3] - p[1] for p in pts],
                         arrayminus=[p[1] - p[2] for p in pts]),
            hovertemplate=f"{label}<br>size %{{x:g}}x<br>difference %{{y:.4g}}<extra></extra>"))
    line, note = _reference_line(0.0, "no difference")
    return go.Figure(data=data, layout=_layout(title, "size budget (x one model)", y_title, shapes=[line],
                                               annotations=[note]))


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

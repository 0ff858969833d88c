"""Plotly figure builders for the dashboard pages.

Why a separate module: the pages only decide *what* to show; these functions turn plain numbers
(lists, dicts, numpy arrays the engine computed) into figures, so every page draws the same kind of
data the same way and the builders can be tested without Streamlit. No engine logic here.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np
import plotly.graph_objects as go

_HEIGHT = 340
_MARGIN = dict(l=10, r=10, t=40, b=10)


def _layout(fig: go.Figure, title: str, x_title: str, y_title: str, height: int = _HEIGHT) -> go.Figure:
    fig.update_layout(title=title, height=height, margin=_MARGIN, xaxis_title=x_title, yaxis_title=y_title,
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, x=1.0, xanchor="right"),
                      hovermode="closest", template="plotly_white")
    return fig


def curve_figure(series: Mapping[str, Sequence[tuple[float, float]]], *, finetuned: Optional[float] = None,
                 current: Optional[tuple[float, float]] = None, y_title: str = "average accuracy (%)",
                 title: str = "Accuracy vs deployment size") -> go.Figure:
    """One line per label through (size, value) points, sorted by size; an optional dashed reference
    line for the fine-tuned models and a marker for the current slider position."""
    fig = go.Figure()
    for label, points in series.items():
        pts = sorted(points)
        fig.add_trace(go.Scatter(
            x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers", name=label,
            hovertemplate=f"{label}<br>size %{{x:.3f}}x<br>%{{y:.2f}}<extra></extra>"))
    if finetuned is not None:
        fig.add_hline(y=finetuned, line_dash="dash", line_color="gray",
                      annotation_text="fine-tuned models", annotation_position="bottom right")
    if current is not None:
        fig.add_trace(go.Scatter(x=[current[0]], y=[current[1]], mode="markers", name="current size",
                                 marker=dict(size=14, symbol="star", color="crimson"),
                                 hovertemplate="current<br>size %{x:.3f}x<br>%{y:.2f}<extra></extra>"))
    return _layout(fig, title, "deployment size (x one model)", y_title)


def task_accuracy_figure(tasks: Sequence[str], merged: Mapping[str, float],
                         finetuned: Optional[Mapping[str, float]], size: float) -> go.Figure:
    """Per-task accuracy of the deployment next to each task's own fine-tuned model (percent)."""
    fig = go.Figure()
    fig.add_trace(go.Bar(x=list(tasks), y=[100 * merged[t] for t in tasks], name=f"merged at {size:.2f}x",
                         hovertemplate="%{x}<br>merged %{y:.2f}%<extra></extra>"))
    if finetuned:
        fig.add_trace(go.Bar(x=list(tasks), y=[100 * finetuned[t] for t in tasks], name="fine-tuned",
                             marker_color="lightgray",
                             hovertemplate="%{x}<br>fine-tuned %{y:.2f}%<extra></extra>"))
    fig.update_layout(barmode="group", yaxis_range=[0, 100])
    return _layout(fig, "Per-task accuracy", "task", "accuracy (%)")


def cluster_count_figure(block_names: Sequence[str], counts: Sequence[int], num_tasks: int) -> go.Figure:
    """Number of task groups kept in each block, in model order (1 = fully merged, M = all separate)."""
    fig = go.Figure(go.Bar(x=list(range(len(block_names))), y=list(counts), customdata=list(block_names),
                           hovertemplate="%{customdata}<br>%{y} group(s)<extra></extra>"))
    fig.update_layout(yaxis_range=[0, num_tasks + 0.5], bargap=0.1)
    fig.update_xaxes(tickmode="array", tickvals=list(range(len(block_names))), ticktext=_short(block_names))
    return _layout(fig, "Task groups per block (model order)", "block", "groups")


def merge_heatmap_figure(block_names: Sequence[str], groups_by_step: np.ndarray,
                         current_step: Optional[int] = None) -> go.Figure:
    """Blocks (rows, model order top to bottom) x merge step (columns): how many groups each block
    still has after that many merge events; a vertical line marks the current deployment."""
    z = np.asarray(groups_by_step)
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(z.shape[1])), y=list(block_names), colorscale="Viridis",
        colorbar=dict(title="groups"),
        hovertemplate="%{y}<br>after %{x} merges: %{z} group(s)<extra></extra>"))
    if current_step is not None:
        fig.add_vline(x=current_step, line_color="crimson", line_width=2)
    fig.update_yaxes(autorange="reversed", showticklabels=len(block_names) <= 40)
    return _layout(fig, "Merge order: groups per block after each merge", "merge events applied", "block",
                   height=max(_HEIGHT, 14 * len(block_names) + 120))


def similarity_figure(task_names: Sequence[str], matrix: np.ndarray, block_name: str) -> go.Figure:
    """The M x M cosine similarity of the block task vectors of one block."""
    fig = go.Figure(go.Heatmap(
        z=np.asarray(matrix), x=list(task_names), y=list(task_names), zmin=-1, zmax=1, colorscale="RdBu",
        reversescale=True, text=np.round(np.asarray(matrix), 2), texttemplate="%{text}",
        hovertemplate="%{y} vs %{x}<br>cosine %{z:.3f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, f"Task-vector similarity in block {block_name}", "task", "task")


def _short(names: Sequence[str], width: int = 18) -> list[str]:
    """Tick labels that fit: the tail of long parameter-path names."""
    return [n if len(n) <= width else "…" + n[-(width - 1):] for n in names]

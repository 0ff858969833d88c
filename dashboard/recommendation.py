"""The recommendation in words, shared by the Overview and Explore pages (no engine logic here)."""
from __future__ import annotations

from dashboard.metric_axis import MetricAxis


def knee_text(knee: dict | None, axis: MetricAxis) -> str:
    """The knee of the curve in words, with the 95% interval of its average (accuracy only)."""
    if knee is None:
        return "No knee: on this curve every extra bit of size helps about as much as the last."
    interval = ("" if knee.get("ci_low") is None else
                f" (95% interval {axis.format(axis.scale(knee['ci_low']))}-{axis.format(axis.scale(knee['ci_high']))}"
                f" over {sum(knee['n'].values()):,} held-out examples)")
    return (f"Recommended: **{knee['size']:.2f}x** ({knee['megabytes']:.2f} MB), the knee of the curve where more "
            f"size stops helping much: **{axis.format(axis.average(knee))}** average {axis.name}{interval}.")

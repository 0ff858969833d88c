"""The recommendation in words, shared by the Overview and Explore pages (no engine logic here)."""
from __future__ import annotations


def knee_text(knee: dict | None) -> str:
    """The knee of the curve in words, with the 95% interval of its average accuracy."""
    if knee is None:
        return "No knee: on this curve every extra bit of size buys about as much accuracy as the last."
    interval = ("" if knee["ci_low"] is None else
                f" (95% interval {100 * knee['ci_low']:.1f}-{100 * knee['ci_high']:.1f}% over "
                f"{sum(knee['n'].values()):,} held-out examples)")
    return (f"Recommended: **{knee['size']:.2f}x** ({knee['megabytes']:.2f} MB), the knee of the curve where more "
            f"size stops buying much accuracy: **{100 * knee['avg_accuracy']:.1f}%** average accuracy{interval}.")

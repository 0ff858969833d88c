"""Pages that draw what is known and refresh while background evaluations land.

Why: the pages must never block on compute (dashboard/background.py runs it). A page draws its
live part in a fragment that re-runs every REFRESH_S seconds while this plan has work pending; the
timer of a fragment is fixed when the whole page runs, so `settle` re-runs the page once when the
pending state flips (the refresh starts, or stops when nothing is left). The sidebar's work panel
lists this session's work, with a button that drops what is still queued.
"""
from __future__ import annotations

import functools
import uuid
from typing import Callable, Sequence

import streamlit as st

from dashboard.background import background, evaluation_order
from flexmerge_core.studio import Explorer

REFRESH_S = 1.0
CANCELLED_KEY = "work_cancelled"   # the plan settings whose queued work this session cancelled
ASKED_KEY = "work_asked"           # this run asked for sizes that were not known yet


def session_id() -> str:
    return st.session_state.setdefault("background_session", uuid.uuid4().hex)


def want(explorer: Explorer, budgets: Sequence[float], urgent: bool = False) -> None:
    """Ask for these sizes of this plan to be evaluated in the background (known ones are skipped).
    Once this session cancelled a plan's work, only urgent asks (the size on screen) queue more of it."""
    if urgent or explorer.choice not in st.session_state.get(CANCELLED_KEY, set()):
        work = background()
        if any(not explorer.known(b) and work.failure(explorer, b) is None for b in budgets):
            st.session_state[ASKED_KEY] = True   # what is drawn now may show "pending" (see _settling)
        work.want(session_id(), explorer, budgets, urgent=urgent)


def want_curve(explorer: Explorer, first: Sequence[float] = ()) -> None:
    """Ask for the plan's overview curve (`first`, then background.evaluation_order of its grid)."""
    want(explorer, list(first) + evaluation_order(explorer.grid(), explorer.plan.min_size, explorer.plan.max_size))


def pending(explorer: Explorer) -> bool:
    return bool(background().pending(explorer))


def live_fragment(body: Callable[..., None], explorer: Explorer, *args) -> None:
    """Run `body(explorer, *args)` as a fragment that refreshes while `explorer` has work pending."""
    refreshing = pending(explorer)
    st.fragment(_settling(body), run_every=REFRESH_S if refreshing else None)(explorer, refreshing, *args)


def _settling(body: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(body)   # the fragment's identity follows the page's function
    def run(explorer: Explorer, refreshing: bool, *args) -> None:
        st.session_state[ASKED_KEY] = False
        body(explorer, *args)
        # the timer must start or stop: only a full run sets it. Without a timer, work this run asked for
        # may already have landed (nothing pending) after "pending" was drawn: run again to draw it.
        if refreshing != pending(explorer) or (not refreshing and st.session_state.get(ASKED_KEY)):
            st.rerun()
    return run


def work_panel() -> None:
    """The sidebar's list of this session's evaluations, refreshed while any is pending."""
    with st.sidebar:
        busy = any(t.state in ("queued", "running") for t in background().tasks(session_id()))
        st.fragment(_work_list, run_every=REFRESH_S if busy else None)(busy)


def _work_list(busy: bool) -> None:
    tasks = background().tasks(session_id())
    queued = sum(t.state == "queued" for t in tasks)
    running = sum(t.state == "running" for t in tasks)
    with st.expander(f"Work in progress ({running} running, {queued} queued)" if running + queued else
                     "Work in progress (idle)", expanded=False):
        if not tasks:
            st.caption("Nothing evaluated in the background in this session yet.")
        for task in tasks[:20]:
            note = f": {task.error}" if task.error else ""
            st.caption(f"{task.state} - {task.label}{note}")
        if st.button("Cancel queued work", key="work_cancel", disabled=queued == 0,
                     help="Drop this session's evaluations that have not started (the running one finishes)"):
            dropped = background().cancel(session_id())
            st.session_state.setdefault(CANCELLED_KEY, set()).update(t.explorer.choice for t in dropped)
            st.rerun()
    if busy != (running + queued > 0):
        st.rerun()

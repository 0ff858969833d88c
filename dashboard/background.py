"""Evaluations the dashboard wants, run by one background thread of this server process.

Why: a page must never wait on compute. A page names the sizes it wants evaluated and draws what is
already known; one worker thread evaluates them through Explorer.curve (results land in the
explorer's memo and the engine's disk cache, so every page and session sees them). One thread, not
worker processes: the results must land in the explorers this process holds, and evaluations of
one plan serialise on its lock anyway. The size a user is looking at jumps the queue; a session can
drop its queued work. No Streamlit import: dashboard/live.py draws this.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Optional, Sequence

from flexmerge_core.studio import Explorer

HISTORY = 50   # finished tasks remembered per process, for the work panel


@dataclass
class Task:
    """One size of one plan to evaluate, on behalf of the session that asked first."""

    session: str
    explorer: Explorer
    budget: float
    events: int
    state: str = "queued"      # queued -> running -> done | failed; or queued -> cancelled
    error: str = ""

    @property
    def label(self) -> str:
        return f"{self.explorer.algorithm.name} at {self.budget:.2f}x"

    def same_work(self, explorer: Explorer, events: int) -> bool:
        return self.explorer is explorer and self.events == events


def evaluation_order(budgets: Sequence[float], low: float, high: float) -> list[float]:
    """The budgets in the order that draws a useful curve soonest: the smallest size (1x), all models
    kept (Mx), 2x, then each time the budget farthest from every budget already taken (the biggest gap)."""
    left = sorted(set(float(b) for b in budgets))
    taken: list[float] = []
    for anchor in (low, high, 2.0):
        nearest = min(left, key=lambda b: (abs(b - anchor), b), default=None)
        if nearest is not None and abs(nearest - anchor) < 1e-9:
            taken.append(nearest)
            left.remove(nearest)
    while left:
        pick = max(left, key=lambda b: (min((abs(b - t) for t in taken), default=0.0), -b))
        taken.append(pick)
        left.remove(pick)
    return taken


class Background:
    """A queue of Tasks and the one daemon thread that runs them, front first."""

    def __init__(self):
        self._cond = threading.Condition()
        self._queue: list[Task] = []
        self._running: Optional[Task] = None
        self._finished: list[Task] = []
        self._thread: Optional[threading.Thread] = None

    def want(self, session: str, explorer: Explorer, budgets: Sequence[float], urgent: bool = False) -> None:
        """Queue the budgets whose accuracies are not known (in order; urgent: before everything else)."""
        with self._cond:
            fresh = []
            for budget in budgets:
                events = explorer.partition(budget).num_events
                if explorer.known(budget) or self.failure(explorer, budget) is not None or \
                        (self._running and self._running.same_work(explorer, events)):
                    continue
                if any(t.same_work(explorer, events) for t in fresh):
                    continue
                queued = next((t for t in self._queue if t.same_work(explorer, events)), None)
                if queued is None:
                    fresh.append(Task(session, explorer, float(budget), events))
                elif urgent:
                    self._queue.remove(queued)
                    fresh.append(queued)
            self._queue = fresh + self._queue if urgent else self._queue + fresh
            if fresh:
                self._start()
                self._cond.notify_all()

    def failure(self, explorer: Explorer, budget: float) -> Optional[str]:
        """The error of this size's failed evaluation (not retried: it would fail again), else None."""
        events = explorer.partition(budget).num_events
        with self._cond:
            failed = [t for t in self._finished if t.state == "failed" and t.same_work(explorer, events)]
        return failed[-1].error if failed else None

    def pending(self, explorer: Optional[Explorer] = None) -> list[Task]:
        """Tasks queued or running (of one plan, or all)."""
        with self._cond:
            tasks = ([self._running] if self._running else []) + list(self._queue)
        return [t for t in tasks if explorer is None or t.explorer is explorer]

    def tasks(self, session: str) -> list[Task]:
        """This session's tasks: running, queued, then finished (newest first)."""
        with self._cond:
            tasks = ([self._running] if self._running else []) + self._queue + self._finished[::-1]
        return [t for t in tasks if t.session == session]

    def cancel(self, session: str) -> list[Task]:
        """Drop this session's queued tasks (a running one finishes); the tasks dropped."""
        with self._cond:
            dropped = [t for t in self._queue if t.session == session]
            self._queue = [t for t in self._queue if t.session != session]
            for task in dropped:
                task.state = "cancelled"
                self._remember(task)
        return dropped

    def wait_idle(self, timeout: float) -> bool:
        """Block until nothing is queued or running (for tests and scripts); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._running:
                if not self._cond.wait(max(0.0, deadline - time.monotonic())) and time.monotonic() >= deadline:
                    return False
        return True

    def _remember(self, task: Task) -> None:
        self._finished = (self._finished + [task])[-HISTORY:]

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._work, name="flexmerge-evaluations", daemon=True)
            self._thread.start()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                task = self._running = self._queue.pop(0)
                task.state = "running"
            try:
                task.explorer.curve([task.budget])
                task.state = "done"
            except Exception as exc:  # shown in the work panel; the page marks the size as failed
                task.state, task.error = "failed", " ".join(str(exc).split())
            with self._cond:
                self._running = None
                self._remember(task)
                self._cond.notify_all()


_shared: Optional[Background] = None
_shared_lock = threading.Lock()


def background() -> Background:
    """The process's one Background (pages and sessions share it, as they share the explorers)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Background()
        return _shared

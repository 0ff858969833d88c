"""Outcome of every corpus case, for the closing summary line."""
from __future__ import annotations

CLEAR, UNCLEAR, CRASH = "clear", "unclear", "crash"
OUTCOMES: dict[str, str] = {}   # case name -> worst outcome over its channels


def record(case: str, outcome: str) -> None:
    order = (CLEAR, UNCLEAR, CRASH)
    previous = OUTCOMES.get(case, CLEAR)
    OUTCOMES[case] = max(previous, outcome, key=order.index)


def summary_line() -> str:
    tried = len(OUTCOMES)
    clear = sum(o == CLEAR for o in OUTCOMES.values())
    crashes = sum(o == CRASH for o in OUTCOMES.values())
    return f"bad inputs: {tried} tried, {clear} clear errors, {crashes} crashes"

"""What every page shares: which zoo is open, the cached engine objects, progress bars, errors.

Why here: each page must open the same zoo (chosen once in the sidebar, or by the `zoo` query
parameter / FLEXMERGE_ZOO for tests), reuse the same engine objects across reruns and sessions
(`st.cache_resource`), show long work as a progress bar, and turn engine errors into one-line
messages instead of tracebacks.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import streamlit as st

from flexmerge_core.cache import cache_root
from flexmerge_core.errors import FlexMergeError
from flexmerge_core.pipeline import DEMO_ZOOS, ensure_demo
from flexmerge_core.studio import Studio, open_studio_zoo

ZOO_KEY = "zoo_spec"
FOLDER_CHOICE = "folder"
ZOO_CHOICES = {"demo": "Vision demo: tiny ViT, 8 image tasks", "demo-text": "Text demo: tiny Llama, 8 text tasks",
               FOLDER_CHOICE: "A zoo folder..."}


def _initial_zoo_spec() -> str:
    return st.query_params.get("zoo") or os.environ.get("FLEXMERGE_ZOO") or "demo"


def current_zoo_spec() -> str:
    if ZOO_KEY not in st.session_state:
        st.session_state[ZOO_KEY] = _initial_zoo_spec()
    return st.session_state[ZOO_KEY]


def _apply_zoo_input() -> None:
    st.session_state[ZOO_KEY] = st.session_state["zoo_input"].strip() or "demo"


def _apply_zoo_choice() -> None:
    if st.session_state["zoo_choice"] in DEMO_ZOOS:
        st.session_state[ZOO_KEY] = st.session_state["zoo_choice"]


def zoo_picker() -> None:
    """Sidebar choice of the zoo: one of the embedded demos, or a folder typed in (shown once chosen);
    the choice persists across pages."""
    spec = current_zoo_spec()
    folder = spec not in DEMO_ZOOS or st.session_state.get("zoo_choice") == FOLDER_CHOICE
    st.session_state["zoo_choice"] = FOLDER_CHOICE if folder else spec
    st.sidebar.selectbox("Model zoo", list(ZOO_CHOICES), key="zoo_choice", format_func=ZOO_CHOICES.__getitem__,
                         on_change=_apply_zoo_choice)
    if folder:
        st.session_state["zoo_input"] = "" if spec in DEMO_ZOOS else spec
        st.sidebar.text_input("Zoo folder", key="zoo_input", on_change=_apply_zoo_input,
                              help="the path of a zoo folder (with zoo.json), or 'demo' / 'demo-text'")


class ProgressBar:
    """A progress(done, total, message) callback drawing a Streamlit progress bar, removed when done."""

    def __init__(self, label: str):
        self.label = label
        self._slot = st.empty()

    def __call__(self, done: int, total: int, message: str = "") -> None:
        fraction = 0.0 if total <= 0 else min(1.0, max(0.0, done / total))
        text = f"{self.label}: {message}" if message else self.label
        self._slot.progress(fraction, text=f"{text} ({done}/{total})")

    def clear(self) -> None:
        self._slot.empty()


@contextlib.contextmanager
def progress_bar(label: str) -> Iterator[ProgressBar]:
    bar = ProgressBar(label)
    try:
        yield bar
    finally:
        bar.clear()


@st.cache_resource(show_spinner=False, max_entries=4)
def _studio(spec: str) -> Studio:
    """No Streamlit element may be drawn in here: st.cache_resource replays the elements a cached call
    drew, and a progress bar made outside it cannot be replayed (CacheReplayClosureError in the next
    session); slow work with a progress bar runs before, in open_studio."""
    return Studio(open_studio_zoo(spec))


_demo_zoos_ready: set[tuple[str, Path]] = set()  # checked once per process: the check costs ~17 ms on every rerun


def _ensure_demo_zoo(name: str, progress: ProgressBar) -> None:
    """Build the demo zoo `name` with a progress bar when it is missing or stale (once per cache folder)."""
    key = (name, cache_root())
    if key not in _demo_zoos_ready:
        ensure_demo(name, progress=progress)
        _demo_zoos_ready.add(key)


def open_studio() -> Studio:
    """The Studio of the chosen zoo (a demo zoo is built first when needed, with a progress bar); on a
    bad zoo the page shows the engine's message and stops."""
    spec = current_zoo_spec()
    with progress_bar(f"Opening zoo {spec}") as bar, engine_errors():
        if spec in DEMO_ZOOS:
            _ensure_demo_zoo(spec, bar)
        return _studio(spec)


@contextlib.contextmanager
def engine_errors() -> Iterator[None]:
    """Show a FlexMergeError as a one-line in-page error and stop this page run (no traceback)."""
    try:
        yield
    except FlexMergeError as exc:
        st.error(" ".join(str(exc).split()))
        st.stop()


def requested(label: str, key: str, note: str) -> bool:
    """A button for long work; once pressed it stays requested for this session (results are cached)."""
    if st.button(label, key=key):
        st.session_state[f"{key}_requested"] = True
    if not st.session_state.get(f"{key}_requested"):
        st.caption(note)
    return bool(st.session_state.get(f"{key}_requested"))

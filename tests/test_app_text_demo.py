"""The dashboard on the text demo zoo (micro): every page renders, charts are labelled with the task
metric (rank-classification accuracy), and the sidebar offers both embedded demos."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app_support import settled

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 180


@pytest.fixture(scope="module")
def text_zoo(request, tmp_path_factory):
    """The micro text demo zoo, opened by the app (FLEXMERGE_ZOO) with a fresh engine cache."""
    from app_support import app_opens, micro_text_zoo_for

    with app_opens(micro_text_zoo_for(request), tmp_path_factory.mktemp("engine-cache")) as zoo:
        yield zoo


def _page(path: str | None) -> AppTest:
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT)
    if path:
        at.switch_page(path)
    return settled(at, TIMEOUT)


@pytest.mark.parametrize("page", [None, "pages/1_Explore.py", "pages/2_Compare.py", "pages/3_Export.py",
                                  "pages/4_Findings.py"])
def test_every_page_renders_on_the_text_demo_with_accuracy_axes(text_zoo, page):
    at = _page(page)
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert at.title
    titles = []
    for chart in at.get("plotly_chart"):
        layout = json.loads(chart.proto.spec)["layout"]
        titles += [layout.get(axis, {}).get("title", {}).get("text") or "" for axis in ("xaxis", "yaxis")]
    if titles:   # the value axes name the tasks' metric (the groups-per-block chart has none)
        assert any("accuracy (%)" in t for t in titles), (page, titles)


def test_sidebar_offers_both_demos_and_switches_to_the_text_demo(text_zoo, monkeypatch):
    from dashboard import session
    from flexmerge_core.demo import text

    monkeypatch.setattr(text, "FULL", text.MICRO)   # choosing the demo builds it: the micro recipe here
    monkeypatch.setenv("FLEXMERGE_DEMO_WORKERS", "1")
    at = _page(None)
    picker = at.sidebar.selectbox(key="zoo_choice")
    assert picker.options[:2] == [session.ZOO_CHOICES["demo"], session.ZOO_CHOICES["demo-text"]]
    assert picker.value == session.FOLDER_CHOICE   # the app opened a folder (FLEXMERGE_ZOO)
    assert at.sidebar.text_input(key="zoo_input").value == str(text_zoo)
    monkeypatch.setenv("FLEXMERGE_ZOO", "demo-text")
    at = _page(None)
    assert at.session_state["zoo_spec"] == "demo-text"
    assert at.sidebar.selectbox(key="zoo_choice").value == "demo-text"
    assert not at.sidebar.get("text_input"), "no folder field while a demo is chosen"

"""The dashboard pages under Streamlit's AppTest, on the micro demo zoo.

Every page renders without exceptions; the Explore slider shows exactly the engine's numbers for
the chosen size (per-task accuracies re-evaluated here without any cache, groups per block from
the plan); the Export page writes files that load; bad input gives an in-page message, not a
traceback.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from streamlit.testing.v1 import AppTest

from app_support import settled

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 180


def _settled(at: AppTest) -> AppTest:
    return settled(at, TIMEOUT)


def _page(path: str | None, settle: bool = True) -> AppTest:
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT)
    if path:
        at.switch_page(path)
    return _settled(at) if settle else at.run()


def _clean(at: AppTest, page: str) -> None:
    assert not at.exception, f"{page}: {[e.value for e in at.exception]}"
    assert not at.error, f"{page}: {[e.value for e in at.error]}"


def _metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def _engine(app_zoo, budget: float):
    """The engine's own numbers for TA, default settings, at `budget`: the partition and accuracies
    evaluated from scratch (no evaluation cache), independently of the app's facade."""
    from flexmerge_core.algorithms import get_algorithm
    from flexmerge_core.planning.blocks import build_blocks
    from flexmerge_core.deployment.deploy import build_deployment
    from flexmerge_core.evaluation.evaluate import evaluate_deployment
    from flexmerge_core.planning.plan import build_plan
    from flexmerge_core.zoo import open_zoo

    zoo = open_zoo(app_zoo)
    spec = build_blocks(zoo.param_names, zoo.param_shapes, granularity="component")
    algorithm = get_algorithm("ta")
    plan = build_plan(zoo, spec, algorithm)
    partition = plan.partition_at(budget)
    result = evaluate_deployment(zoo, build_deployment(zoo, plan, algorithm, budget, spec=spec), use_cache=False)
    return partition, result.accuracy, [b.name for b in spec.blocks]


@pytest.mark.parametrize("page", [None, "pages/1_Explore.py", "pages/2_Compare.py", "pages/3_Export.py",
                                  "pages/4_Findings.py"])
def test_page_renders_without_exceptions(app_zoo, page):
    at = _page(page)
    _clean(at, page or "Overview")
    assert at.title, "every page has a title"


def test_overview_summarises_the_zoo(app_zoo):
    from flexmerge_core.zoo import open_zoo

    zoo = open_zoo(app_zoo)
    at = _page(None)
    assert _metric(at, "Tasks") == str(len(zoo.task_names))
    table = at.dataframe[0].value
    assert list(table["task"]) == list(zoo.task_names)
    for task, acc in zip(table["task"], table["fine-tuned accuracy (%)"]):
        assert acc == pytest.approx(100 * zoo.finetuned_accuracy[task])
    assert "within 1 point" in at.markdown[0].value or "1.00x" in at.markdown[0].value
    assert any("imported from: the embedded demo" in c.value for c in at.caption)


def test_overview_and_explore_show_the_knee_with_its_interval(app_zoo):
    for page in (None, "pages/1_Explore.py"):
        at = _page(page)
        notes = [i.value for i in at.info]
        assert any(n.startswith("Recommended: **") and "95% interval" in n or n.startswith("No knee") for n in notes)


def test_slider_in_megabytes_picks_the_largest_deployment_that_fits(app_zoo):
    """TA stores one model's bytes per model unit: the MB slider's deployment is the largest achievable
    size whose bytes fit, computed here from the zoo's tensor sizes."""
    import math

    from flexmerge_core.zoo import open_zoo

    zoo = open_zoo(app_zoo)
    one_model = sum(math.prod(zoo.param_shapes[n]) * zoo.param_dtypes[n].itemsize for n in zoo.param_names)
    at = _page("pages/1_Explore.py")
    at.radio(key="explore_unit").set_value("MB").run()
    _clean(at, "Explore in MB")
    slider = at.slider(key="explore_size_mb")
    for mb in (slider.min, 1.7 * one_model / 1e6, slider.max):
        at.slider(key="explore_size_mb").set_value(mb).run()
        _clean(at, f"Explore at {mb} MB")
        plan = _ta_plan(app_zoo)
        fitting = [s for s in plan.achievable_sizes() if s * one_model <= mb * 1e6]
        partition = plan.partition_at(max(fitting) if fitting else plan.min_size / 2)
        assert _metric(at, "Size achieved") == f"{partition.size:.3f}x"
        assert _metric(at, "Memory") == f"{partition.size * one_model / 1e6:.2f} MB"
        assert _metric(at, "Budget asked").endswith(" MB")


def _ta_plan(app_zoo):
    from flexmerge_core.algorithms import get_algorithm
    from flexmerge_core.planning.blocks import build_blocks
    from flexmerge_core.planning.plan import build_plan
    from flexmerge_core.zoo import open_zoo

    zoo = open_zoo(app_zoo)
    spec = build_blocks(zoo.param_names, zoo.param_shapes, granularity="component")
    return build_plan(zoo, spec, get_algorithm("ta"))


def _figures(at: AppTest) -> dict[str, dict]:
    """The page's Plotly figures as JSON documents, by title."""
    specs = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]
    return {spec["layout"]["title"]["text"]: spec for spec in specs}


def _lines(traces: list[dict]) -> list[dict]:
    """A curve figure's lines, without the shaded bands of their 95% intervals."""
    return [t for t in traces if t.get("fill") != "toself"]


def _explore_numbers(at: AppTest) -> tuple[dict, list[int], list[str]]:
    """What the Explore charts show: per-task accuracy bars (%), groups per block and block names."""
    figures = _figures(at)
    tasks = next(t for t in figures["Per-task accuracy"]["data"] if t["name"].startswith("merged"))
    blocks = figures["Task groups per block (model order)"]["data"][0]
    return dict(zip(tasks["x"], tasks["y"])), blocks["y"], blocks["customdata"]


def test_slider_shows_the_engines_numbers_at_each_size(app_zoo):
    at = _page("pages/1_Explore.py")
    seen = {}
    for budget in (1.0, 1.5, at.slider(key="explore_size").max):
        _settled(at.slider(key="explore_size").set_value(budget))
        _clean(at, f"Explore at {budget}")
        accuracy, counts, block_names = _explore_numbers(at)
        partition, engine_accuracy, engine_blocks = _engine(app_zoo, budget)
        assert block_names == engine_blocks
        assert counts == [len(groups) for groups in partition.groups]
        assert _metric(at, "Size achieved") == f"{partition.size:.3f}x"
        assert _metric(at, "Budget asked") == f"{budget:.2f}x"
        for task, acc in engine_accuracy.items():
            assert accuracy[task] == pytest.approx(100 * acc, abs=1e-9)
        seen[budget] = (accuracy, counts)
    (acc_low, counts_low), (acc_high, counts_high) = seen[1.0], seen[max(seen)]
    assert counts_low == [1] * len(counts_low) and counts_high == [len(acc_high)] * len(counts_high)
    assert acc_low != acc_high, "moving the slider from 1x to Mx must change the per-task accuracies"


@pytest.fixture
def gated_evaluations(monkeypatch):
    """Fresh explorers whose evaluations wait until the test opens the gate (an evaluation that takes
    as long as the test wants, without timing anything)."""
    from dashboard.background import background
    from dashboard.session import _studio
    from flexmerge_core.studio import Explorer

    gate = threading.Event()
    curve = Explorer.curve

    def gated(self, budgets, progress=None):
        if not all(self.known(b) for b in budgets):
            gate.wait(TIMEOUT)
        return curve(self, budgets, progress)

    monkeypatch.setattr(Explorer, "curve", gated)
    _studio.clear()
    try:
        yield gate
    finally:
        gate.set()
        background().wait_idle(TIMEOUT)
        _studio.clear()


def test_explore_shows_the_partition_at_once_and_the_accuracy_when_it_lands(app_zoo, gated_evaluations):
    from dashboard.background import background

    at = _page("pages/1_Explore.py", settle=False)
    _clean(at, "Explore while evaluating")
    budget = at.slider(key="explore_size").value
    partition, engine_accuracy, block_names = _engine(app_zoo, budget)
    assert _metric(at, "Size achieved") == f"{partition.size:.3f}x"
    assert _metric(at, "Average accuracy") == "pending"
    assert "Per-task accuracy" not in _figures(at)
    counts = _figures(at)["Task groups per block (model order)"]["data"][0]["y"]
    assert counts == [len(groups) for groups in partition.groups]
    assert background().pending(), "the grid is being evaluated in the background"

    gated_evaluations.set()
    assert background().wait_idle(TIMEOUT)
    at.run()
    _clean(at, "Explore after the evaluations landed")
    mean = sum(engine_accuracy.values()) / len(engine_accuracy)
    assert _metric(at, "Average accuracy") == f"{100 * mean:.2f}%"
    assert not background().pending()


def test_cancel_drops_the_sessions_queued_work(app_zoo, gated_evaluations):
    from dashboard.background import background

    at = _page("pages/1_Explore.py", settle=False)
    queued = [t for t in background().pending() if t.state == "queued"]
    assert queued, "the grid sizes wait behind the running evaluation"
    on_screen = at.slider(key="explore_size").value
    at.button(key="work_cancel").click().run()
    _clean(at, "Explore after cancelling")
    running = [t for t in background().pending() if t.state == "running"]
    left = {t.budget for t in background().pending() if t.state == "queued"}
    assert len(running) == 1 and left <= {on_screen}, "only the size on screen is asked for again"
    assert {t.state for t in queued if t.budget != on_screen} == {"cancelled"}
    at.run()
    assert {t.budget for t in background().pending() if t.state == "queued"} <= {on_screen}, \
        "a later run does not queue the cancelled curve again"


def test_findings_page_shows_the_engines_five_verdicts_with_their_numbers(app_zoo):
    from flexmerge_core.findings import DEFAULT_ALGORITHMS, reproduce_findings
    from flexmerge_core.zoo import open_zoo

    at = _page("pages/4_Findings.py")
    at.button(key="findings_run").click().run()
    _clean(at, "Findings")
    doc = reproduce_findings(open_zoo(app_zoo), DEFAULT_ALGORITHMS)    # the engine's own document (cached curves)
    boxes = {"reproduced": at.success, "not reproduced": at.warning, "inconclusive": at.info}
    shown = [s.value for s in at.subheader]
    for letter, finding in zip("abcde", doc["findings"]):
        assert f"({letter}) {finding['title']}" in shown
        assert f"**{finding['verdict'].upper()}**: {finding['claim']}" in [b.value for b in boxes[finding["verdict"]]]
        assert finding["summary"] in [m.value for m in at.markdown]
    gain = doc["findings"][0]
    assert _metric(at, "Gain") == f"{100 * gain['gain']:+.2f} points"
    figures = _figures(at)
    for finding in doc["findings"][2:]:
        chart = figures[f"{finding['reference']} minus each alternative"]
        for trace, alternative in zip(chart["data"], finding["alternatives"]):
            assert trace["name"] == alternative["label"]
            assert trace["y"] == pytest.approx([100 * c["difference"] for c in alternative["comparisons"]])
            assert trace["error_y"]["array"] == pytest.approx([100 * (c["ci_high"] - c["difference"])
                                                               for c in alternative["comparisons"]])
    ranking = next(d.value for d in at.dataframe if "ranking changed" in d.value.columns)
    assert list(ranking["budget"]) == [f"{s['size_budget']:.2f}x" for s in doc["findings"][1]["rankings"]]


def test_export_writes_files_that_load(app_zoo):
    from flexmerge_core.deployment.export import load_deployment, recipe_path
    from flexmerge_core.zoo import open_zoo

    zoo = open_zoo(app_zoo)
    at = _page("pages/3_Export.py")
    at.number_input(key="export_size").set_value(1.5).run()
    at.button(key="export_write_deployment").click().run()
    _clean(at, "Export deployment")
    assert [b.key for b in at.get("download_button")][:2] == ["download_deployment", "download_recipe"]
    deployment_file = at.session_state["exports"][next(k for k in at.session_state["exports"] if k[2] is None)]
    deployment = load_deployment(deployment_file)
    partition, _, _ = _engine(app_zoo, 1.5)
    assert deployment.task_names == zoo.task_names
    assert deployment.size == pytest.approx(partition.size)
    recipe = json.loads(recipe_path(deployment_file).read_text())
    assert recipe["algorithm"] == "ta" and recipe["size"] == pytest.approx(partition.size)

    task = zoo.task_names[1]
    at.selectbox(key="export_task").set_value(task).run()
    at.button(key="export_write_task").click().run()
    _clean(at, "Export task")
    task_file = at.session_state["exports"][next(k for k in at.session_state["exports"] if k[2] == task)]
    encoder = zoo.build_encoder()
    encoder.load_state_dict(load_file(task_file), strict=True)
    expected = deployment.task_state_dict(zoo.task_names.index(task))
    loaded = load_file(task_file)
    for name, tensor in expected.items():
        assert (loaded[name] == tensor).all(), name


def test_export_in_half_precision_holds_the_megabytes_shown(app_zoo):
    at = _page("pages/3_Export.py")
    at.number_input(key="export_size").set_value(1.5).run()
    at.selectbox(key="export_dtype").set_value("bf16").run()
    at.button(key="export_write_deployment").click().run()
    _clean(at, "Export in bf16")
    path = at.session_state["exports"][next(k for k in at.session_state["exports"] if k[3] == "bf16")]
    tensors = load_file(path)
    merged = sum(v.numel() * v.element_size() for k, v in tensors.items() if not k.startswith("tasks/"))
    assert _metric(at, "Stored parameters") == f"{merged / 1e6:.2f} MB"
    assert {v.dtype for v in tensors.values() if v.is_floating_point()} == {torch.bfloat16}


def test_bad_zoo_folder_is_a_one_line_error(app_zoo, tmp_path):
    at = _page(None)
    at.sidebar.text_input(key="zoo_input").input(str(tmp_path / "no-such-zoo")).run()
    assert not at.exception
    assert len(at.error) == 1 and "\n" not in at.error[0].value
    assert "no-such-zoo" in at.error[0].value
    at.sidebar.text_input(key="zoo_input").input(str(app_zoo)).run()
    _clean(at, "Overview after going back to a good zoo")


def test_unreachable_budget_is_explained(app_zoo):
    at = _page("pages/3_Export.py")
    at.number_input(key="export_size").set_value(0.5).run()
    _clean(at, "Export below the minimum size")
    assert any("cannot be met" in w.value for w in at.warning)
    assert _metric(at, "Size achieved") == "1.000x"


def test_compare_baselines_and_ablations(app_zoo):
    from flexmerge_core.planning.linkage import LINKAGES
    from flexmerge_core.planning.plan import ORDERS
    from flexmerge_core.zoo import open_zoo

    zoo = open_zoo(app_zoo)
    m = len(zoo.task_names)
    at = _page("pages/2_Compare.py")
    at.button(key="baseline_run").click().run()
    at.button(key="ablation_run").click().run()
    _clean(at, "Compare with baselines and ablations")
    figures = _figures(at)
    traces = figures["FlexMerge vs Channel Merging and whole-model clustering"]["data"]
    baselines = {t["name"]: t for t in _lines(traces)}
    assert set(baselines) == {"FlexMerge (avg)", "Channel Merging (avg)", "Whole-model clustering (avg)"}
    assert {t["name"] for t in traces if t.get("fill") == "toself"} == {f"{n} (95% interval)" for n in baselines}
    finetuned_avg = 100 * sum(zoo.finetuned_accuracy.values()) / m
    for trace in baselines.values():
        assert trace["x"] == [float(k) for k in range(1, m + 1)]   # standard algorithm: size = k exactly
        assert trace["y"][-1] == pytest.approx(finetuned_avg)      # Mx = the fine-tuned models
    assert {t["name"] for t in _lines(figures["Linkage (ta, greedy order)"]["data"])} == set(LINKAGES)
    assert {t["name"] for t in _lines(figures["Merge order (ta, min linkage)"]["data"])} == set(ORDERS)
    rankings = next(d.value for d in at.dataframe if "ranking changed" in d.value.columns)
    assert rankings["#1"].str.len().gt(0).all()


def test_demo_zoo_built_by_one_session_opens_in_the_next(tmp_path, monkeypatch):
    """The first session builds the demo zoo behind a progress bar, the next reuses the cached Studio:
    st.cache_resource must have nothing to replay that was drawn outside it (CacheReplayClosureError)."""
    from dashboard.session import _studio
    from flexmerge_core.demo import vision as demo

    monkeypatch.setenv("FLEXMERGE_CACHE", str(tmp_path))
    monkeypatch.setenv("FLEXMERGE_ZOO", "demo")
    monkeypatch.setattr(demo, "FULL", demo.MICRO)
    _studio.clear()
    try:
        for session in ("first session", "second session"):
            _clean(_page(None), session)
    finally:
        _studio.clear()
    assert demo.is_current(tmp_path / "demo-zoo", demo.MICRO)


def test_overview_draws_the_zoo_at_once_and_the_curve_as_it_lands(app_zoo, gated_evaluations):
    from dashboard.background import background
    from flexmerge_core.zoo import open_zoo

    at = _page(None, settle=False)
    _clean(at, "Overview while evaluating")
    assert _metric(at, "Tasks") == str(len(open_zoo(app_zoo).task_names))
    assert any("0 of" in c.value and "sizes ready" in c.value for c in at.caption)
    assert not _figures(at), "no curve before its first size lands"
    gated_evaluations.set()
    assert background().wait_idle(TIMEOUT)
    at.run()
    _clean(at, "Overview after the evaluations landed")
    assert "1.00x" in at.markdown[0].value and "pending" not in at.markdown[0].value
    assert list(_figures(at)) == ["Accuracy vs deployment size"]

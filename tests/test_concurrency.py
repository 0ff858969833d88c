"""Concurrency: two CLI processes on one cache at once, and two dashboard sessions at once.

Both must give the results a lone run gives, and leave no corrupt or half-written cache entry: the
processes race to write the same plan, merged-group and evaluation entries (atomic renames of
identical content), and the sessions share one engine object (st.cache_resource) through its locks.
"""
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from badinputs.integrity import incomplete_cache_entries, temporary_files
from badinputs.zoos import write_template

REPO = Path(__file__).resolve().parents[1]
SIZES = [1.0, 1.5, 2.0, 3.0]


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory):
    return write_template(tmp_path_factory.mktemp("concurrency") / "zoo")


def _reference_rows(zoo_dir, algorithm: str) -> list[dict]:
    """The curve of a lone in-process run that uses no cache at all."""
    from flexmerge_core.algorithms import get_algorithm
    from flexmerge_core.planning.blocks import build_blocks
    from flexmerge_core.evaluation.curve import compute_curve
    from flexmerge_core.planning.plan import build_plan
    from flexmerge_core.zoo import open_zoo

    zoo = open_zoo(zoo_dir)
    spec = build_blocks(zoo.param_names, zoo.param_shapes)
    algo = get_algorithm(algorithm)
    plan = build_plan(zoo, spec, algo)
    return compute_curve(zoo, plan, algo, SIZES, spec=spec, use_cache=False).rows


def _warm_rows(zoo_dir, algorithm: str) -> tuple[list[dict], dict]:
    """The curve read back through every cache the processes wrote (plan, merged groups, evaluations)."""
    from flexmerge_core.algorithms import get_algorithm
    from flexmerge_core.planning.blocks import build_blocks
    from flexmerge_core.evaluation.curve import compute_curve
    from flexmerge_core.planning.plan_cache import cached_plan
    from flexmerge_core.zoo import open_zoo

    zoo = open_zoo(zoo_dir)
    spec = build_blocks(zoo.param_names, zoo.param_shapes)
    algo = get_algorithm(algorithm)
    result = compute_curve(zoo, cached_plan(zoo, spec, algo), algo, SIZES, spec=spec)
    return result.rows, result.stats


@pytest.mark.slow
def test_two_cli_processes_on_one_cache_agree_with_a_lone_run(zoo_dir, tmp_path, monkeypatch):
    shared = tmp_path / "shared-cache"
    argv = [sys.executable, "-m", "flexmerge_core", "curve", "--zoo", str(zoo_dir), "--algorithm", "ties",
            "--sizes", ",".join(f"{s:g}" for s in SIZES), "--json"]
    processes = [subprocess.Popen(argv, cwd=REPO, env={**os.environ, "FLEXMERGE_CACHE": str(shared)},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    monkeypatch.setenv("FLEXMERGE_CACHE", str(tmp_path / "reference-cache"))
    reference = _reference_rows(zoo_dir, "ties")             # computed while the two processes run
    outputs = [p.communicate(timeout=400) for p in processes]
    for process, (stdout, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-2000:]
        assert json.loads(stdout)["rows"] == reference
    assert incomplete_cache_entries(shared) == [] and temporary_files(shared) == []
    assert {p.name for p in shared.iterdir()} >= {"plans", "groups", "eval"}
    monkeypatch.setenv("FLEXMERGE_CACHE", str(shared))
    warm, stats = _warm_rows(zoo_dir, "ties")
    assert warm == reference and stats["evaluated"] == 0     # every entry they wrote is used, and right


@pytest.mark.slow
def test_two_app_sessions_at_once_each_see_their_own_size(zoo_dir, tmp_path, monkeypatch):
    """Two Explore sessions (as two browser tabs on one server) move their sliders at the same time."""
    from streamlit.testing.v1 import AppTest

    from dashboard.background import background
    from flexmerge_core.studio import PlanChoice, Studio
    from flexmerge_core.zoo import open_zoo

    monkeypatch.setenv("FLEXMERGE_CACHE", str(tmp_path / "cache"))
    budgets = {"first": 1.0, "second": 2.5}
    sessions, failures = {}, []

    def session(name: str) -> None:
        try:
            at = AppTest.from_file(str(REPO / "pages" / "1_Explore.py"), default_timeout=300)
            at.query_params["zoo"] = str(zoo_dir)
            at.run()
            at.slider(key="explore_size").set_value(budgets[name]).run()
            assert background().wait_idle(300), "background evaluations did not finish"
            sessions[name] = at.run()   # the accuracies evaluated in the background, now shown
        except Exception as exc:  # reported below: a thread's exception would otherwise vanish
            failures.append(f"{name}: {exc!r}")

    threads = [threading.Thread(target=session, args=(name,)) for name in budgets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    explorer = Studio(open_zoo(zoo_dir)).explorer(PlanChoice())
    for name, budget in budgets.items():
        at = sessions[name]
        assert not at.exception and not at.error, (name, at.exception, at.error)
        metrics = {m.label: m.value for m in at.metric}
        assert metrics["Budget asked"] == f"{budget:.2f}x"
        assert metrics["Size achieved"] == f"{explorer.partition(budget).size:.3f}x"
        assert metrics["Average accuracy"] == f"{100 * explorer.row_at(budget)['avg_accuracy']:.2f}%"
    assert incomplete_cache_entries(tmp_path / "cache") == []


def test_folder_published_by_another_process_mid_rename_is_replaced_not_a_crash(tmp_path, monkeypatch):
    """Two processes building the demo zoo at once: the other one publishes the folder just before our
    rename. Ours must still land complete (no check-then-rename race ending in a raw OSError)."""
    import flexmerge_core.cache as cache

    final = tmp_path / "demo-zoo"
    real_replace = os.replace
    published = []

    def other_process_publishes_first(src, dst):
        if Path(dst) == final and not published:
            published.append(dst)
            final.mkdir()
            (final / "zoo.json").write_text("theirs")
        return real_replace(src, dst)

    monkeypatch.setattr(cache.os, "replace", other_process_publishes_first)
    cache.atomic_directory(final, lambda folder: (folder / "zoo.json").write_text("ours"))
    assert (final / "zoo.json").read_text() == "ours"
    assert [p.name for p in tmp_path.iterdir()] == ["demo-zoo"]       # no temp or old folder left behind

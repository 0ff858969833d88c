"""Sweeps: the same table as the serial curves whatever runs the jobs; resumable; safe to run twice at once.

The reference is built here from Pipeline.curve (the serial, incremental walk) with no cache at all.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from badinputs.integrity import incomplete_cache_entries, temporary_files
from deploy_zoos import HELDOUT, evaluable_zoo
from flexmerge_core.backend.executors import InlineExecutor, LocalExecutor
from flexmerge_core.pipeline import Pipeline, PlanSettings
from flexmerge_core.sweep import COLUMNS, run_sweep
from flexmerge_core.zoo import open_zoo

REPO = Path(__file__).resolve().parents[1]
ALGORITHMS = ["ta", "ties"]
BASELINES = ["whole-model"]


@pytest.fixture(scope="module")
def zoo_path(tmp_path_factory):
    zoo, *_ = evaluable_zoo(tmp_path_factory.mktemp("sweep") / "zoo", num_tasks=4, seed=3)
    return zoo.root


@pytest.fixture(scope="module")
def reference(zoo_path, tmp_path_factory):
    """The tidy table of the serial curves of every algorithm and baseline (one torch thread, no cache)."""
    saved_cache, saved_threads = os.environ["FLEXMERGE_CACHE"], torch.get_num_threads()
    os.environ["FLEXMERGE_CACHE"] = str(tmp_path_factory.mktemp("reference-cache"))
    torch.set_num_threads(1)
    try:
        zoo, rows = open_zoo(zoo_path), []
        for baseline in [None] + BASELINES:
            for algorithm in ALGORITHMS:
                pipeline = Pipeline(zoo, PlanSettings(algorithm=algorithm, baseline=baseline))
                hyperparameters = json.dumps(pipeline.algorithm.hyperparameters, sort_keys=True)
                for row in pipeline.curve("all", use_cache=False).rows:
                    rows += [[algorithm, hyperparameters, baseline, row["size_budget"], row["size"], task, "accuracy",
                              value, HELDOUT] for task, value in row["accuracy"].items()]
                    assert set(row["metric"].values()) == {"accuracy"} and set(row["n"].values()) == {HELDOUT}
    finally:
        os.environ["FLEXMERGE_CACHE"] = saved_cache
        torch.set_num_threads(saved_threads)
    return pd.DataFrame(rows, columns=COLUMNS)


def assert_same_table(table, reference):
    pd.testing.assert_frame_equal(table.reset_index(drop=True), reference, check_exact=True)


def test_in_process_and_local_workers_give_the_serial_table(zoo_path, reference, tmp_path, monkeypatch):
    monkeypatch.setenv("FLEXMERGE_CACHE", str(tmp_path / "inline-cache"))
    out = tmp_path / "inline.parquet"
    result = run_sweep(str(zoo_path), ALGORITHMS, "all", BASELINES, executor=InlineExecutor(), out=out)
    assert_same_table(result.table, reference)
    assert_same_table(pd.read_parquet(out), reference)            # pandas reads the file as it is
    assert not Path(f"{out}.parts").exists()

    monkeypatch.setenv("FLEXMERGE_CACHE", str(tmp_path / "local-cache"))
    with LocalExecutor(workers=2) as executor:
        local = run_sweep(str(zoo_path), ALGORITHMS, "all", BASELINES, executor=executor)
    assert_same_table(local.table, reference)
    assert local.stats["executor"] == "local" and local.stats["jobs_computed"] > 0


def _sweep_argv(zoo_path, out, *extra):
    return [sys.executable, "-m", "flexmerge_core", "sweep", "--zoo", str(zoo_path), "--algorithms", ",".join(ALGORITHMS),
            "--baselines", ",".join(BASELINES), "--out", str(out), *extra]


def _env(cache, log):
    return {**os.environ, "FLEXMERGE_CACHE": str(cache), "FLEXMERGE_JOB_LOG": str(log)}


def _logged_keys(log: Path) -> list[str]:
    return [line.split()[0] for line in log.read_text().splitlines()] if log.exists() else []


def test_a_killed_sweep_rerun_computes_only_the_missing_cells(zoo_path, reference, tmp_path):
    out, cache, log = tmp_path / "results.parquet", tmp_path / "cache", tmp_path / "jobs.log"
    parts = Path(f"{out}.parts")
    first = subprocess.Popen(_sweep_argv(zoo_path, out, "--workers", "0"), cwd=REPO, env=_env(cache, log),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while first.poll() is None and len(list(parts.glob("*.json"))) < 3:
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    assert first.wait() == -signal.SIGKILL, "the sweep finished before it could be killed"
    done_before = len(list(parts.glob("*.json")))
    computed_before = len(_logged_keys(log))

    rerun = subprocess.run(_sweep_argv(zoo_path, out, "--workers", "0", "--json"), cwd=REPO, env=_env(cache, log),
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    stats = json.loads(rerun.stdout)
    assert 3 <= stats["resumed"] == done_before < stats["cells"]
    keys = _logged_keys(log)
    assert len(keys) - computed_before == stats["jobs_computed"] > 0     # the rerun computed what it says
    assert len(keys) == len(set(keys))                                  # and nothing the killed run had finished
    assert_same_table(pd.read_parquet(out), reference)
    assert not parts.exists() and incomplete_cache_entries(cache) == []


def test_two_sweeps_at_once_on_one_cache_share_the_work(zoo_path, reference, tmp_path):
    cache, log = tmp_path / "cache", tmp_path / "jobs.log"
    runs = [subprocess.Popen(_sweep_argv(zoo_path, tmp_path / f"run{i}.parquet", "--workers", "0", "--json"), cwd=REPO,
                             env=_env(cache, log), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(2)]
    outputs = [run.communicate(timeout=600) for run in runs]
    for run, (stdout, stderr) in zip(runs, outputs):
        assert run.returncode == 0, stderr[-2000:]
    for i in range(2):
        assert_same_table(pd.read_parquet(tmp_path / f"run{i}.parquet"), reference)
    keys = _logged_keys(log)
    assert len(keys) == len(set(keys))                                  # no job computed twice
    assert len(keys) == sum(json.loads(stdout)["jobs_computed"] for stdout, _ in outputs)
    assert incomplete_cache_entries(cache) == [] and temporary_files(cache) == []


@pytest.mark.parametrize("argv, message", [
    (["--algorithms", "nope"], "nope"),
    (["--algorithms", "ta", "--baselines", "cousins"], "--baselines: unknown baseline 'cousins'"),
    (["--algorithms", "ta", "--workers", "-1"], "--workers"),
    (["--algorithms", "ta", "--sizes", "1,x"], "--sizes"),
])
def test_cli_sweep_refuses_bad_input_with_one_line(zoo_path, tmp_path, capsys, argv, message):
    from flexmerge_core.cli import main

    assert main(["sweep", "--zoo", str(zoo_path), "--out", str(tmp_path / "t.parquet"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def _start_ray(**options):
    """ray.init, or skip with the reason when Ray cannot start in this sandbox."""
    ray = pytest.importorskip("ray")
    try:
        ray.init(include_dashboard=False, log_to_driver=False, **options)
    except Exception as exc:  # any start-up failure means: no Ray here
        pytest.skip(f"Ray cannot start here: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
    return ray


@pytest.mark.slow
def test_local_ray_gives_the_serial_table_even_when_a_worker_is_killed(zoo_path, reference, tmp_path, monkeypatch):
    from flexmerge_core.backend.ray_executor import RayExecutor

    monkeypatch.setenv("FLEXMERGE_CACHE", str(tmp_path / "cache"))
    ray = _start_ray(num_cpus=2)
    killed = []

    def kill_the_first_worker(outcome):
        if outcome.computed and not killed and outcome.pid != os.getpid():
            os.kill(outcome.pid, signal.SIGKILL)      # Ray replaces the worker and retries what it ran
            killed.append(outcome.pid)

    try:
        executor = RayExecutor("auto")
        result = run_sweep(str(zoo_path), ALGORITHMS, "all", BASELINES, executor=executor,
                           on_outcome=kill_the_first_worker)
    finally:
        ray.shutdown()
    assert killed
    assert_same_table(result.table, reference)
    assert result.stats["executor"] == "ray" and result.stats["workers"] == 2


@pytest.mark.slow
def test_a_two_node_ray_cluster_runs_jobs_on_both_nodes(zoo_path, reference, tmp_path, monkeypatch):
    pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    from flexmerge_core.backend.ray_executor import RayExecutor

    monkeypatch.setenv("FLEXMERGE_CACHE", str(tmp_path / "cache"))
    try:
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
        cluster.add_node(num_cpus=1)
    except Exception as exc:  # any start-up failure means: no Ray cluster here
        pytest.skip(f"a Ray cluster cannot start here: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
    ray = _start_ray(address=cluster.address)
    try:
        nodes = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
        result = run_sweep(str(zoo_path), ALGORITHMS, "all", BASELINES, executor=RayExecutor("auto"))
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert len(nodes) == 2 and set(result.stats["nodes"]) == nodes
    assert_same_table(result.table, reference)

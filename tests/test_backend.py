"""Jobs and executors: stored results return at once, a job runs once per key, in a process and across processes."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backend_jobs import failing, marked
from flexmerge_core.backend.claims import claim
from flexmerge_core.backend.executors import InlineExecutor, LocalExecutor, make_executor
from flexmerge_core.backend.jobs import JOB_LOG_ENV, Job, job_store
from flexmerge_core.errors import InvalidArgumentError

TESTS = Path(__file__).resolve().parent
pytestmark = pytest.mark.usefixtures("private_cache")


def runs(marker: Path) -> list[str]:
    return marker.read_text().split() if marker.exists() else []


def test_a_job_runs_once_then_its_stored_result_returns_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv(JOB_LOG_ENV, str(tmp_path / "log"))
    marker = tmp_path / "marker"
    job = Job("k1", marked, (str(marker), 7), label="square 7")
    with InlineExecutor() as executor:
        first = executor.submit(job)
        assert executor.submit(job) is first                      # the twin gets the same future
    assert first.result().result == {"value": 49} and first.result().computed
    assert runs(marker) == [str(os.getpid())]
    assert job_store().get("k1") == {"value": 49}

    again = InlineExecutor().submit(Job("k1", marked, (str(marker), 7)))   # a later session
    assert again.done() and again.result().result == {"value": 49} and not again.result().computed
    assert runs(marker) == [str(os.getpid())]
    assert (tmp_path / "log").read_text() == "k1 square 7\n"


def test_a_failed_job_is_reported_stores_nothing_and_may_be_submitted_again(tmp_path):
    marker = tmp_path / "marker"
    executor = InlineExecutor()
    job = Job("bad", failing, (str(marker),))
    with pytest.raises(RuntimeError, match="this job fails"):
        executor.submit(job).result()
    with pytest.raises(RuntimeError, match="this job fails"):
        executor.submit(job).result()
    assert runs(marker) == ["failed", "failed"] and job_store().get("bad") is None


def test_local_workers_run_jobs_in_other_processes_once_per_key(tmp_path):
    marker = tmp_path / "marker"
    with LocalExecutor(workers=2) as executor:
        futures = [executor.submit(Job(f"sq{v % 3}", marked, (str(marker), v % 3))) for v in range(6)]
        outcomes = [f.result() for f in futures]
    assert [o.result["value"] for o in outcomes] == [0, 1, 4, 0, 1, 4]
    pids = runs(marker)
    assert len(pids) == 3 and str(os.getpid()) not in pids        # three keys, three runs, all in workers
    assert {o.pid for o in outcomes} == {int(p) for p in pids}


def _waiters(lock: Path) -> int:
    inode = lock.stat().st_ino
    return sum(1 for line in Path("/proc/locks").read_text().splitlines()
               if "->" in line and line.split()[-3].endswith(f":{inode}"))


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs /proc/locks to see processes wait on a claim")
def test_two_processes_running_the_same_job_compute_it_once(tmp_path, private_cache):
    """Both processes start while the claim is held, so both wait on it; when it is released one
    computes and the other reads the stored result."""
    marker = tmp_path / "marker"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)]),
           "FLEXMERGE_CACHE": str(private_cache)}
    with claim("shared"):
        processes = [subprocess.Popen([sys.executable, str(TESTS / "backend_jobs.py"), "shared", str(marker), "5"],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for _ in range(2)]
        lock = private_cache / "claims" / "shared.lock"
        while _waiters(lock) < 2 and all(p.poll() is None for p in processes):
            time.sleep(0.05)
        assert _waiters(lock) == 2
    outputs = [p.communicate(timeout=300) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    assert sorted(out.strip() for out, _ in outputs) == ["False", "True"]
    assert len(runs(marker)) == 1 and job_store().get("shared") == {"value": 25}


def test_make_executor_choices(monkeypatch):
    monkeypatch.delenv("FLEXMERGE_RAY_ADDRESS", raising=False)
    assert isinstance(make_executor(workers=0), InlineExecutor)
    with pytest.raises(InvalidArgumentError, match="--workers"):
        make_executor(workers=-1)


def test_local_workers_do_not_rerun_the_parents_main_script(tmp_path, app_page_as_main):
    """Under Streamlit, __main__ is the app page: the executor's spawned workers must not execute it again."""
    with LocalExecutor(workers=1) as executor:
        assert executor.submit(Job("page", marked, (str(tmp_path / "marker"), 3))).result().result == {"value": 9}
    assert not app_page_as_main.exists()

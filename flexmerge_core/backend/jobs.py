"""Jobs: units of engine work keyed by the content hash of everything their result depends on.

Why keys: equal keys mean equal results. So a job whose result is stored returns at once, the same job
submitted twice in one process runs once (executors.Executor keeps one future per key), and two
processes sharing a cache folder do not both run it (claims.py). Results are JSON, stored checksummed
and atomically under <cache>/jobs next to the entries the work itself fills (plans, merged groups,
evaluations), so the CLI, the app and later runs share all of them.
$FLEXMERGE_JOB_LOG, when set, names a file to which every job that really runs (not read from the
store) appends its key and label: an audit of what was computed, used by the tests to count work.
"""
from __future__ import annotations

import json
import os
import socket
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from flexmerge_core.backend.claims import claim
from flexmerge_core.cache import JsonCache, cache_root

JOB_LOG_ENV = "FLEXMERGE_JOB_LOG"


@dataclass(frozen=True)
class Job:
    """fn(*args) -> a JSON-serialisable, non-None result; fn is a module-level function (workers
    import it by name). gpu: the job runs a model, so executors with GPUs give it one."""

    key: str
    fn: Callable[..., Any]
    args: tuple = ()
    label: str = ""
    gpu: bool = False


@dataclass(frozen=True)
class Outcome:
    """A job's result and where it came from (computed now, or read from the store)."""

    key: str
    result: Any
    computed: bool
    pid: int = field(default_factory=os.getpid)
    node: str = ""


def job_store() -> JsonCache:
    return JsonCache(cache_root() / "jobs")


def node_id() -> str:
    """The Ray node id inside a Ray worker, else the host name."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return ray.get_runtime_context().get_node_id()
    return socket.gethostname()


def stored(job: Job) -> Optional[Outcome]:
    found = job_store().get(job.key)
    return None if found is None else Outcome(job.key, found, computed=False, node=node_id())


def execute(job: Job) -> Outcome:
    """Run `job` unless its result is stored; the claim makes a concurrent twin wait, then read it."""
    found = stored(job)
    if found is not None:
        return found
    with claim(job.key):
        found = stored(job)   # a twin in another process may have finished while this one waited
        if found is not None:
            return found
        result = json.loads(json.dumps(job.fn(*job.args)))   # what the store gives back later, exactly
        job_store().put(job.key, result)
        _log(job)
    return Outcome(job.key, result, computed=True, node=node_id())


def _log(job: Job) -> None:
    path = os.environ.get(JOB_LOG_ENV)
    if path:
        with open(path, "a") as log:   # one short line per write: appends of concurrent processes do not interleave
            log.write(f"{job.key} {job.label}\n")

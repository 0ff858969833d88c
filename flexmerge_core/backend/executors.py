"""Executors: submit(job) -> Future[Outcome]; where the work runs is the executor's only business.

Every executor answers a job whose result is stored at once, without dispatching it, and keeps one
future per key, so a job submitted twice runs once (a failed or cancelled one may be submitted again).
- InlineExecutor: in this process, one job after the other (`--workers 0`).
- LocalExecutor (the default): spawned worker processes, one torch thread each (worker_setup.py);
  workers use CUDA when the machine has it, as the serial engine does.
- RayExecutor (ray_executor.py): a local Ray instance or a cluster.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from typing import Optional

from flexmerge_core.backend.jobs import Job, execute, stored
from flexmerge_core.backend.worker_setup import bare_main, single_thread, usable_cores, use_single_thread
from flexmerge_core.cache import cache_root
from flexmerge_core.errors import InvalidArgumentError

RAY_ADDRESS_ENV = "FLEXMERGE_RAY_ADDRESS"


class Executor:
    """The shared part: the stored-result shortcut and one future per job key."""

    name = "executor"
    workers = 1

    def __init__(self):
        self._futures: dict[str, Future] = {}
        self._lock = threading.Lock()

    def submit(self, job: Job) -> Future:
        with self._lock:
            known = self._futures.get(job.key)
            if known is not None:
                return known
            future: Future = Future()
            found = stored(job)
            if found is not None:
                future.set_result(found)
                return future
            self._futures[job.key] = future
        future.add_done_callback(lambda done: self._forget_failed(job.key, done))
        self._start(job, future)
        return future

    def cancel(self, key: str) -> bool:
        """Cancel a job that has not started; True when it will not run."""
        with self._lock:
            future = self._futures.get(key)
        return future is not None and self._cancel(key, future)

    def _cancel(self, key: str, future: Future) -> bool:
        return future.cancel()

    def _forget_failed(self, key: str, future: Future) -> None:
        if future.cancelled() or future.exception() is not None:
            with self._lock:
                if self._futures.get(key) is future:
                    del self._futures[key]

    def _start(self, job: Job, future: Future) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release workers; jobs not yet started are cancelled."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _settle(future: Future, run) -> None:
    """Resolve `future` with run()'s outcome or exception (unless it was cancelled meanwhile)."""
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(run())
    except BaseException as exc:  # handed to the caller through the future
        future.set_exception(exc)


def chain(source: Future, target: Future) -> None:
    """Resolve `target` (not yet running) with what `source` ends with."""
    def copy(done: Future) -> None:
        if done.cancelled():
            target.cancel()
        else:
            _settle(target, done.result)
    source.add_done_callback(copy)


class InlineExecutor(Executor):
    """Runs each job in this process, at submit time, under the workers' settings (same bits)."""

    name = "in-process"

    def _start(self, job: Job, future: Future) -> None:
        with single_thread():
            _settle(future, lambda: execute(job))


def _init_worker(environment: dict) -> None:
    os.environ.update(environment)
    use_single_thread()


def worker_environment() -> dict:
    """What a worker must share with the submitting process: the cache folder and the memo budget."""
    from flexmerge_core.deployment.memo import MEMO_ENV

    keep = ("FLEXMERGE_CACHE", MEMO_ENV, "FLEXMERGE_JOB_LOG", "FLEXMERGE_MEMORY_LIMIT")
    environment = {name: os.environ[name] for name in keep if name in os.environ}
    environment["FLEXMERGE_CACHE"] = str(cache_root().resolve())
    return environment


class LocalExecutor(Executor):
    """Spawned worker processes of this machine (default: one per usable core)."""

    name = "local"

    def __init__(self, workers: Optional[int] = None):
        super().__init__()
        self.workers = workers or usable_cores()
        self._pool = ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"), initializer=_init_worker,
                                         initargs=(worker_environment(),))
        self._inner: dict[str, Future] = {}

    def _start(self, job: Job, future: Future) -> None:
        with bare_main():   # workers start lazily, inside submit
            inner = self._pool.submit(execute, job)
        self._inner[job.key] = inner
        chain(inner, future)

    def _cancel(self, key: str, future: Future) -> bool:
        inner = self._inner.get(key)
        return inner is not None and inner.cancel()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def make_executor(ray_address: Optional[str] = None, workers: Optional[int] = None) -> Executor:
    """Ray when an address is given (or $FLEXMERGE_RAY_ADDRESS is set), else local workers; workers=0:
    this process."""
    ray_address = ray_address or os.environ.get(RAY_ADDRESS_ENV) or None
    if workers is not None and workers < 0:
        raise InvalidArgumentError(f"--workers must be 0 (this process) or more, got {workers}")
    if ray_address:
        from flexmerge_core.backend.ray_executor import RayExecutor

        return RayExecutor(ray_address, workers=workers or None)
    if workers == 0:
        return InlineExecutor()
    return LocalExecutor(workers)


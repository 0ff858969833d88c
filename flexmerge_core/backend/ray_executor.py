"""Jobs on Ray: a local instance (`auto`) or a cluster (`ray://host:10001`), same jobs, same results.

Why Ray: the sweep's jobs are independent once plans exist, so they spread over every core and GPU of a
cluster. Workers import the engine from the PYTHONPATH handed to them (the repository root), never the
submitting script or an app page; they open the zoo by its path and write the shared cache folder, so
both must be paths every node sees (a shared file system). A worker that dies (killed, out of memory)
is replaced and its job retried (`retries` times), and a retried job gives the same result.
Jobs that run a model ask for one GPU when the cluster has GPUs.
"""
from __future__ import annotations

import os
from concurrent.futures import Future
from pathlib import Path
from typing import Optional

from flexmerge_core.backend.executors import Executor, chain, worker_environment
from flexmerge_core.backend.jobs import Job, execute
from flexmerge_core.backend.worker_setup import use_single_thread
from flexmerge_core.errors import InvalidArgumentError

REPO_ROOT = Path(__file__).resolve().parents[2]
RETRIES = 3


def _run_on_ray(job: Job):
    use_single_thread()
    return execute(job)


class RayExecutor(Executor):
    """address: 'auto' (the instance RAY_ADDRESS names, else a new local one with `workers` CPUs),
    or a cluster address such as ray://head:10001. An already connected Ray session is used as it is."""

    name = "ray"

    def __init__(self, address: str = "auto", workers: Optional[int] = None, retries: int = RETRIES):
        super().__init__()
        try:
            import ray
        except ImportError as exc:
            raise InvalidArgumentError("--ray-address needs the 'ray' package (pip install ray)") from exc
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            options = {"num_cpus": workers} if address == "auto" and workers else {}
            try:
                ray.init(address=None if address == "auto" else address, include_dashboard=False,
                         log_to_driver=False, **options)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise InvalidArgumentError(f"--ray-address {address}: cannot connect to Ray "
                                           f"({' '.join(str(exc).split())[:200]})") from exc
            self._started = True
        resources = ray.cluster_resources()
        self.workers = int(resources.get("CPU", 1))
        self.gpus = int(resources.get("GPU", 0))
        pythonpath = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
        environment = {**worker_environment(), "PYTHONPATH": pythonpath, "OMP_WAIT_POLICY": "PASSIVE"}
        self._remote = ray.remote(_run_on_ray)
        self._options = {"num_cpus": 1, "max_retries": retries, "retry_exceptions": False,
                         "runtime_env": {"env_vars": environment}}
        self._refs: dict[str, object] = {}

    def _start(self, job: Job, future: Future) -> None:
        gpus = {"num_gpus": 1} if job.gpu and self.gpus else {}
        ref = self._remote.options(**self._options, **gpus).remote(job)
        self._refs[job.key] = ref
        chain(ref.future(), future)

    def _cancel(self, key: str, future: Future) -> bool:
        ref = self._refs.get(key)
        if ref is None:
            return False
        self._ray.cancel(ref)
        return True

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()

"""Runs the demo build's jobs on worker processes, one torch thread each.

Why processes: the demo model is so small that two torch threads on one model barely overlap (measured:
2 threads were slower than 1 with sleeping OpenMP workers), while two processes each training their own
model keep both cores busy. One thread per job also makes every job compute the same bits wherever it
runs, so the zoo does not depend on the machine's core count. Pretraining is one model, so it is split
data-parallel over `pretrain_shards` processes that sum their gradients with torch.distributed (gloo,
rendezvous through a file in a temporary folder: no network port is chosen or opened to the outside).
With one worker everything runs in this process, one job after the other, with the same results.
"""
from __future__ import annotations

import datetime
import os
import tempfile
import warnings
from concurrent.futures import Future, ProcessPoolExecutor, wait
from multiprocessing import get_context
from typing import Callable, Optional

import torch

from flexmerge_core.backend.worker_setup import bare_main, single_thread, usable_cores, use_single_thread
from flexmerge_core.errors import InvalidArgumentError
from flexmerge_core.demo import vision_training

MAX_WORKERS = 8
# A shard whose partner died fails after this instead of hanging (partners start within seconds of each
# other, and one all-reduce waits for one step of the partner: well under a second here).
RENDEZVOUS_TIMEOUT = datetime.timedelta(minutes=2)


def default_workers() -> int:
    """FLEXMERGE_DEMO_WORKERS when set (1: build in this process), else one worker per usable core,
    at most MAX_WORKERS."""
    chosen = os.environ.get("FLEXMERGE_DEMO_WORKERS", "").strip()
    if chosen:
        if not chosen.isdigit() or int(chosen) < 1:
            raise InvalidArgumentError(f"FLEXMERGE_DEMO_WORKERS={chosen!r}: expected a whole number >= 1")
        return int(chosen)
    return min(usable_cores(), MAX_WORKERS)


def _pretrain_shard(config, seed: int, data, shard: int, store: str):
    """One data-parallel pretraining process: its slice of every batch, gradients summed over all."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=shard, world_size=config.pretrain_shards,
                            timeout=RENDEZVOUS_TIMEOUT)
    try:
        def sync(grads: list[torch.Tensor]) -> list[torch.Tensor]:
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            return [part.view_as(g) for part, g in zip(flat.split([g.numel() for g in grads]), grads)]

        return vision_training.pretrain(config, seed, data, shard, sync)
    finally:
        dist.destroy_process_group()


def rendezvous_store(folder: str) -> str:
    """The file through which the pretraining shards find each other."""
    return os.path.join(folder, "store")


class BuildPool:
    """Submit jobs (module-level functions and picklable arguments); a worker count of 1 runs them here."""

    def __init__(self, workers: Optional[int] = None):
        self.workers = workers or default_workers()
        self._pool = None
        if self.workers > 1:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"), initializer=use_single_thread)

    def __enter__(self) -> "BuildPool":
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, fn: Callable, *args) -> Future:
        if self._pool is not None:
            with bare_main():  # workers start lazily, inside submit
                return self._pool.submit(fn, *args)
        done: Future = Future()
        with single_thread():
            done.set_result(fn(*args))
        return done

    def pretrain(self, config, seed: int, data) -> tuple[dict[str, torch.Tensor], float]:
        """Pretraining, data-parallel over `config.pretrain_shards` workers when there are enough. When
        the shards cannot talk (a sandbox without loopback sockets, say), it warns and pretrains in this
        process instead: slower, same bits."""
        if self._pool is not None and self.workers >= config.pretrain_shards:
            with tempfile.TemporaryDirectory(prefix="flexmerge-rendezvous-") as folder:
                store = rendezvous_store(folder)
                shards = [self.submit(_pretrain_shard, config, seed, data, k, store)
                          for k in range(config.pretrain_shards)]
                wait(shards)  # the store's folder must outlive every shard, failed ones included
            failure = next((f.exception() for f in shards if f.exception() is not None), None)
            if failure is None:
                return shards[0].result()
            warnings.warn(f"data-parallel pretraining failed ({type(failure).__name__}: "
                          f"{' '.join(str(failure).split())[:200]}); pretraining in one process instead", stacklevel=2)
        with single_thread():
            return vision_training.pretrain(config, seed, data)

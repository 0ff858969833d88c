"""Sweep wall time on the demo zoo: serial in-process curves vs the local executor vs local Ray.

Work: 4 algorithms x every achievable size, every task. Each mode gets its own empty cache folder, so
each computes everything (plans, merged groups, evaluations); the zoo itself is opened once from the
usual cache. Serial = Pipeline.curve per algorithm (the incremental walk: neighbouring sizes reuse
stage inputs); the executors run one job per (algorithm, size) cell, each evaluating every task from
the first stage. Ray's start-up (ray.init) is timed on its own and left out of its sweep time.
Per-job cost = wall x workers / jobs: what one job costs one worker, overheads included.
Measured (2 shared cores, load 5-11; 513 cells): serial 255 s (0.50 s per cell), local executor 450 s
(1.75 s per job per worker), Ray 367 s (1.43 s) + 7.7 s ray.init: a cell job evaluates every task from
the first stage, the serial walk only the tasks a merge event changed, so per-cell jobs pay off only
with more workers than that ~3x.
Usage: .venv/bin/python benchmarks/bench_sweep.py [--zoo demo] [--workers 2] [--algorithms ta,ties,pcb,emr]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from flexmerge_core.backend.executors import LocalExecutor  # noqa: E402
from flexmerge_core.pipeline import Pipeline, PlanSettings, resolve_zoo  # noqa: E402
from flexmerge_core.sweep import run_sweep  # noqa: E402


def in_fresh_cache(run):
    """run() with FLEXMERGE_CACHE pointing at a new empty folder; (seconds, result)."""
    saved = os.environ.get("FLEXMERGE_CACHE")
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as folder:
        os.environ["FLEXMERGE_CACHE"] = folder
        try:
            start = time.perf_counter()
            result = run()
            return time.perf_counter() - start, result
        finally:
            if saved is None:
                os.environ.pop("FLEXMERGE_CACHE")
            else:
                os.environ["FLEXMERGE_CACHE"] = saved


def serial(zoo, algorithms) -> int:
    """Every algorithm's curve in this process; returns the number of cells."""
    return sum(len(Pipeline(zoo, PlanSettings(algorithm=a), deploy_size="all").curve("all").rows) for a in algorithms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", default="demo")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--algorithms", default="ta,ties,pcb,emr")
    args = parser.parse_args()
    algorithms = args.algorithms.split(",")
    zoo = resolve_zoo(args.zoo)
    print(f"zoo {zoo.name}: {len(zoo.task_names)} tasks; algorithms {', '.join(algorithms)}; {args.workers} workers")

    seconds, cells = in_fresh_cache(lambda: serial(zoo, algorithms))
    print(f"serial in-process curves : {seconds:7.1f} s  ({cells} cells, {seconds / cells * 1000:.0f} ms per cell)")
    figures = {"serial": seconds}

    def local():
        with LocalExecutor(args.workers) as executor:
            return run_sweep(zoo, algorithms, executor=executor)

    seconds, result = in_fresh_cache(local)
    jobs = result.stats["jobs_computed"]
    print(f"local executor           : {seconds:7.1f} s  ({jobs} jobs, {seconds * args.workers / jobs * 1000:.0f} ms "
          f"per job per worker; worker start-up included)")
    figures["local"], local_table = seconds, result.table

    import ray

    from flexmerge_core.backend.ray_executor import RayExecutor

    start = time.perf_counter()
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    startup = time.perf_counter() - start
    try:
        seconds, result = in_fresh_cache(lambda: run_sweep(zoo, algorithms, executor=RayExecutor("auto")))
    finally:
        ray.shutdown()
    print(f"local Ray                : {seconds:7.1f} s  ({jobs} jobs, {seconds * args.workers / jobs * 1000:.0f} ms "
          f"per job per worker)  same table as local: {result.table.equals(local_table)}; ray.init took {startup:.1f} s more")
    figures["ray"] = seconds
    print(f"ratios to serial: local {figures['local'] / figures['serial']:.2f}, "
          f"Ray {figures['ray'] / figures['serial']:.2f} (Ray with start-up {(figures['ray'] + startup) / figures['serial']:.2f})")


if __name__ == "__main__":
    main()

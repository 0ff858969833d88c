"""Benchmark: how long the demo zoo takes to build, and what the worker processes buy.

Two measurements in one run, side by side on the same machine:
1. the FULL recipe, built from scratch into a temporary folder with the default workers (one per core),
   against the goal of < 240 s on 2 cores; its report (fine-tuned, 1x/2x gaps, cosine ratio) is printed;
2. a scaled-down recipe (same tasks and model, an eighth of the steps and images) built in this process
   (workers=1) and with the default workers: the ratio in-process / workers is the parallel speed-up
   (the two builds give identical tensors, see tests/test_demo_zoo.py).
The machine's load is printed with each, since a loaded machine stretches every number.

Usage: .venv/bin/python benchmarks/bench_demo_build.py [--skip-full] [--seed 0]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from flexmerge_core.zoo import demo  # noqa: E402
from flexmerge_core.demo.workers import default_workers  # noqa: E402


def scaled_down(config: demo.DemoConfig, factor: int) -> demo.DemoConfig:
    return replace(config, pretrain_images=config.pretrain_images // factor,
                   pretrain_steps=config.pretrain_steps // factor, train_images=config.train_images // factor,
                   heldout_images=config.heldout_images // factor, probe_steps=config.probe_steps // factor,
                   finetune_steps=config.finetune_steps // factor)


def timed_training(config: demo.DemoConfig, seed: int, workers: int) -> float:
    start = time.perf_counter()
    demo.train_demo_models(config, seed, workers=workers)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-full", action="store_true", help="only the scaled-down comparison")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    workers = default_workers()
    print(f"cores usable: {len(os.sched_getaffinity(0))}, default workers: {workers}")
    if not args.skip_full:
        with tempfile.TemporaryDirectory(prefix="bench-demo-") as folder:
            load = os.getloadavg()[0]
            start = time.perf_counter()
            out = demo.build_demo_zoo(Path(folder) / "zoo", seed=args.seed, force=True)
            seconds = time.perf_counter() - start
            from flexmerge_core.zoo import open_zoo

            report = open_zoo(out).recipe["report"]
        print(f"FULL build: {seconds:.1f} s wall (goal < 240 s on 2 cores; load {load:.1f} at start)")
        for key in ("finetuned_avg_accuracy", "ta_1x_gap", "ta_2x_gap", "cosine_ratio", "targets_met"):
            print(f"  {key}: {report[key]}")
    small = scaled_down(demo.FULL, 8)
    load = os.getloadavg()[0]
    alone = timed_training(small, args.seed, workers=1)
    spread = timed_training(small, args.seed, workers=workers)
    print(f"scaled-down training (1/8 of FULL, load {load:.1f}): in-process {alone:.1f} s, "
          f"{workers} workers {spread:.1f} s, speed-up {alone / spread:.2f}x")


if __name__ == "__main__":
    main()

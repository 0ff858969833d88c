"""Curve and inference timings on the demo zoo with task arithmetic, measured side by side in one run.

1. Whole-spectrum curve (every achievable size): incremental evaluation (only tasks whose routing
   changed, restarting from the first changed encoder stage) vs every task at every size from
   scratch. Both merge with a fresh in-memory merger and no disk cache. Goal: ratio <= 0.3.
2. Per-task inference throughput (held-out images/s through `functional_call` with the task's view
   state dict) of the 4x deployment vs the 1x deployment, interleaved repeats. Goal: within 5%.
Runs on CUDA when available, else CPU. Usage:
    .venv/bin/python benchmarks/bench_curve.py [--zoo demo] [--threads N] [--repeats 5] [--scratch-sample K]
On a slow CPU the from-scratch baseline takes (sizes x tasks) full evaluations; --scratch-sample K times
K evenly spaced sizes and scales by the number of sizes (each from-scratch size costs the same).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from flexmerge_core.deployment.deploy import build_deployment  # noqa: E402
from flexmerge_core.deployment.merge import GroupMerger  # noqa: E402
from flexmerge_core.evaluation.curve import compute_curve  # noqa: E402
from flexmerge_core.pipeline import Pipeline, PlanSettings, resolve_zoo  # noqa: E402
from flexmerge_core.planning.similarity import pick_device  # noqa: E402


def curve_seconds(zoo, spec, plan, algorithm, sizes, incremental: bool) -> tuple[tuple[float, float], object]:
    """((wall seconds, process CPU seconds), result); CPU time is robust to other load on a shared machine."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = compute_curve(zoo, plan, algorithm, sizes, spec=spec, use_cache=False, incremental=incremental,
                           merger=GroupMerger(zoo, spec, algorithm))
    return (time.perf_counter() - wall, time.process_time() - cpu), result


def scratch_seconds(zoo, spec, plan, algorithm, sample: int) -> tuple[tuple[float, float], object, str]:
    """From-scratch time of the whole spectrum; with sample > 0, timed on that many evenly spaced sizes
    and scaled by the number of partitions (every from-scratch partition does the same work)."""
    sizes = sorted(plan.achievable_sizes())
    if sample <= 0 or sample >= len(sizes):
        seconds, result = curve_seconds(zoo, spec, plan, algorithm, "all", incremental=False)
        return seconds, result, "measured"
    picks = sorted({sizes[round(i * (len(sizes) - 1) / (sample - 1))] for i in range(sample)})
    seconds, result = curve_seconds(zoo, spec, plan, algorithm, picks, incremental=False)
    walked = result.stats["partitions"]
    scale = len(sizes) / walked
    return (seconds[0] * scale, seconds[1] * scale), result, f"extrapolated from {walked} of {len(sizes)} sizes"


def throughput(encoder, deployment, data, device) -> tuple[float, float]:
    """Held-out images per second (wall, process CPU) over all tasks, each through its own view state dict."""
    synchronise = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    images = 0
    synchronise()
    start, cpu = time.perf_counter(), time.process_time()
    with torch.no_grad():
        for t, (x, head) in enumerate(data):
            state = {n: v.to(device) for n, v in deployment.encoder_state_dict(t).items()}
            features = torch.func.functional_call(encoder, state, (x,))
            (features @ head["weight"].t() + head["bias"]).argmax(-1)
            images += len(x)
    synchronise()
    return images / (time.perf_counter() - start), images / (time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", default="demo")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scratch-sample", type=int, default=0,
                        help="time from-scratch on this many evenly spaced sizes and scale up (0: all sizes)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pipeline = Pipeline(resolve_zoo(args.zoo), PlanSettings(algorithm="ta"))
    zoo, spec, plan, algorithm = pipeline.zoo, pipeline.spec, pipeline.plan, pipeline.algorithm
    device = pick_device()
    M = len(zoo.task_names)
    print(f"zoo {zoo.name}: {M} tasks, {len(spec.blocks)} blocks, {plan.model_params} parameters, "
          f"{len(plan.achievable_sizes())} achievable sizes; device {device}, {torch.get_num_threads()} CPU threads")

    incremental_s, incremental = curve_seconds(zoo, spec, plan, algorithm, "all", incremental=True)
    scratch_s, scratch, how = scratch_seconds(zoo, spec, plan, algorithm, args.scratch_sample)
    by_size = {row["size"]: row for row in incremental.rows}
    assert all(by_size[row["size"]] == row for row in scratch.rows), "incremental and scratch curves differ"
    print(f"whole-spectrum curve: incremental {incremental_s[0]:.1f} s wall / {incremental_s[1]:.1f} s CPU "
          f"({incremental.stats['evaluated']} task evaluations, {incremental.stats['stages_run']} stage passes); "
          f"from scratch {scratch_s[0]:.1f} s wall / {scratch_s[1]:.1f} s CPU ({how}; "
          f"{scratch.stats['evaluated']} evaluations, {scratch.stats['stages_run']} stage passes timed)")
    print(f"  ratio incremental / scratch = {incremental_s[0] / scratch_s[0]:.3f} wall, "
          f"{incremental_s[1] / scratch_s[1]:.3f} CPU  (goal <= 0.3)")
    print(f"  kept stage inputs at the end: {incremental.stats['activation_bytes'] / 2**20:.1f} MiB")

    encoder = zoo.build_encoder().to(device).eval()
    data = []
    for t in range(M):
        images, _ = zoo.heldout(t)
        data.append((images.to(device), {k: v.to(device) for k, v in zoo.head(t).items()}))
    small = build_deployment(zoo, plan, algorithm, 1.0, spec=spec)
    large = build_deployment(zoo, plan, algorithm, min(4.0, float(M)), spec=spec)
    throughput(encoder, small, data, device)                     # warm-up
    rates = {"1x": [], "4x": []}
    for _ in range(args.repeats):
        rates["1x"].append(throughput(encoder, small, data, device))
        rates["4x"].append(throughput(encoder, large, data, device))
    wall = {k: max(r[0] for r in v) for k, v in rates.items()}
    cpu = {k: max(r[1] for r in v) for k, v in rates.items()}
    print(f"per-task inference (best of {args.repeats}): 1x deployment (size {small.size:.3f}) {wall['1x']:.0f} img/s "
          f"wall, {cpu['1x']:.0f} img/CPU-s; 4x deployment (size {large.size:.3f}) {wall['4x']:.0f} img/s wall, "
          f"{cpu['4x']:.0f} img/CPU-s")
    print(f"  ratio 4x / 1x = {wall['4x'] / wall['1x']:.3f} wall, {cpu['4x'] / cpu['1x']:.3f} CPU  "
          f"(goal within 5%: 0.95 .. 1.05)")


if __name__ == "__main__":
    main()

"""Benchmark: every algorithm's whole spectrum (plan + every merged group of every size) on a ViT-B-32 zoo.

For each algorithm, one child process: build the plan (its similarity pass, with the algorithm's
preprocessing) and merge every group the plan ever forms that the algorithm stores merged, once each
(plan.events -> the group each event makes; GroupMerger without memo or disk cache, as a cold app
would on first reaching each size, each group's rows stacked in one reused buffer as GroupStore's are).
Groups are visited block by block, and the merger's row cache (deployment/prepared_rows.py) holds one
block's preprocessed rows of every task (its budget: the largest block's, MergeAlgorithm.row_bytes:
TSV-M's rows with their factors are 1.75-2.1x the vectors, and a budget of the vectors alone had it
factorise each task of an MLP block four times; PCB's carry 1/16 more, its stripe maxima), so each task
is read and preprocessed once per block, not once per group; the `rows` column counts the (block, task)
rows read from disk; the plan's global pass (ties' and dare_ties' thresholds) serves the merges too
(MergeAlgorithm.prepare_for). Next to them, two references, each a
child process too:
  floor      one streamed read of every task vector + each block's Gram matrix (what any plan needs:
             planning's raw similarity pass, reading each tensor's stack into one reused buffer)
  averaging  a plain script that averages the fine-tuned files (vitb32_files.AVERAGE)
Reported per run: wall time and peak RSS (os.wait4's ru_maxrss), and each algorithm's time as a
ratio to the averaging run (goal on CPU: <= 10x) and to the floor. On CUDA (--device cuda) plans and
merges run on the GPU; reading stays on the CPU.

The zoo: ViT-B-32-shaped random task vectors written once as safetensors (vitb32_files), ~350 MB
per task in fp32 (--fp16 halves it). On a 2-core machine use --tasks 8 and/or --algorithms.
Usage: .venv/bin/python benchmarks/bench_spectrum.py [--tasks 30] [--fp16] [--algorithms avg,ties]
       [--device cpu|cuda] [--workdir DIR] [--zoo DIR] [--keep]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from vitb32_files import AVERAGE, FP32_MODEL_BYTES, check_free_disk, measured, write_vitb32_zoo


def child_spectrum(zoo_path: str, algorithm_name: str, device: str) -> dict:
    """Plan + every merged group once; prints a JSON line of the phase times."""
    from flexmerge_core.algorithms import get_algorithm
    from flexmerge_core.deployment.merge import GroupMerger
    from flexmerge_core.deployment.prepared_rows import PreparedRows
    from flexmerge_core.planning.blocks import build_blocks
    from flexmerge_core.planning.plan import build_plan
    from flexmerge_core.reused_buffer import ReusedBuffer
    from flexmerge_core.zoo import open_zoo

    zoo = open_zoo(zoo_path)
    spec = build_blocks(zoo.param_names, zoo.param_shapes, "component")
    algorithm = get_algorithm(algorithm_name)
    start = time.perf_counter()
    plan = build_plan(zoo, spec, algorithm, device=device)
    _sync(device)
    planned = time.perf_counter()
    one_block = max(algorithm.row_bytes([zoo.param_shapes[p] for p in b.params]) for b in spec.blocks)
    rows = PreparedRows(budget=one_block * len(zoo.task_names))
    merger = GroupMerger(zoo, spec, algorithm, cache=None, device=device, memo=False, rows=rows)
    groups = sorted((e.block, tuple(sorted(e.group_a + e.group_b))) for e in plan.events)
    merged = [(b, g) for b, g in groups if algorithm.merges_group(len(g))]
    stacks = ReusedBuffer()   # as GroupStore keeps one for its run of groups
    for b, g in merged:
        merger.result(b, g, stacks=stacks)
    _sync(device)
    return {"plan_s": planned - start, "merge_s": time.perf_counter() - planned, "groups": len(merged),
            "rows": rows.loaded}


def child_floor(zoo_path: str, device: str) -> dict:
    """One streamed read of every task vector and each block's Gram matrix: planning's raw similarity pass."""
    from flexmerge_core.planning.blocks import build_blocks
    from flexmerge_core.planning.similarity import block_similarities
    from flexmerge_core.zoo import open_zoo

    zoo = open_zoo(zoo_path)
    spec = build_blocks(zoo.param_names, zoo.param_shapes, "component")
    start = time.perf_counter()
    block_similarities(zoo, spec, device=device)
    _sync(device)
    return {"floor_s": time.perf_counter() - start}


def files_dtype(zoo: Path) -> str:
    """The dtype the zoo's checkpoints are stored in (a reused --zoo may not match --fp16), e.g. 'F16'."""
    from safetensors import safe_open

    with safe_open(str(zoo / "pretrained.safetensors"), "pt") as file:
        return file.get_slice(next(iter(file.keys()))).get_dtype()


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=30)
    parser.add_argument("--fp16", action="store_true", help="write the checkpoints in fp16 (half the disk)")
    parser.add_argument("--algorithms", default=None, help="comma-separated subset (default: all)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (plans and merges)")
    parser.add_argument("--workdir", default=None, help="where the zoo is written (default: a temp folder)")
    parser.add_argument("--zoo", default=None, help="reuse a zoo written by an earlier --keep run")
    parser.add_argument("--keep", action="store_true", help="keep the written zoo")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--algorithm", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "write":
        write_vitb32_zoo(Path(args.zoo), args.tasks, torch.float16 if args.fp16 else torch.float32)
        return
    if args.child == "spectrum":
        print(json.dumps(child_spectrum(args.zoo, args.algorithm, args.device)))
        return
    if args.child == "floor":
        print(json.dumps(child_floor(args.zoo, args.device)))
        return

    from flexmerge_core.algorithms import ALGORITHM_NAMES

    names = ALGORITHM_NAMES if args.algorithms is None else [a.strip() for a in args.algorithms.split(",")]
    unknown = sorted(set(names) - set(ALGORITHM_NAMES))
    if unknown:
        raise SystemExit(f"--algorithms: unknown {unknown[0]} (known: {', '.join(ALGORITHM_NAMES)})")
    workdir = Path(tempfile.mkdtemp(prefix="bench-spectrum-", dir=args.workdir))
    env = {"FLEXMERGE_CACHE": str(workdir / "cache"), "OMP_WAIT_POLICY": "PASSIVE"}
    me = [sys.executable, __file__]
    try:
        zoo = Path(args.zoo) if args.zoo else workdir / "zoo"
        if not args.zoo:
            check_free_disk(workdir, (args.tasks + 2) * FP32_MODEL_BYTES // (2 if args.fp16 else 1))
            seconds, _, _, _ = measured(me + ["--child", "write", "--zoo", str(zoo), "--tasks", str(args.tasks)]
                                     + (["--fp16"] if args.fp16 else []))
            print(f"wrote the zoo in {seconds:.1f} s ({zoo})", flush=True)
        tasks = len(json.loads((zoo / "zoo.json").read_text())["tasks"])
        print(f"{tasks} tasks of ViT-B-32 ({files_dtype(zoo)} files), device {args.device}, "
              f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads", flush=True)
        avg_s, avg_mb, _, _ = measured([sys.executable, "-c", AVERAGE, str(zoo), str(workdir / "avg.safetensors")], env)
        floor_wall, floor_mb, out, _ = measured(me + ["--child", "floor", "--zoo", str(zoo), "--device", args.device], env)
        floor_s = json.loads(out.strip().splitlines()[-1])["floor_s"]
        print(f"{'run':<16s} {'wall s':>8s} {'plan s':>8s} {'merge s':>8s} {'groups':>7s} {'rows':>6s} "
              f"{'peak MB':>8s} {'x avg':>7s} {'x floor':>8s}")
        print(f"{'averaging':<16s} {avg_s:8.1f} {'':>8s} {'':>8s} {'':>7s} {'':>6s} {avg_mb:8.0f} {1:7.2f} "
              f"{avg_s / floor_wall:8.2f}")
        print(f"{'floor':<16s} {floor_wall:8.1f} {floor_s:8.1f} {'':>8s} {'':>7s} {'':>6s} {floor_mb:8.0f} "
              f"{floor_wall / avg_s:7.2f} {1:8.2f}", flush=True)
        for name in names:
            wall, peak, out, _ = measured(me + ["--child", "spectrum", "--zoo", str(zoo), "--algorithm", name,
                                             "--device", args.device], env)
            phases = json.loads(out.strip().splitlines()[-1])
            print(f"{name:<16s} {wall:8.1f} {phases['plan_s']:8.1f} {phases['merge_s']:8.1f} {phases['groups']:7d} "
                  f"{phases['rows']:6d} {peak:8.0f} {wall / avg_s:7.2f} {wall / floor_wall:8.2f}", flush=True)
        print("wall = the whole child (interpreter, imports, zoo open, plan, merges); x avg: goal <= 10 on CPU")
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Benchmark: `export --size 1` of an 8-task ViT-B-32-shaped zoo against a plain averaging script.

1x merges every block of all M tasks whatever the plan, so the export should cost about what a
20-line script that averages the same files costs. Each run is a child process measured alone:
wall time, CPU time (user + system: on a loaded shared machine wall time is mostly waiting for a core)
and peak RSS (os.wait4's ru_maxrss, which counts the interpreter, torch and touched pages);
`baseline` is a child that only imports what the CLI imports, so "above baseline" is the work's own
memory. The CLI export runs on a cold cache (a fresh FLEXMERGE_CACHE). The largest tensor group is
M task tensors of the largest merged parameter in float32 (a tensorwise export's floor: avg and ta merge
one tensor at a time in one buffer of that size).

`--before DIR` adds the same export run from another checkout of the repository (e.g. `git archive
<branch> | tar -x -C DIR`), measured in the same run, so a change is judged by ratios taken side by side
on a shared machine.

Usage: .venv/bin/python benchmarks/bench_export.py [--tasks 8] [--algorithm avg] [--repeats N] [--workdir DIR]
       [--zoo DIR (reuse a zoo kept by --keep)] [--before DIR]
"""
from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
from pathlib import Path

from vitb32_files import AVERAGE, FP32_MODEL_BYTES, REPO, check_free_disk, measured, write_vitb32_zoo

TIME_GOAL, RSS_GOAL = 1.2, 1.5



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--algorithm", default="avg")
    parser.add_argument("--workdir", default=None, help="where the zoo is written (default: a temp folder)")
    parser.add_argument("--zoo", default=None, help="reuse a zoo written by an earlier --keep run")
    parser.add_argument("--keep", action="store_true", help="keep the written zoo")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each child: the fastest time, the least "
                        "CPU time and the highest peak are reported (a shared machine's timings are noisy)")
    parser.add_argument("--before", default=None, help="another checkout whose export is measured beside this one")
    parser.add_argument("--write-only", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write_only:
        write_vitb32_zoo(Path(args.write_only), args.tasks)
        return
    workdir = Path(tempfile.mkdtemp(prefix="bench-export-", dir=args.workdir))
    try:
        zoo = Path(args.zoo) if args.zoo else workdir / "zoo"
        if not args.zoo:
            check_free_disk(workdir, (args.tasks + 3) * FP32_MODEL_BYTES)
            seconds, _, _, _ = measured([sys.executable, __file__, "--write-only", str(zoo), "--tasks", str(args.tasks)])
            print(f"wrote the zoo in {seconds:.1f} s ({zoo})", flush=True)
        python = [sys.executable]
        export = python + ["-m", "flexmerge_core", "export", "--zoo", str(zoo), "--algorithm", args.algorithm,
                           "--size", "1", "--out", str(workdir / "export.safetensors")]
        label = f"export --size 1 ({args.algorithm})"
        runs = {   # label: (command, checkout on PYTHONPATH)
            "baseline (imports only)": (python + ["-c", "import torch, safetensors.torch, flexmerge_core.cli"], REPO),
            "averaging script": (python + ["-c", AVERAGE, str(zoo), str(workdir / "avg.safetensors")], REPO),
        }
        if args.before:
            runs[f"{label}, before"] = (export, Path(args.before).resolve())
        runs[label] = (export, REPO)
        results = {}   # name: (fastest wall seconds, least CPU seconds, highest peak RSS MB)
        for _ in range(args.repeats):
            for name, (command, checkout) in runs.items():
                cache = workdir / "cache"
                shutil.rmtree(cache, ignore_errors=True)
                seconds, peak, _, cpu = measured(command, checkout=checkout,
                                                 env={"FLEXMERGE_CACHE": str(cache), "OMP_WAIT_POLICY": "PASSIVE"})
                known = results.get(name, (seconds, cpu, peak))
                results[name] = (min(seconds, known[0]), min(cpu, known[1]), max(peak, known[2]))
        largest = _largest_group_mb(zoo, args.tasks)
        base = results["baseline (imports only)"][2]
        print(f"{args.tasks} tasks of ViT-B-32; largest tensor group (M x largest parameter, fp32): {largest:.0f} MB")
        t_avg, c_avg, m_avg = results["averaging script"]
        print(f"{'run':<36s} {'seconds':>8s} {'CPU s':>6s} {'peak RSS MB':>12s} {'above baseline':>15s} "
              f"{'time / avg':>11s} {'CPU / avg':>10s} {'RSS / avg':>10s}")
        for name, (seconds, cpu, peak) in results.items():
            print(f"{name:<36s} {seconds:8.2f} {cpu:6.2f} {peak:12.0f} {peak - base:15.0f} {seconds / t_avg:10.2f}x "
                  f"{cpu / c_avg:9.2f}x {peak / m_avg:9.2f}x")
        t_exp, c_exp, m_exp = results[label]
        print(f"export / averaging: time {t_exp / t_avg:.2f}x (goal <= {TIME_GOAL}; CPU time {c_exp / c_avg:.2f}x), "
              f"peak RSS {m_exp / m_avg:.2f}x (goal <= {RSS_GOAL}); export above baseline "
              f"{(m_exp - base) / largest:.2f}x the largest tensor group")
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def _largest_group_mb(zoo: Path, num_tasks: int) -> float:
    from safetensors import safe_open

    with safe_open(str(zoo / "pretrained.safetensors"), framework="pt") as f:
        largest = max(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    return num_tasks * largest * 4 / 2**20


if __name__ == "__main__":
    main()

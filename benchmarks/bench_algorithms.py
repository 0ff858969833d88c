"""Time per merge algorithm to merge one ViT-B-32 MLP block for groups of 2, 8 and 30 tasks.

The block is c_fc (3072x768 + bias) and c_proj (768x3072 + bias), 4.7M parameters, with random task
vectors (timings hardly depend on the values). Mask methods do not merge pairs (ALGORITHMS.md 1): '-'.
`merge` time is reported per group, with its ratio to averaging's (the memory-bandwidth floor: one
read of the group), measured in the same run so machine load affects both alike; algorithms with a
global preprocessing pass (ties, dare_*, pcb) are prepared once over the block (standing in for the
whole model) outside the timed merge, and their preprocess_block time is printed in its own column.
Runs on CPU, and on CUDA when available. Usage:
    .venv/bin/python benchmarks/bench_algorithms.py [--groups 2,8,30] [--repeats 3] [--algorithms ...]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from flexmerge_core.algorithms import ALGORITHM_NAMES, get_algorithm  # noqa: E402

MLP_BLOCK = {"mlp.c_fc.weight": (3072, 768), "mlp.c_fc.bias": (3072,),
             "mlp.c_proj.weight": (768, 3072), "mlp.c_proj.bias": (768,)}
SLOW_SECONDS = 2.0  # a case slower than this is timed once


def task_vectors(num_tasks: int, device: torch.device) -> dict:
    gen = torch.Generator().manual_seed(num_tasks)
    return {n: (0.01 * torch.randn(num_tasks, *s, generator=gen)).to(device) for n, s in MLP_BLOCK.items()}


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, repeats: int) -> float:
    """Best of `repeats` wall-clock runs (one run when the first is slow)."""
    best = float("inf")
    for attempt in range(repeats):
        synchronise(device)
        start = time.perf_counter()
        fn()
        synchronise(device)
        best = min(best, time.perf_counter() - start)
        if attempt == 0 and best > SLOW_SECONDS:
            break
    return best


def bench(names, groups, devices, repeats):
    rows = []
    for device in devices:
        for g in groups:
            block = task_vectors(g, device)
            members = list(range(g))
            for name in names:
                algo = get_algorithm(name)
                if not algo.merges_group(g):  # mask methods store pairs as they are: nothing to time
                    continue
                prep = float("nan")
                if algo.has_preprocessing:
                    algo.prepare(lambda: iter([block]))
                    prep = timed(lambda: algo.preprocess_block(block), device, 1)
                ready = algo.preprocess_block(block)
                seconds = timed(lambda: algo.merge(ready, members), device, repeats)
                rows.append((device.type, name, g, seconds, prep))
                print(f"  {device.type:4s} {name:13s} g={g:2d} merge {seconds:8.3f} s  preprocess {prep:8.3f} s",
                      flush=True)
            del block
    return rows


def print_table(rows, groups):
    """Per device: each algorithm's merge time per group size, and its ratio to averaging that group."""
    print("\nmerge time per group (seconds, best of repeats; ViT-B-32 MLP block, 4.72M params);"
          " 'x avg': the time over averaging's, measured in the same run")
    header = f"{'device':6s} {'algorithm':13s}" + "".join(f" {'g=' + str(g):>9s} {'x avg':>7s}" for g in groups) \
        + "".join(f" {'prep g=' + str(g):>11s}" for g in groups)
    print(header)
    print("-" * len(header))
    keys = sorted({(d, n) for d, n, *_ in rows}, key=lambda k: (k[0], ALGORITHM_NAMES.index(k[1])))
    average = {(d, g): s for d, n, g, s, _ in rows if n == "avg"}
    for device, name in keys:
        found = {g: (s, p) for d, n, g, s, p in rows if (d, n) == (device, name)}
        line = f"{device:6s} {name:13s}"
        for g in groups:
            if g not in found:
                line += f" {'-':>9s} {'-':>7s}"
                continue
            ratio = found[g][0] / average[(device, g)] if (device, g) in average else float("nan")
            line += f" {found[g][0]:9.3f} {ratio:7.1f}"
        line += "".join(f" {found[g][1]:11.3f}" if g in found and found[g][1] == found[g][1] else f" {'-':>11s}"
                        for g in groups)  # '-': not merged, or no preprocessing (NaN)
        print(line)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", default="2,8,30")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--algorithms", default=",".join(ALGORITHM_NAMES))
    parser.add_argument("--cpu-only", action="store_true")
    args = parser.parse_args()
    groups = [int(g) for g in args.groups.split(",")]
    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and not args.cpu_only:
        devices.append(torch.device("cuda"))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, devices {[d.type for d in devices]}")
    names = ["avg"] + [n for n in args.algorithms.split(",") if n != "avg"]  # the ratios' reference
    rows = bench(names, groups, devices, args.repeats)
    print_table(rows, groups)


if __name__ == "__main__":
    main()

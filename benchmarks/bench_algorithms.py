"""Time per merge algorithm to merge one ViT-B-32 MLP block for groups of 2, 8 and 30 tasks.

The block is c_fc (3072x768 + bias) and c_proj (768x3072 + bias), 4.7M parameters, with random task
vectors (timings hardly depend on the values, except TSV-M's: it is timed again on matrices with
steep spectra, where it can skip the full SVDs, row 'tsv 0.7^i'). Mask methods do not merge pairs (ALGORITHMS.md 1): '-'.
`merge` time is reported per group, with its ratio to averaging's (the memory-bandwidth floor: one
read of the group), each run followed by one of averaging so that machine load affects both alike;
algorithms with a
global preprocessing pass (ties, dare_*, pcb) are prepared once over the block (standing in for the
whole model) outside the timed merge; the preprocess_block time of those and of TSV-M (each task's
factorisation, done once per task and block whatever groups it joins) is printed in its own column.
Runs on CPU (one thread unless --threads says otherwise: the ratios are per thread, and a shared
machine's cores oversubscribed by a parallel merge make them noise), and on CUDA when available. Usage:
    .venv/bin/python benchmarks/bench_algorithms.py [--groups 2,8,30] [--repeats 3] [--algorithms ...] [--threads 1]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from flexmerge_core.algorithms import ALGORITHM_NAMES, get_algorithm  # noqa: E402
from flexmerge_core.algorithms.base import MergeAlgorithm  # noqa: E402

MLP_BLOCK = {"mlp.c_fc.weight": (3072, 768), "mlp.c_fc.bias": (3072,),
             "mlp.c_proj.weight": (768, 3072), "mlp.c_proj.bias": (768,)}
SLOW_SECONDS = 2.0  # a case slower than this is timed once
STEEP_TSV = "tsv 0.7^i"  # TSV-M again, on matrices with steeply falling spectra
ORDER = ALGORITHM_NAMES[:ALGORITHM_NAMES.index("tsv") + 1] + (STEEP_TSV,) + ALGORITHM_NAMES[ALGORITHM_NAMES.index("tsv") + 1:]


def task_vectors(num_tasks: int, device: torch.device) -> dict:
    gen = torch.Generator().manual_seed(num_tasks)
    return {n: (0.01 * torch.randn(num_tasks, *s, generator=gen)).to(device) for n, s in MLP_BLOCK.items()}


def steep_spectrum_task_vectors(num_tasks: int, device: torch.device, decay: float = 0.7) -> dict:
    """Like task_vectors, but each matrix's singular values fall off as decay^i (a random orientation
    per member): TSV-M's subspace iteration is exact enough only on such spectra, Gaussian noise is flat."""
    gen = torch.Generator().manual_seed(num_tasks)
    out = {}
    for name, shape in MLP_BLOCK.items():
        noise = 0.01 * torch.randn(num_tasks, *shape, generator=gen)
        if len(shape) == 2:
            small = min(shape)
            rotation = torch.linalg.qr(torch.randn(num_tasks, small, small, generator=gen)).Q
            spectrum = decay ** torch.arange(small, dtype=noise.dtype)
            noise = (noise * spectrum) @ rotation.mT if shape[1] == small else rotation @ (spectrum[:, None] * noise)
        out[name] = noise.to(device)
    return out


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, repeats: int, reference=None):
    """Best of `repeats` wall-clock runs (one run when the first is slow).

    With `reference` (averaging the same group), each run of fn is followed by one of it and the best
    of those is returned too: on a shared machine both then see the same load, and so does their ratio.
    """
    best, best_reference = float("inf"), float("inf")
    for attempt in range(repeats):
        for fn_, is_reference in ((fn, False), (reference, True)):
            if fn_ is None:
                continue
            synchronise(device)
            start = time.perf_counter()
            fn_()
            synchronise(device)
            if is_reference:
                best_reference = min(best_reference, time.perf_counter() - start)
            else:
                best = min(best, time.perf_counter() - start)
        if attempt == 0 and best > SLOW_SECONDS:
            break
    return best if reference is None else (best, best_reference)


def preprocessed(algo, block, device):
    """(algo.preprocess_block(block), its seconds, timed once; NaN when the algorithm has none)."""
    if not algo.has_preprocessing and type(algo).preprocess_block is MergeAlgorithm.preprocess_block:
        return algo.preprocess_block(block), float("nan")
    synchronise(device)
    start = time.perf_counter()
    ready = algo.preprocess_block(block)
    synchronise(device)
    return ready, time.perf_counter() - start


def bench(names, groups, devices, repeats):
    rows = []
    for device in devices:
        for g in groups:
            block = task_vectors(g, device)
            members = list(range(g))
            averaging = lambda: get_algorithm("avg").merge(block, members)  # noqa: E731
            for name in names:
                algo = get_algorithm(name)
                if not algo.merges_group(g):  # mask methods store pairs as they are: nothing to time
                    continue
                if algo.has_preprocessing:
                    algo.prepare(lambda: iter([block]))
                ready, prep = preprocessed(algo, block, device)
                seconds, average = timed(lambda: algo.merge(ready, members), device, repeats, averaging)
                rows.append((device.type, name, g, seconds, seconds / average, prep))
                print(f"  {device.type:4s} {name:13s} g={g:2d} merge {seconds:8.3f} s  preprocess {prep:8.3f} s",
                      flush=True)
            del block
            if "tsv" in names:
                steep = steep_spectrum_task_vectors(g, device)
                tsv = get_algorithm("tsv")
                ready, prep = preprocessed(tsv, steep, device)
                seconds, average = timed(lambda: tsv.merge(ready, members), device, repeats,
                                         lambda: get_algorithm("avg").merge(steep, members))
                rows.append((device.type, STEEP_TSV, g, seconds, seconds / average, prep))
                print(f"  {device.type:4s} {STEEP_TSV:13s} g={g:2d} merge {seconds:8.3f} s  preprocess {prep:8.3f} s",
                      flush=True)
                del steep, ready
    return rows


def print_table(rows, groups):
    """Per device: each algorithm's merge time per group size, and its ratio to averaging that group."""
    print("\nmerge time per group (seconds, best of repeats; ViT-B-32 MLP block, 4.72M params);"
          " 'x avg': over averaging the same group, timed alternately with it")
    header = f"{'device':6s} {'algorithm':13s}" + "".join(f" {'g=' + str(g):>9s} {'x avg':>7s}" for g in groups) \
        + "".join(f" {'prep g=' + str(g):>11s}" for g in groups)
    print(header)
    print("-" * len(header))
    keys = sorted({(d, n) for d, n, *_ in rows}, key=lambda k: (k[0], ORDER.index(k[1])))
    for device, name in keys:
        found = {g: (s, r, p) for d, n, g, s, r, p in rows if (d, n) == (device, name)}
        line = f"{device:6s} {name:13s}"
        line += "".join(f" {found[g][0]:9.3f} {found[g][1]:7.1f}" if g in found else f" {'-':>9s} {'-':>7s}"
                        for g in groups)
        line += "".join(f" {found[g][2]:11.3f}" if g in found and found[g][2] == found[g][2] else f" {'-':>11s}"
                        for g in groups)  # '-': not merged, or no preprocessing (NaN)
        print(line)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", default="2,8,30")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--algorithms", default=",".join(ALGORITHM_NAMES))
    parser.add_argument("--cpu-only", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    groups = [int(g) for g in args.groups.split(",")]
    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and not args.cpu_only:
        devices.append(torch.device("cuda"))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, devices {[d.type for d in devices]}")
    rows = bench(args.algorithms.split(","), groups, devices, args.repeats)
    print_table(rows, groups)


if __name__ == "__main__":
    main()

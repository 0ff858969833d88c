"""Benchmark: Compare's ta then consensus_ta over every group of one plan, group bases shared or not.

ta and consensus_ta scale the same basis, each group's mean of the raw rows (deployment/group_bases.py):
shared, consensus_ta is handed the means ta computed and pays only its masks' read. One plan (ta's;
consensus_ta's forms the same groups, only their sizes in model units differ) is built once; then each
mode runs in a fresh child process (so no mode inherits another's heap), alternating round by round:
block by block, ta merges every group the plan forms, then consensus_ta every group it merges (>= 3
members), through one GroupMerger each (no memo, no disk cache) sharing one row cache (one block of every
task) and, in the shared mode, one GroupBases of the same budget. Each block's rows are read before the
merges are timed (`read`: the same work in both modes). Reported per phase: seconds (CPU time of the
process on one thread, steadier than wall time on a shared machine; wall time with --device cuda) and
minor page faults (fresh pages: a held basis is memory the allocator cannot hand to the next group).
The results are the same bytes in both modes (tests/test_unified_sharing.py).
Usage: .venv/bin/python benchmarks/bench_group_bases.py --zoo DIR [--rounds 3] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

NAMES = ("ta", "consensus_ta")


def child(zoo_path: str, groups_file: str, device: str, shared: bool) -> dict:
    """Both algorithms over every block's groups: seconds and page faults per phase, the bases computed."""
    from flexmerge_core.algorithms import get_algorithm
    from flexmerge_core.deployment.group_bases import GroupBases
    from flexmerge_core.deployment.merge import GroupMerger
    from flexmerge_core.deployment.prepared_rows import PreparedRows
    from flexmerge_core.planning.blocks import build_blocks
    from flexmerge_core.zoo import open_zoo

    torch.set_num_threads(1)
    zoo = open_zoo(zoo_path)
    spec = build_blocks(zoo.param_names, zoo.param_shapes, "component")
    groups = {int(b): [tuple(g) for g in gs] for b, gs in json.loads(Path(groups_file).read_text()).items()}
    one_block = max(b.numel for b in spec.blocks) * 4 * len(zoo.task_names)
    rows, bases = PreparedRows(budget=one_block), GroupBases(budget=one_block) if shared else None
    mergers = {n: GroupMerger(zoo, spec, get_algorithm(n), device=device, memo=False, rows=rows, bases=bases)
               for n in NAMES}
    clock = time.perf_counter if device == "cuda" else time.process_time
    seconds, faults = dict.fromkeys(("read",) + NAMES, 0.0), dict.fromkeys(("read",) + NAMES, 0)

    def timed(phase, work):
        start, before = clock(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        work()
        if device == "cuda":
            torch.cuda.synchronize()
        seconds[phase] += clock() - start
        faults[phase] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    for b, block in enumerate(spec.blocks):
        timed("read", lambda: rows.rows(zoo, block, range(len(zoo.task_names)), mergers["ta"].algorithm, device,
                                        raw=True))
        for name, merger in mergers.items():
            timed(name, lambda: [merger.result(b, g) for g in groups.get(b, [])
                                 if merger.algorithm.merges_group(len(g))])
    return {"seconds": seconds, "faults": faults, "bases": 0 if bases is None else bases.computed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", nargs=2, metavar=("GROUPS_FILE", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.zoo, args.child[0], args.device, args.child[1] == "shared")))
        return
    from flexmerge_core.algorithms import get_algorithm
    from flexmerge_core.planning.blocks import build_blocks
    from flexmerge_core.planning.plan import build_plan
    from flexmerge_core.zoo import open_zoo

    zoo = open_zoo(args.zoo)
    spec = build_blocks(zoo.param_names, zoo.param_shapes, "component")
    plan = build_plan(zoo, spec, get_algorithm("ta"), device=args.device)
    groups: dict[int, list] = {}
    for event in plan.events:
        groups.setdefault(event.block, []).append(sorted(event.group_a + event.group_b))
    print(f"{len(zoo.task_names)} tasks, {len(spec.blocks)} blocks, {len(plan.events)} groups")
    print(f"{'mode':>9} {'read s':>7} {'ta s':>6} {'consensus_ta s':>14} {'merges s':>8}   "
          f"{'faults read/ta/consensus_ta':>28} {'bases':>5}")
    with tempfile.NamedTemporaryFile("w", suffix=".json") as handle:
        handle.write(json.dumps(groups))
        handle.flush()
        for _ in range(args.rounds):
            for mode in ("unshared", "shared"):
                out = subprocess.run([sys.executable, __file__, "--zoo", args.zoo, "--device", args.device,
                                      "--child", handle.name, mode], check=True, capture_output=True, text=True)
                got = json.loads(out.stdout.splitlines()[-1])
                s, f = got["seconds"], got["faults"]
                print(f"{mode:>9} {s['read']:7.2f} {s['ta']:6.2f} {s['consensus_ta']:14.2f} "
                      f"{s['ta'] + s['consensus_ta']:8.2f}   {f['read']:>8}/{f['ta']}/{f['consensus_ta']} "
                      f"{got['bases']:5d}", flush=True)


if __name__ == "__main__":
    main()

"""Benchmark: building the merge plan from files vs a plain streamed read + Gram pass, and vs a naive loop.

For M tasks of ViT-B-32 shape (open_clip's ViT-B-32 visual tower: 224 px, patch 32, width 768, 12 layers),
random task vectors with shared structure (a common direction + one of 4 family directions + task noise)
are written once as safetensors into a temporary zoo folder. Then, side by side in one run:
- plain pass: read every tensor once (safetensors, no zoo), form task vectors, accumulate the Gram matrix
  (float32 products per column chunk summed in float64, as the engine does); no blocks, no cosine, no plan;
- plan: open_zoo + build_blocks("component") + build_plan(algorithm "ta", linkage min, greedy);
- naive greedy loop on the plan's own similarity matrices: each step, among all blocks, recompute every
  pair's linkage from the original matrix and merge the most similar pair; versus the engine's
  plan_from_similarities on the same matrices.
Each pass runs in a fresh subprocess (alternating plain/plan `--repeats` times; best run) so peak RSS is its own.
Goals: plan <= 1.5x the plain pass; naive loop >= 20x slower than the engine's plan step.

Usage: .venv/bin/python benchmarks/bench_plan.py [--tasks 8,30] [--repeats 2,1] [--workdir /tmp] [--naive-limit 600]
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

VIT_B_32 = {"image_size": 224, "patch_size": 32, "width": 768, "layers": 12, "heads": 12, "mlp_ratio": 4.0,
            "output_dim": 512}
FAMILIES = 4
CHUNK = 1 << 16


def write_random_zoo(folder: Path, num_tasks: int, seed: int = 0) -> int:
    """Pretrained = a random ViT-B-32 init; task k = pretrained + 1e-3 (shared + family[k % 4] + noise)."""
    from open_clip.transformer import VisionTransformer
    from safetensors.torch import save_file

    from flexmerge_core.zoo.manifest import FORMAT, MANIFEST_NAME

    torch.manual_seed(seed)
    pretrained = {k: v.detach().clone().contiguous() for k, v in VisionTransformer(**VIT_B_32).state_dict().items()}
    directions = [{k: torch.randn_like(v) for k, v in pretrained.items()} for _ in range(FAMILIES + 1)]
    (folder / "tasks").mkdir(parents=True)
    save_file(pretrained, str(folder / "pretrained.safetensors"))
    tasks = []
    for k in range(num_tasks):
        shared, family = directions[0], directions[1 + k % FAMILIES]
        state = {n: v + 1e-3 * (shared[n] + family[n] + torch.randn_like(v)) for n, v in pretrained.items()}
        save_file(state, str(folder / "tasks" / f"task{k:02d}.safetensors"))
        tasks.append({"name": f"task{k:02d}", "checkpoint": f"tasks/task{k:02d}.safetensors"})
        del state
    manifest = {"format": FORMAT, "name": f"bench-vit-b-32-{num_tasks}",
                "architecture": {"kind": "open_clip_vit", "config": VIT_B_32},
                "pretrained": "pretrained.safetensors", "head_input": "raw", "tasks": tasks, "recipe": {}}
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    return sum(v.numel() for v in pretrained.values())


def plain_pass(folder: Path, sims_out: Path) -> dict:
    """Read each tensor once and accumulate the M x M Gram matrix of the task vectors."""
    from safetensors import safe_open

    start = time.perf_counter()
    manifest = json.loads((folder / "zoo.json").read_text())
    base = safe_open(str(folder / manifest["pretrained"]), framework="pt")
    tasks = [safe_open(str(folder / t["checkpoint"]), framework="pt") for t in manifest["tasks"]]
    m = len(tasks)
    gram = torch.zeros((m, m), dtype=torch.float64)
    for name in base.keys():
        theta = base.get_tensor(name)
        rows = torch.stack([f.get_tensor(name) - theta for f in tasks]).reshape(m, -1)
        for col in range(0, rows.shape[1], CHUNK):
            chunk = rows[:, col:col + CHUNK]
            gram += (chunk @ chunk.T).double()
    return {"seconds": time.perf_counter() - start, "trace": float(gram.trace())}


def plan_pass(folder: Path, sims_out: Path) -> dict:
    from flexmerge_core.algorithms import get_algorithm
    from flexmerge_core.planning.blocks import build_blocks
    from flexmerge_core.planning.plan import build_plan
    from flexmerge_core.planning.similarity import block_similarities
    from flexmerge_core.zoo import open_zoo

    start = time.perf_counter()
    zoo = open_zoo(folder)
    spec = build_blocks(zoo.param_names, zoo.param_shapes, "component")
    algorithm = get_algorithm("ta")
    plan = build_plan(zoo, spec, algorithm)
    seconds = time.perf_counter() - start
    if not sims_out.exists():          # input of the naive loop; computed after the timed region
        np.savez(sims_out, sims=block_similarities(zoo, spec, algorithm),
                 numels=np.array([b.numel for b in spec.blocks]))
    return {"seconds": seconds, "events": len(plan.events), "blocks": len(spec.blocks), "min_size": plan.min_size}


def run_child(kind: str, folder: Path, sims_out: Path) -> dict:
    """One pass in a fresh process: its wall time and its own peak RSS."""
    cmd = [sys.executable, __file__, "--child", kind, str(folder), str(sims_out)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child_main(kind: str, folder: Path, sims_out: Path) -> None:
    """Runs one pass; peak RSS = VmHWM (includes touched pages of memory-mapped checkpoint files, which
    the kernel can drop at will) and the peak of anonymous RSS (the process's own memory), sampled."""
    peak_anon, stop = [0.0], threading.Event()

    def sample():
        while not stop.wait(0.02):
            peak_anon[0] = max(peak_anon[0], _status_mb("RssAnon"))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    result = (plain_pass if kind == "plain" else plan_pass)(folder, sims_out)
    stop.set()
    sampler.join()
    print(json.dumps({"peak_rss_mb": _status_mb("VmHWM"), "peak_anon_mb": peak_anon[0], **result}))


def naive_greedy(sims: np.ndarray, deadline_s: float):
    """Each step, among all blocks, recompute every pair's min-linkage from the original matrix and merge
    the most similar pair (ties: earlier block, smaller ids). Returns (events, finished)."""
    matrices = sims.tolist()
    groups = [[(t,) for t in range(sims.shape[1])] for _ in matrices]
    events, start = [], time.perf_counter()
    for _ in range(sims.shape[0] * (sims.shape[1] - 1)):
        best_sim, best = -np.inf, None
        for b, current in enumerate(groups):
            sim = matrices[b]
            for x, a in enumerate(current):
                for c in current[x + 1:]:
                    s = min(sim[i][j] for i in a for j in c)
                    if s > best_sim:
                        best_sim, best = s, (b, x, a, c)
        b, x, a, c = best
        groups[b][x] = tuple(sorted(a + c))
        groups[b].remove(c)
        events.append((b, a, c, best_sim))
        if time.perf_counter() - start > deadline_s:
            return events, False
    return events, True


def _peaks(runs: list[dict]) -> str:
    return (f"peak RSS {max(r['peak_rss_mb'] for r in runs):.0f} MB incl. mapped files, "
            f"peak anonymous RSS {max(r['peak_anon_mb'] for r in runs):.0f} MB")


def bench(num_tasks: int, workdir: Path, naive_limit: float, repeats: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix=f"bench_plan_m{num_tasks}_", dir=workdir))
    try:
        start = time.perf_counter()
        params = write_random_zoo(folder / "zoo", num_tasks)
        gb = (num_tasks + 1) * params * 4 / 1e9
        print(f"\n== M = {num_tasks} tasks of ViT-B-32 shape: {params / 1e6:.1f} M parameters per model, "
              f"{gb:.2f} GB of safetensors (written in {time.perf_counter() - start:.0f} s)")
        sims_out = folder / "sims.npz"
        runs = {"plain": [], "plan": []}
        for kind in ("plain", "plan") * repeats:
            runs[kind].append(run_child(kind, folder / "zoo", sims_out))
        plain = min(r["seconds"] for r in runs["plain"])
        plan = min(r["seconds"] for r in runs["plan"])
        info = runs["plan"][0]
        print(f"plain streamed read + Gram pass : {plain:8.2f} s  (runs {[round(r['seconds'], 2) for r in runs['plain']]},"
              f" {gb / plain:.2f} GB/s, {_peaks(runs['plain'])})")
        print(f"full plan from files            : {plan:8.2f} s  (runs {[round(r['seconds'], 2) for r in runs['plan']]},"
              f" {info['blocks']} blocks, {info['events']} events, {_peaks(runs['plan'])})")
        print(f"ratio plan / plain pass         : {plan / plain:8.2f}   (goal <= 1.5)")

        from flexmerge_core.planning.plan import plan_from_similarities

        data = np.load(sims_out)
        sims, numels = data["sims"], [int(n) for n in data["numels"]]
        core_times = []
        for _ in range(3):
            t0 = time.perf_counter()
            engine = plan_from_similarities(sims, numels)
            core_times.append(time.perf_counter() - t0)
        core = min(core_times)
        t0 = time.perf_counter()
        events, finished = naive_greedy(sims, naive_limit)
        naive = time.perf_counter() - t0
        same = [(e.block, e.group_a, e.group_b, e.similarity) for e in engine.events[:len(events)]] == events
        print(f"engine plan step (per-block agglomeration + heap) on the same similarities: {core * 1e3:8.1f} ms")
        if finished:
            print(f"naive greedy loop                : {naive:8.2f} s   ratio naive / engine plan step: "
                  f"{naive / core:.0f}x   (goal >= 20x); identical events: {same}")
        else:
            total = len(engine.events)
            print(f"naive greedy loop stopped after {naive:.0f} s at {len(events)} of {total} events "
                  f"(too slow to finish); already {naive / core:.0f}x the engine plan step; "
                  f"identical events so far: {same}")
        print(f"(naive / full plan from files: {naive / plan:.2f}x{'' if finished else ' and growing'})")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="8,30")
    parser.add_argument("--workdir", default=tempfile.gettempdir())
    parser.add_argument("--naive-limit", type=float, default=600.0, help="seconds before the naive loop is cut off")
    parser.add_argument("--repeats", default="2,1", help="alternating plain/plan rounds per task count")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "ZOO", "SIMS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.child[0], Path(args.child[1]), Path(args.child[2]))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"device {'cuda' if torch.cuda.is_available() else 'cpu'}")
    counts = [int(x) for x in args.tasks.split(",")]
    repeats = [int(x) for x in args.repeats.split(",")]
    for m, r in zip(counts, repeats + repeats[-1:] * len(counts)):
        bench(m, Path(args.workdir), args.naive_limit, r)


if __name__ == "__main__":
    main()

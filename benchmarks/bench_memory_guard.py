"""Benchmark: the memory guard's estimate against the peak memory the work really takes.

A synthetic zoo (open_clip VisionTransformer, default width 384 x 6 layers, ~10.7M parameters = 43 MB per
model; M tasks with heads and a little held-out data) is written once. Then each piece of work runs in
a fresh subprocess: plan only (estimate size None), export at sizes 1, 2 and M, and a curve (estimate
"all"). Each subprocess imports everything and opens the zoo first, reads its anonymous resident memory
(RssAnon) as the baseline, does the work while a thread samples RssAnon every 2 ms; work peak = the
highest sample - baseline. Anonymous memory is what can run out: the memory-mapped checkpoint pages a
read touches are clean file pages the kernel drops under pressure, so they are not counted. Printed side by side
with `estimate_memory(...).needed` and the ratio measured / estimate.
Goal: every ratio <= 1 (the guard never lets through work that then needs more than it said), and
not far below (a guard that asks for 10x would refuse work that fits).

Usage: .venv/bin/python benchmarks/bench_memory_guard.py [--tasks 4] [--width 384] [--layers 6] [--workdir /tmp]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

WORK = r'''
import json, sys
sys.path.insert(0, {repo!r})
import open_clip.transformer  # noqa: F401  (imports happen before the baseline)
from flexmerge_core.algorithms import get_algorithm
from flexmerge_core.planning.blocks import build_blocks
from flexmerge_core.evaluation.curve import compute_curve
from flexmerge_core.deployment.export import export
from flexmerge_core.planning.plan import build_plan
from flexmerge_core.resources import estimate_memory
from flexmerge_core.zoo import open_zoo

import threading, time

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

peak = [0]
def sample():  # the kernel keeps no peak of anonymous memory: sample it
    while True:
        peak[0] = max(peak[0], status("RssAnon:"))
        time.sleep(0.002)

kind, size, zoo_dir, out = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
size = None if size == "none" else ("all" if size == "all" else float(size))
zoo = open_zoo(zoo_dir)
spec = build_blocks(zoo.param_names, zoo.param_shapes)
algorithm = get_algorithm("ta")
estimate = estimate_memory(zoo, size, spec).needed
baseline = status("RssAnon:")
threading.Thread(target=sample, daemon=True).start()
plan = build_plan(zoo, spec, algorithm)
if kind == "export":
    export(zoo, spec, plan, algorithm, size, out)
elif kind == "curve":
    compute_curve(zoo, plan, algorithm, "all", spec=spec, use_cache=False)
time.sleep(0.01)
print(json.dumps({{"estimate": estimate, "measured": peak[0] - baseline}}))
'''


def write_zoo_folder(folder: Path, tasks: int, width: int, layers: int) -> Path:
    import torch
    from open_clip.transformer import VisionTransformer

    from flexmerge_core.zoo import write_zoo

    config = {"image_size": 32, "patch_size": 8, "width": width, "layers": layers, "heads": 4, "mlp_ratio": 4,
              "output_dim": 64}
    torch.manual_seed(0)
    pretrained = {k: v.detach().clone() for k, v in VisionTransformer(**config).state_dict().items()}
    entries = []
    for t in range(tasks):
        g = torch.Generator().manual_seed(t + 1)
        entries.append({"name": f"task{t}",
                        "state_dict": {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in pretrained.items()},
                        "head": {"weight": torch.randn(5, 64, generator=g), "bias": torch.zeros(5)},
                        "data": (torch.randn(16, 3, 32, 32, generator=g), torch.arange(16) % 5)})
    return write_zoo(folder, {"kind": "open_clip_vit", "config": config}, pretrained, entries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        zoo_dir = write_zoo_folder(Path(tmp) / "zoo", args.tasks, args.width, args.layers)
        model_mb = sum(p.stat().st_size for p in (zoo_dir / "tasks").iterdir()) / args.tasks / 1e6
        print(f"zoo: {args.tasks} tasks, {model_mb:.1f} MB per model (width {args.width}, {args.layers} layers)")
        print(f"{'work':<16s} {'estimate MB':>12s} {'measured MB':>12s} {'measured/estimate':>18s}")
        runs = [("plan", "none"), ("export", "1"), ("export", "2"), ("export", str(args.tasks)), ("curve", "all")]
        env = {**os.environ, "FLEXMERGE_CACHE": str(Path(tmp) / "cache"), "OMP_NUM_THREADS": "1"}
        for kind, size in runs:
            done = subprocess.run([sys.executable, "-c", WORK.format(repo=str(REPO)), kind, size, str(zoo_dir),
                                   str(Path(tmp) / f"out-{kind}-{size}.safetensors")],
                                  capture_output=True, text=True, env=env, check=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            label = f"{kind} {'' if size == 'none' else size}".strip()
            print(f"{label:<16s} {result['estimate'] / 1e6:12.1f} {result['measured'] / 1e6:12.1f} "
                  f"{result['measured'] / result['estimate']:18.2f}")


if __name__ == "__main__":
    main()

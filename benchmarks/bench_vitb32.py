"""Benchmark: a real-size zoo (8 tasks of open_clip's ViT-B-32 visual tower) through plan, merge and evaluation.

The zoo is written as safetensors with the `open_clip_model` architecture kind ("ViT-B-32"), exactly as
`zoo import` writes one: pretrained = open_clip's random init (no weights are downloaded, no network),
task k = pretrained + 1e-3 * (shared + family[k % 4] + noise) directions, a random 10-class head per task
and N random preprocessed images per task. Measured in one run, each phase with its own peak RSS
(VmHWM reset through /proc/self/clear_refs; it includes touched pages of the memory-mapped checkpoints)
and, on CUDA, peak allocated GPU memory:
  plan      open_zoo + build_blocks("component") + build_plan(TA, min linkage, greedy)
  merge     every group the plan ever forms, merged once with TA (GroupMerger, as the app does)
  deploy Sx build_deployment at budget S (1 and M) from the merged groups
  eval Sx   every task's accuracy on its images through evaluation's own per-task path
            (task_eval.Evaluators.task(t).evaluate, which evaluate_deployment runs; without the
            fine-tuned reference pass evaluate_deployment adds, so the two sizes are compared alone)
Printed side by side: eval Mx / eval 1x time (the claim: a bigger deployment costs memory, not time).

Usage: .venv/bin/python benchmarks/bench_vitb32.py [--tasks 8] [--images 64] [--device cpu|cuda] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MODEL = "ViT-B-32"
FAMILIES = 4
CLASSES = 10


def write_vitb32_zoo(folder: Path, num_tasks: int, images: int, seed: int = 0) -> Path:
    from flexmerge_core.zoo import write_zoo
    from flexmerge_core.architectures.open_clip import build_visual, model_config

    torch.manual_seed(seed)
    config = {"name": MODEL}
    size = model_config(config)["vision_cfg"]["image_size"]
    pretrained = {k: v.detach().clone() for k, v in build_visual(config).state_dict().items()}
    directions = [{k: torch.randn_like(v) for k, v in pretrained.items()} for _ in range(FAMILIES + 1)]
    tasks = []
    for k in range(num_tasks):
        shared, family = directions[0], directions[1 + k % FAMILIES]
        state = {n: v + 1e-3 * (shared[n] + family[n] + torch.randn_like(v)) for n, v in pretrained.items()}
        head = {"weight": torch.randn(CLASSES, pretrained["proj"].shape[1]), "bias": torch.zeros(CLASSES)}
        data = (torch.randn(images, 3, size, size), torch.randint(0, CLASSES, (images,)))
        tasks.append({"name": f"task{k:02d}", "state_dict": state, "head": head, "data": data,
                      "classes": [f"class{c}" for c in range(CLASSES)]})
    return write_zoo(folder, {"kind": "open_clip_model", "config": config}, pretrained, tasks,
                     head_input="normalized", name=f"bench-{MODEL}-{num_tasks}")


def _status_mb(field: str) -> float:
    found = re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text())
    return int(found.group(1)) / 1024 if found else float("nan")


class PhaseMeter:
    """Wall time, peak RSS, peak anonymous RSS (sampled) and peak GPU memory (MB) of one phase.

    Peak RSS (VmHWM, reset per phase) counts touched pages of the memory-mapped checkpoints, which the
    kernel may drop at will; anonymous RSS is the process's own memory (merged tensors, activations).
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.rows: list[tuple[str, float, float, float]] = []

    def run(self, label: str, work):
        try:
            Path("/proc/self/clear_refs").write_text("5")   # reset the peak RSS to the current RSS
        except OSError:
            pass
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        peak_anon, stop = [_status_mb("RssAnon")], threading.Event()

        def sample():
            while not stop.wait(0.05):
                peak_anon[0] = max(peak_anon[0], _status_mb("RssAnon"))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.perf_counter()
        result = work()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        stop.set()
        sampler.join()
        gpu = torch.cuda.max_memory_allocated(self.device) / 2**20 if self.device.type == "cuda" else float("nan")
        self.rows.append((label, seconds, _status_mb("VmHWM"), gpu))
        print(f"  {label:<34s} {seconds:9.2f} s   peak RSS {self.rows[-1][2]:7.0f} MB   "
              f"peak anon {peak_anon[0]:7.0f} MB   peak GPU {gpu:7.0f} MB", flush=True)
        return result

    def seconds(self, label: str) -> float:
        return next(row[1] for row in self.rows if row[0] == label)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--images", type=int, default=64, help="held-out images per task")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--workdir", default=None, help="where the zoo is written (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the written zoo")
    parser.add_argument("--zoo", default=None, help="reuse a zoo written by an earlier --keep run")
    parser.add_argument("--write-only", default=None, help=argparse.SUPPRESS)   # the child that writes the zoo
    args = parser.parse_args()
    if args.write_only:
        write_vitb32_zoo(Path(args.write_only), args.tasks, args.images)
        return

    from flexmerge_core.algorithms import get_algorithm
    from flexmerge_core.planning.blocks import build_blocks
    from flexmerge_core.deployment.deploy import build_deployment
    from flexmerge_core.evaluation.task_eval import Evaluators
    from flexmerge_core.deployment.merge import GroupMerger
    from flexmerge_core.planning.plan import build_plan
    from flexmerge_core.planning.similarity import pick_device
    from flexmerge_core.zoo import open_zoo

    device = pick_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {device} ({name}); torch {torch.__version__}; {args.tasks} tasks of {MODEL}, "
          f"{args.images} images per task", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-vitb32-", dir=args.workdir))
    os.environ.setdefault("FLEXMERGE_CACHE", str(workdir / "cache"))
    try:
        folder = Path(args.zoo) if args.zoo else workdir / "zoo"
        if not args.zoo:   # written by a child process, so this one's memory figures start clean
            start = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--write-only", str(folder), "--tasks", str(args.tasks),
                            "--images", str(args.images)], check=True)
            print(f"  wrote the zoo in {time.perf_counter() - start:.1f} s ({folder})", flush=True)
        meter = PhaseMeter(device)
        algorithm = get_algorithm("ta")

        def plan_phase():
            zoo = open_zoo(folder)
            spec = build_blocks(zoo.param_names, zoo.param_shapes, "component")
            return zoo, spec, build_plan(zoo, spec, algorithm)

        zoo, spec, plan = meter.run("plan (open + blocks + plan)", plan_phase)
        merger = GroupMerger(zoo, spec, algorithm, device=device)
        groups = [(e.block, e.group_a + e.group_b) for e in plan.events]
        meter.run(f"merge all {len(groups)} TA groups", lambda: [merger.result(b, g) for b, g in groups])
        evaluators = Evaluators(zoo, device)
        for t in range(args.tasks):   # encoder, images and heads loaded once, outside the timed evaluations
            evaluators.task(t)
        for budget in (1, args.tasks):
            deployment = meter.run(f"deploy {budget}x",
                                   lambda b=budget: build_deployment(zoo, plan, algorithm, b, merger=merger))

            def evaluate(deployment=deployment):
                scores = [evaluators.task(t).evaluate(deployment.encoder_state_dict(t)) for t in range(args.tasks)]
                return float(sum(s.scores.sum() for s in scores)) / sum(s.n for s in scores)

            accuracy = meter.run(f"eval {budget}x ({args.tasks * args.images} images)", evaluate)
            print(f"      size {deployment.size:.3f}, stored {deployment.stored_bytes / 2**20:.0f} MB, "
                  f"accuracy {accuracy:.3f}", flush=True)
        params = plan.model_params
        print(f"model: {params / 1e6:.1f} M merged parameters per task, {len(spec.blocks)} blocks, "
              f"{len(plan.events)} merge events")
        images = args.tasks * args.images
        ratio = meter.seconds(f"eval {args.tasks}x ({images} images)") / meter.seconds(f"eval 1x ({images} images)")
        print(f"ratio eval {args.tasks}x / eval 1x time: {ratio:.2f}")
        print(f"ratio merge-all / plan time: {meter.seconds(f'merge all {len(groups)} TA groups') / meter.seconds('plan (open + blocks + plan)'):.2f}")
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

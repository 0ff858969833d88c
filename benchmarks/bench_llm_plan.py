"""Benchmark: planning a language-model zoo from sharded HF checkpoints vs one streamed read + Gram pass.

A Llama-shaped model (hidden 2048, intermediate 5632, 16 layers, 16 heads / 4 KV heads, vocabulary 32000:
~0.85 B parameters, ~1.7 GB in bf16) is written with random weights as sharded safetensors
(`model.safetensors.index.json` + 500 MB shards, as save_pretrained writes them), the pretrained model
and M fine-tunes (pretrained + small noise), into a zoo of kind `hf_causal_lm`. Then, each in a fresh
process (alternating, `--repeats` times, best run):
- plain pass: every tensor of every model read once with safetensors slices (no zoo) in row slabs of 4M
  values, task vectors formed in float32, the M x M Gram matrix accumulated; nothing else;
- plan: open_zoo + component blocks + build_plan("ta", min linkage, greedy), no plan cache.
Peak memory: the process's anonymous RSS (sampled every 20 ms) above its level before the pass; pages of
the memory-mapped checkpoints are the kernel's page cache (reported separately as VmHWM).
Goals: plan <= 1.5x the plain pass; plan's peak anonymous RSS above baseline <= 0.25x one model's bytes.
Disk: (M + 1) models are written; free disk is checked first (fewer --layers / --tasks when short).

Usage: .venv/bin/python benchmarks/bench_llm_plan.py [--tasks 8] [--layers 16] [--hidden 2048]
       [--dtype bf16|fp16] [--repeats 2] [--workdir /tmp] [--keep] [--zoo DIR (reuse a kept zoo)]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SHARD_BYTES = 500 << 20
SLAB = 1 << 22          # values per read in the plain pass (the engine's planning slab, similarity.STREAM_SLAB)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def llama_config(hidden: int, layers: int) -> dict:
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=32000, hidden_size=hidden, intermediate_size=int(hidden * 2.75),
                       num_hidden_layers=layers, num_attention_heads=16, num_key_value_heads=4).to_dict()


def _write_sharded(folder: Path, tensors) -> None:
    """save_pretrained's layout: shards of ~SHARD_BYTES and the index naming each tensor's shard."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    weight_map, shard, size, count = {}, {}, 0, 0

    def flush():
        nonlocal shard, size, count
        if shard:
            count += 1
            name = f"model-{count:05d}.safetensors"
            save_file(shard, str(folder / name), metadata={"format": "pt"})
            weight_map.update({k: name for k in shard})
            shard, size = {}, 0

    for name, tensor in tensors:
        shard[name] = tensor
        size += tensor.numel() * tensor.element_size()
        if size >= SHARD_BYTES:
            flush()
    flush()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def model_tensors(layout: dict, dtype: torch.dtype, task=None):
    """(name, tensor) of the pretrained model (N(0, 0.02) weights, norms 1), or of fine-tune `task`:
    pretrained + 1e-3 * (a direction shared by all tasks + the task's own noise); one tensor at a time."""
    for i, (name, (shape, _)) in enumerate(layout.items()):
        tensor = torch.ones(shape) if len(shape) == 1 else torch.randn(shape, generator=_seeded(0, i)) * 0.02
        if task is not None:
            shared, own = _seeded(1, i), _seeded(task + 2, i)
            tensor += 1e-3 * (torch.randn(shape, generator=shared) + torch.randn(shape, generator=own))
        yield name, tensor.to(dtype)


def _seeded(stream: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(stream * 1_000_003 + index)


def write_zoo(folder: Path, config: dict, num_tasks: int, dtype: torch.dtype) -> None:
    from flexmerge_core.architectures.registry import state_layout
    from flexmerge_core.zoo.manifest import FORMAT, MANIFEST_NAME

    layout = state_layout("hf_causal_lm", config)
    _write_sharded(folder / "pretrained", model_tensors(layout, dtype))
    tasks = []
    for k in range(num_tasks):
        _write_sharded(folder / f"task{k}", model_tensors(layout, dtype, task=k))
        tasks.append({"name": f"task{k}", "checkpoint": f"task{k}/model.safetensors.index.json"})
    manifest = {"format": FORMAT, "name": f"bench-llama-{num_tasks}",
                "architecture": {"kind": "hf_causal_lm", "config": config},
                "pretrained": "pretrained/model.safetensors.index.json", "tasks": tasks, "recipe": {}}
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))


def plain_pass(folder: Path) -> dict:
    """Each tensor of each model read once, in row slabs of SLAB values (safetensors slices, no zoo); the task
    vectors' Gram matrix accumulated with one product per slab: the least any plan from these files must do."""
    from safetensors import safe_open

    manifest = json.loads((folder / "zoo.json").read_text())

    def handles(index: str) -> dict:
        path = folder / index
        weight_map = json.loads(path.read_text())["weight_map"]
        files = {s: safe_open(str(path.parent / s), framework="pt") for s in set(weight_map.values())}
        return {n: files[s].get_slice(n) for n, s in weight_map.items()}

    start = time.perf_counter()
    base = handles(manifest["pretrained"])
    tasks = [handles(t["checkpoint"]) for t in manifest["tasks"]]
    m = len(tasks)
    gram = torch.zeros((m, m), dtype=torch.float64)
    for name, view in base.items():
        shape = view.get_shape()
        step = max(1, SLAB // max(1, math.prod(shape[1:])))
        for row in range(0, shape[0], step):
            theta = view[row:row + step].float()
            rows = torch.stack([t[name][row:row + step].float() - theta for t in tasks]).reshape(m, -1)
            gram += (rows @ rows.T).double()
    return {"seconds": time.perf_counter() - start, "trace": float(gram.trace())}


def plan_pass(folder: Path) -> dict:
    from flexmerge_core.algorithms import get_algorithm
    from flexmerge_core.planning.blocks import build_blocks
    from flexmerge_core.planning.plan import build_plan
    from flexmerge_core.zoo import open_zoo

    start = time.perf_counter()
    zoo = open_zoo(folder)
    spec = build_blocks(zoo.param_names, zoo.param_shapes, "component")
    plan = build_plan(zoo, spec, get_algorithm("ta"))
    return {"seconds": time.perf_counter() - start, "blocks": len(spec.blocks), "events": len(plan.events)}


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child_main(kind: str, folder: Path) -> None:
    """One pass; the baseline is taken with the libraries both passes use already imported."""
    import safetensors
    import transformers

    versions = {"transformers": transformers.__version__, "safetensors": safetensors.__version__}
    baseline = _status_mb("RssAnon")
    peak, stop = [baseline], threading.Event()

    def sample():
        while not stop.wait(0.02):
            peak[0] = max(peak[0], _status_mb("RssAnon"))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    result = (plain_pass if kind == "plain" else plan_pass)(folder)
    stop.set()
    sampler.join()
    print(json.dumps({"anon_above_baseline_mb": peak[0] - baseline, "vm_hwm_mb": _status_mb("VmHWM"), **result,
                      **versions}))


def run_child(kind: str, folder: Path, cache: Path) -> dict:
    env = {**os.environ, "FLEXMERGE_CACHE": str(cache), "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run([sys.executable, __file__, "--child", kind, str(folder)], check=True,
                          capture_output=True, text=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workdir", default=tempfile.gettempdir())
    parser.add_argument("--keep", action="store_true", help="keep the written zoo")
    parser.add_argument("--zoo", default=None, help="reuse a zoo written by an earlier --keep run (same options)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.child[0], Path(args.child[1]))
        return
    config = llama_config(args.hidden, args.layers)
    from flexmerge_core.architectures.registry import state_layout

    params = sum(math.prod(s) for s, _ in state_layout("hf_causal_lm", config).values())
    model_bytes = params * DTYPES[args.dtype].itemsize
    needed, free = (args.tasks + 1) * model_bytes * 1.02, shutil.disk_usage(args.workdir).free
    print(f"{params / 1e9:.2f} B parameters, {model_bytes / 1e9:.2f} GB per model ({args.dtype}); "
          f"{args.tasks + 1} models need {needed / 1e9:.1f} GB, {free / 1e9:.1f} GB free in {args.workdir}")
    if args.zoo is None and needed > free * 0.8:
        sys.exit("not enough free disk: pass fewer --layers or --tasks")
    work = Path(tempfile.mkdtemp(prefix="bench_llm_plan_", dir=args.workdir))
    zoo = Path(args.zoo) if args.zoo else work / "zoo"
    try:
        if args.zoo is None:
            start = time.perf_counter()
            write_zoo(zoo, config, args.tasks, DTYPES[args.dtype])
            print(f"zoo written in {time.perf_counter() - start:.0f} s")
        runs = {"plain": [], "plan": []}
        for kind in ("plain", "plan") * args.repeats:
            runs[kind].append(run_child(kind, zoo, work / "cache"))
            print(f"  {kind}: {runs[kind][-1]}", flush=True)
        plain, plan = (min(runs[k], key=lambda r: r["seconds"]) for k in ("plain", "plan"))
        anon = max(r["anon_above_baseline_mb"] for r in runs["plan"])
        print(f"plain streamed read + Gram pass : {plain['seconds']:8.1f} s  (peak anonymous RSS above baseline "
              f"{max(r['anon_above_baseline_mb'] for r in runs['plain']):.0f} MB)")
        print(f"plan from files                 : {plan['seconds']:8.1f} s  ({plan['blocks']} blocks, "
              f"{plan['events']} events)")
        print(f"ratio plan / plain pass         : {plan['seconds'] / plain['seconds']:8.2f}   (goal <= 1.5)")
        print(f"plan peak anonymous RSS above baseline: {anon:.0f} MB = {anon * 2**20 / model_bytes:.3f} x one model "
              f"({model_bytes / 2**20:.0f} MB)   (goal <= 0.25; VmHWM incl. mapped files "
              f"{max(r['vm_hwm_mb'] for r in runs['plan']):.0f} MB)")
    finally:
        if args.keep and args.zoo is None:
            shutil.rmtree(work / "cache", ignore_errors=True)
            print(f"zoo kept at {zoo}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

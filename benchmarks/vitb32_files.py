"""Helpers shared by the export and spectrum benchmarks: a ViT-B-32-shaped zoo written tensor by tensor,
and child processes measured alone (wall time and peak RSS).

Why tensor by tensor: 30 fine-tuned ViT-B-32 visual towers are ~10.5 GB in fp32; generating a task's
tensors from per-(direction, tensor) seeded generators lets the writer hold one tensor at a time, so
writing the zoo needs no more memory than one tensor, whatever the number of tasks.
Task k = pretrained + 1e-3 * (shared + family[k % 4] + own noise), as in bench_vitb32.py, with a random
10-class head per task and no held-out data (the export and merge benchmarks never evaluate).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from flexmerge_core.zoo.writer import FileSource  # noqa: E402

MODEL = "ViT-B-32"
FAMILIES = 4
CLASSES = 10
FP32_MODEL_BYTES = 88_000_000 * 4     # the visual tower's ~88 M parameters

# the plain averaging script the benchmarks compare against: argv = zoo folder, output file
AVERAGE = """
import sys, json, torch
from safetensors.torch import load_file, save_file
zoo, out = sys.argv[1], sys.argv[2]
manifest = json.load(open(f"{zoo}/zoo.json"))
total = None
for task in manifest["tasks"]:
    state = load_file(f"{zoo}/{task['checkpoint']}")
    if total is None:
        total = {k: v.to(torch.float32, copy=True) for k, v in state.items()}
    else:
        for k, v in state.items():
            total[k] += v
    del state
save_file({k: v / len(manifest["tasks"]) for k, v in total.items()}, out)
"""


def _direction(index: int, tensor_index: int, like: torch.Tensor) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1_000_003 * (index + 1) + tensor_index)
    return torch.randn(like.shape, generator=gen)


class _TaskFile(FileSource):
    """A task checkpoint (a zoo FileSource) generated and written one tensor at a time."""

    def __init__(self, pretrained: dict[str, torch.Tensor], task: int, dtype: torch.dtype):
        self.pretrained, self.task, self.dtype = pretrained, task, dtype

    def write(self, folder: Path, stem: str) -> str:
        from flexmerge_core.zoo.safetensors_stream import StreamedSafetensors

        layout = {n: (tuple(v.shape), self.dtype) for n, v in self.pretrained.items()}
        with StreamedSafetensors(folder / f"{stem}.safetensors", layout) as out:
            for i, (name, base) in enumerate(self.pretrained.items()):
                delta = (_direction(0, i, base) + _direction(1 + self.task % FAMILIES, i, base)
                         + _direction(100 + self.task, i, base))
                out.write(name, base.to(torch.float32) + 1e-3 * delta)
        return f"{stem}.safetensors"


def write_vitb32_zoo(folder: Path, num_tasks: int, dtype: torch.dtype = torch.float32) -> Path:
    """A zoo of `num_tasks` ViT-B-32 visual towers (open_clip shapes, random init, no download)."""
    from flexmerge_core.architectures.open_clip import build_visual
    from flexmerge_core.zoo import write_zoo

    torch.manual_seed(0)
    config = {"name": MODEL}
    pretrained = {k: v.detach().to(dtype).clone() for k, v in build_visual(config).state_dict().items()}
    width = pretrained["proj"].shape[1]
    tasks = [{"name": f"task{k:02d}", "state_dict": _TaskFile(pretrained, k, dtype),
              "head": {"weight": torch.randn(CLASSES, width), "bias": torch.zeros(CLASSES)},
              "classes": [f"class{c}" for c in range(CLASSES)]} for k in range(num_tasks)]
    return write_zoo(folder, {"kind": "open_clip_model", "config": config}, pretrained, tasks,
                     head_input="normalized", name=f"bench-{MODEL}-{num_tasks}")


def check_free_disk(folder: Path, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed * 1.2:
        raise SystemExit(f"{folder}: {free / 1e9:.1f} GB free, the zoo needs about {needed / 1e9:.1f} GB "
                         f"(use --tasks, --fp16 or --workdir)")


def measured(command: list[str], env: dict | None = None, checkout: Path = REPO) -> tuple[float, float, str, float]:
    """(wall seconds, peak RSS in MB, stdout, CPU seconds: user + system) of one child process, measured alone
    (os.wait4's rusage), run with `checkout` (this repository by default) as its folder and on its PYTHONPATH.
    On a shared, loaded machine wall time mostly measures waiting for a core: CPU time is the steadier figure."""
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(checkout), **(env or {})}
    child = subprocess.Popen(command, stdout=subprocess.PIPE, env=env, cwd=checkout, text=True)
    out = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed with exit code {child.returncode}")
    return seconds, usage.ru_maxrss / 1024, out, usage.ru_utime + usage.ru_stime

"""Memory guard: estimate what a zoo at a size needs and refuse up front when the machine lacks it.

Why: the kernel's OOM killer ends a process without a word (and a dashboard with it). Everything the
engine holds is predictable from file headers: planning streams one block of M task vectors at a
time; a deployment at size S stores about S models' merged parameters (fp32 results; fine-tuned
blocks at their own dtype) plus the pretrained model, unmerged tensors and heads; evaluation adds one
encoder. So before loading anything, `check_memory` compares that estimate (with a safety margin)
with the memory this process can still get (machine.py: /proc/meminfo, the cgroup limit,
`FLEXMERGE_MEMORY_LIMIT`; free GPU memory when work runs on CUDA).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

from flexmerge_core.errors import ResourceError
from flexmerge_core.machine import LIMIT_ENV, available_gpu_memory, gigabytes, require_memory

SAFETY_MARGIN = 1.25                 # allocator slack, temporaries of the merge algorithms, activations
STREAM_COPIES = 3                    # a block's stacked task vectors, its preprocessed copy, the Gram's chunk


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes the work needs at its peak, and the parts it was computed from (for messages and tests)."""

    needed: int
    planning: int          # one streamed block of M task vectors, with copies
    deployment: int        # the stored tensors of a deployment at the size (0 when only planning)
    encoder: int           # one assembled encoder for evaluation (0 when only planning)


def _numel(shape) -> int:
    return math.prod(int(d) for d in shape)


def _compute_itemsize(dtype) -> int:
    """Bytes per value once loaded for compute: float64 stays, everything else works in float32."""
    return 8 if dtype.itemsize == 8 and dtype.is_floating_point else 4


def estimate_memory(zoo, size: Union[float, str, None] = None, spec=None) -> MemoryEstimate:
    """Peak bytes for planning `zoo` and, when `size` is given (a budget in model units, or "all": a
    curve over every size), building and evaluating its deployment(s). Needs only file headers."""
    from flexmerge_core.planning.blocks import build_blocks

    m = len(zoo.task_names)
    spec = spec or build_blocks(zoo.param_names, zoo.param_shapes, granularity="component")
    largest_block = max(block.numel for block in spec.blocks)
    planning = STREAM_COPIES * m * largest_block * 4
    if size is None:
        return MemoryEstimate(needed=int(SAFETY_MARGIN * planning), planning=planning, deployment=0, encoder=0)
    # a curve ("all") walks every size: the merger's memo keeps each block's M fine-tuned blocks and the
    # M - 1 merged groups the plan forms there (benchmarks/bench_memory_guard.py measures it)
    stored_models = 2.0 * m - 1 if size == "all" else min(max(float(size), 1.0), float(m))
    merged = sum(_numel(zoo.param_shapes[n]) for n in zoo.param_names)
    encoder = sum(_numel(s) * _compute_itemsize(zoo.param_dtypes[n]) for n, s in zoo.param_shapes.items())
    per_task = sum(_numel(zoo.param_shapes[n]) * 4 for n in zoo.unmerged_names) * m
    pretrained = encoder   # kept once beside the stored groups (mask methods reconstruct from it)
    deployment = int(stored_models * merged * 4) + pretrained + per_task
    needed = int(SAFETY_MARGIN * max(planning, deployment + encoder))
    return MemoryEstimate(needed=needed, planning=planning, deployment=deployment, encoder=encoder)


def check_memory(zoo, size: Union[float, str, None] = None, spec=None) -> MemoryEstimate:
    """The estimate, or ResourceError when it exceeds the memory available right now: host memory, and
    where work runs on CUDA (merged groups and the evaluated encoder live there) free GPU memory too."""
    if isinstance(size, (int, float)) and not isinstance(size, bool) and not (math.isfinite(size) and size > 0):
        size = None   # a bad size is reported by the budget check that follows, with its own message
    estimate = estimate_memory(zoo, size, spec)
    what = ("planning" if size is None else "a curve over all sizes" if size == "all"
            else f"a deployment at size {float(size):g}x")
    where = f"{what} of zoo '{zoo.name}' ({len(zoo.task_names)} tasks)"
    require_memory(estimate.needed, where, "choose a smaller size, fewer tasks")
    if size is not None:
        gpu = available_gpu_memory()
        gpu_needed = int(SAFETY_MARGIN * (estimate.deployment + estimate.encoder))
        if gpu is not None and gpu_needed > gpu:
            raise ResourceError(f"not enough GPU memory for {where}: needs about {gigabytes(gpu_needed)}, "
                                f"{gigabytes(gpu)} free on the GPU (choose a smaller size, fewer tasks, or hide "
                                f"the GPU with CUDA_VISIBLE_DEVICES= to run on the CPU)")
    return estimate

"""Memory guard: estimate what a zoo at a size needs and refuse up front when the machine lacks it.

Why: the kernel's OOM killer ends a process without a word (and a dashboard with it). Everything the
engine holds is predictable from file headers: planning streams one block of M task vectors at a
time; a deployment at size S stores about S models' merged parameters (fp32 results; fine-tuned
blocks at their own dtype) plus the pretrained model, unmerged tensors and heads; evaluation adds one
encoder. So before loading anything, `check_memory` compares that estimate (with a safety margin)
with the memory this process can still get, read from /proc/meminfo and the cgroup limit (no psutil).
`FLEXMERGE_MEMORY_LIMIT` (bytes, or with a K/M/G suffix) caps the memory considered available.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from flexmerge_core.errors import InvalidArgumentError, ResourceError

SAFETY_MARGIN = 1.25                 # allocator slack, temporaries of the merge algorithms, activations
STREAM_COPIES = 3                    # a block's stacked task vectors, its preprocessed copy, the Gram's chunk
LIMIT_ENV = "FLEXMERGE_MEMORY_LIMIT"
_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes the work needs at its peak, and the parts it was computed from (for messages and tests)."""

    needed: int
    planning: int          # one streamed block of M task vectors, with copies
    deployment: int        # the stored tensors of a deployment at the size (0 when only planning)
    encoder: int           # one assembled encoder for evaluation (0 when only planning)


def parse_bytes(text: str, option: str = LIMIT_ENV) -> int:
    """'1500', '512M', '2G', '1.5g' -> bytes (`option`: the setting named in errors)."""
    value = text.strip().upper().removesuffix("B")
    suffix = value[-1:] if value[-1:] in _SUFFIXES and not value[-1:].isdigit() else ""
    try:
        number = float(value[: len(value) - len(suffix)])
    except ValueError:
        raise InvalidArgumentError(f"{option}={text!r} is not a number of bytes (e.g. 4G, 512M)") from None
    if not math.isfinite(number) or number <= 0:
        raise InvalidArgumentError(f"{option}={text!r} must be a positive number of bytes")
    return int(number * _SUFFIXES[suffix])


def _meminfo_available(path: Path) -> Optional[int]:
    try:
        for line in path.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024   # the kernel reports kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_headroom(folder: Path) -> Optional[int]:
    """cgroup v2: memory.max - memory.current (None when unlimited or not readable)."""
    try:
        limit = (folder / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int((folder / "memory.current").read_text().strip()))
    except (OSError, ValueError):
        return None


def available_memory(meminfo: Path = Path("/proc/meminfo"),
                     cgroup: Path = Path("/sys/fs/cgroup")) -> Optional[int]:
    """Bytes this process can still allocate: the least of MemAvailable, the cgroup headroom and
    $FLEXMERGE_MEMORY_LIMIT; None when none of them can be read (then nothing is refused)."""
    known = [b for b in (_meminfo_available(meminfo), _cgroup_headroom(cgroup)) if b is not None]
    if os.environ.get(LIMIT_ENV):
        known.append(parse_bytes(os.environ[LIMIT_ENV]))
    return min(known) if known else None


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


def _gigabytes(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e7 else f"{n / 1e6:.2f} MB"


def check_memory(zoo, size: Union[float, str, None] = None, spec=None) -> MemoryEstimate:
    """The estimate, or ResourceError when it exceeds the memory available right now."""
    if isinstance(size, (int, float)) and not isinstance(size, bool) and not (math.isfinite(size) and size > 0):
        size = None   # a bad size is reported by the budget check that follows, with its own message
    estimate = estimate_memory(zoo, size, spec)
    available = available_memory()
    if available is not None and estimate.needed > available:
        what = ("planning" if size is None else "a curve over all sizes" if size == "all"
                else f"a deployment at size {float(size):g}x")
        raise ResourceError(f"not enough memory for {what} of zoo '{zoo.name}' ({len(zoo.task_names)} tasks): "
                            f"needs about {_gigabytes(estimate.needed)}, {_gigabytes(available)} available "
                            f"(choose a smaller size, fewer tasks, or set {LIMIT_ENV} if this is wrong)")
    return estimate

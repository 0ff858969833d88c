"""What this machine can give right now: host memory (RAM, cgroup, $FLEXMERGE_MEMORY_LIMIT) and GPU memory.

Why its own module, at the bottom of the stages: the memory guard of deployments (resources.py) and
the guard of `zoo import` (importers/) compare against the same numbers, read from /proc/meminfo and the cgroup limit
(no psutil) and, for CUDA, from torch.cuda.mem_get_info.
`FLEXMERGE_MEMORY_LIMIT` (bytes, or with a K/M/G/T suffix) caps the memory considered available.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional

from flexmerge_core.errors import InvalidArgumentError, ResourceError

LIMIT_ENV = "FLEXMERGE_MEMORY_LIMIT"
_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
LARGEST_LIMIT = 1 << 63   # 8 EiB: more than any machine, and the largest byte count an int64 holds


def parse_bytes(text: str) -> int:
    """'1500', '512M', '2G', '1.5g' -> bytes."""
    value = text.strip().upper().removesuffix("B")
    suffix = value[-1:] if value[-1:] in _SUFFIXES and not value[-1:].isdigit() else ""
    try:
        number = float(value[: len(value) - len(suffix)])
    except ValueError:
        raise InvalidArgumentError(f"{LIMIT_ENV}={text!r} is not a number of bytes (e.g. 4G, 512M)") from None
    if not math.isfinite(number) or number <= 0:
        raise InvalidArgumentError(f"{LIMIT_ENV}={text!r} must be a positive number of bytes")
    if number * _SUFFIXES[suffix] >= LARGEST_LIMIT:
        raise InvalidArgumentError(f"{LIMIT_ENV}={text!r} is more than any machine has (at most 8 EiB); "
                                   f"unset it to use what this machine has")
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


def available_gpu_memory(device=None) -> Optional[int]:
    """Free bytes on the CUDA device work runs on (None without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def gigabytes(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e7 else f"{n / 1e6:.2f} MB"


def require_memory(needed: int, what: str, advice: str) -> None:
    """ResourceError naming `what` when `needed` bytes exceed the host memory available right now."""
    available = available_memory()
    if available is not None and needed > available:
        raise ResourceError(f"not enough memory for {what}: needs about {gigabytes(needed)}, "
                            f"{gigabytes(available)} available ({advice}, or set {LIMIT_ENV} if this is wrong)")

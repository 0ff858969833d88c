"""Seeds and schedules shared by the demo builders (vision and text).

Why one place: every random stream of a build is named by (seed, stream, index), so a job's numbers do
not depend on which jobs ran before it, in which process, or on Python's hash(); both builders draw
their generators and their learning-rate schedule from here.
"""
from __future__ import annotations

import math

import numpy as np
import torch


def rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """Independent generators per (seed, stream, index): stable across runs and Python versions."""
    return np.random.default_rng([seed, stream, index])


def torch_generator(seed: int, stream: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(rng(seed, stream, index).integers(2**62)))


def cosine_lr(step: int, total: int, base: float) -> float:
    """Linear warm-up over the first 5% of the steps, then cosine decay to zero."""
    warmup = max(1, total // 20)
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

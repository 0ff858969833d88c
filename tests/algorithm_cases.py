"""Shared inputs for the algorithm tests: devices, seeded random blocks with exactly summable values."""
from __future__ import annotations

import torch

from flexmerge_core.algorithms.base import flatten_rows as flat, unflatten_row as unflat  # noqa: F401 (layout only)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SHAPES = [{"w": (5, 3), "b": (5,)}, {"w": (4, 6)}, {"k": (2, 3, 2, 2), "b": (7,)}]
GROUP_SIZES = [2, 3, 4, 5, 6]


def dyadic_block(shapes: dict, rows: int, seed: int, device="cpu", zeros: float = 0.2) -> dict:
    """Values k/4 with |k| <= 8 (some zeros): every sum is exact, so results can be compared exactly."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        t = torch.randint(-8, 9, (rows, *shape), generator=g).float() / 4
        t[torch.rand(t.shape, generator=g) < zeros] = 0.0
        out[name] = t.to(device)
    return out


def reference_ties_merge(rows: torch.Tensor, lam: float) -> torch.Tensor:
    """Coordinate by coordinate, as the textbook states it."""
    g, d = rows.shape
    signs = []
    for j in range(d):
        total = sum(float(rows[i, j]) for i in range(g))
        signs.append((total > 0) - (total < 0))
    fallback = -1 if sum(signs) < 0 else 1
    out = torch.zeros(d)
    for j in range(d):
        s = signs[j] or fallback
        picked = [float(rows[i, j]) for i in range(g) if float(rows[i, j]) * s > 0]
        out[j] = lam * (sum(picked) / len(picked) if picked else 0.0)
    return out

"""Shared inputs for the algorithm tests: devices, seeded random blocks with exactly summable values."""
from __future__ import annotations

import torch

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


def flat(block: dict) -> torch.Tensor:
    """Rows = members, columns = all tensors of the block flattened in name order."""
    return torch.cat([block[n].reshape(block[n].shape[0], -1) for n in block], dim=1)


def unflat(vector: torch.Tensor, like: dict) -> dict:
    out, start = {}, 0
    for n, t in like.items():
        size = t[0].numel()
        out[n] = vector[start:start + size].reshape(t.shape[1:])
        start += size
    return out

"""Shared inputs for the algorithm tests: devices, seeded random blocks with exactly summable values."""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

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


def reference_ties_merge(rows: torch.Tensor, lam: float, dtype=torch.float32) -> torch.Tensor:
    """Coordinate by coordinate, as the textbook states it (in Python floats, stored as `dtype`)."""
    g, d = rows.shape
    signs = []
    for j in range(d):
        total = sum(float(rows[i, j]) for i in range(g))
        signs.append((total > 0) - (total < 0))
    fallback = -1 if sum(signs) < 0 else 1
    out = torch.zeros(d, dtype=dtype)
    for j in range(d):
        s = signs[j] or fallback
        picked = [float(rows[i, j]) for i in range(g) if float(rows[i, j]) * s > 0]
        out[j] = lam * (sum(picked) / len(picked) if picked else 0.0)
    return out


@dataclass(frozen=True)
class FakeBlock:
    name: str
    params: tuple
    numel: int


class FakeSpec:
    """One block per tensor (the `parameter` granularity), or the given name groups."""

    def __init__(self, shapes: dict, groups=None):
        groups = groups or [(n,) for n in shapes]
        self.blocks = [FakeBlock("+".join(g), tuple(g), sum(math.prod(shapes[n]) for n in g)) for g in groups]


class FakeZoo:
    """The slice of the Zoo interface the merger and baselines use; counts what it is asked to load."""

    fingerprint = "fake-zoo"

    def __init__(self, num_tasks: int, shapes: dict, seed: int = 0, vectors=None):
        self.vectors = vectors if vectors is not None else dyadic_block(shapes, num_tasks, seed)
        self.param_shapes = {n: tuple(t.shape[1:]) for n, t in self.vectors.items()}
        self.task_names = [f"task{i}" for i in range(num_tasks)]
        self.param_shapes = {n: tuple(t.shape[1:]) for n, t in self.vectors.items()}
        self.loads = []

    def task_vectors(self, names, tasks=None, into=None):
        self.loads.append((tuple(names), None if tasks is None else tuple(tasks)))
        rows = slice(None) if tasks is None else list(tasks)
        if into is not None:
            return {n: into[n].copy_(self.vectors[n][rows]) for n in names}
        return {n: self.vectors[n][rows].clone() for n in names}

    def task_vectors_apart(self, names, tasks=None):
        self.loads.append((tuple(names), None if tasks is None else tuple(tasks)))
        rows = range(len(self.task_names)) if tasks is None else tasks
        return [{n: self.vectors[n][t].clone() for n in names} for t in rows]


def reference_dare(block: dict, tasks: list, p: float, seed: int) -> dict:
    """The documented scheme: one CPU generator per (seed, task, tensor name) from a SHA-256 digest."""
    out = {}
    for name, t in block.items():
        rows = []
        for row, task in zip(t.cpu(), tasks):
            digest = hashlib.sha256(f"dare/{seed}/{task}/{name}".encode()).digest()
            gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
            draw = torch.rand(row.shape, generator=gen)
            rows.append(torch.where(draw >= p, row / (1 - p), torch.zeros_like(row)))
        out[name] = torch.stack(rows)
    return out


def same(a, b) -> bool:
    """Two MergeResults hold equal tensors (torch.equal) in every part."""
    parts = [(a.unified, b.unified), (a.masks, b.masks), (a.originals, b.originals)]
    if any((x is None) != (y is None) or (x is not None and (x.keys() != y.keys() or
                                                               not all(torch.equal(x[n], y[n]) for n in x)))
           for x, y in parts):
        return False
    return (a.scales is None) == (b.scales is None) and (a.scales is None or torch.equal(a.scales, b.scales))


def group_rows(zoo, algorithm, block_names, members) -> dict:
    """A merged group's rows computed by themselves: prepared over the whole zoo, only its members read
    and preprocessed."""
    algorithm.prepare(lambda: iter([{n: t.clone() for n, t in zoo.vectors.items()}]))
    return algorithm.preprocess_block({n: zoo.vectors[n][list(members)].clone() for n in block_names}, tasks=members)


def alone(zoo, algorithm, block_names, members):
    """The group computed by itself (a group the algorithm does not merge: its members' raw rows)."""
    if algorithm.merges_group(len(members)):
        return algorithm.merge(group_rows(zoo, algorithm, block_names, members), members)
    return algorithm.merge({n: zoo.vectors[n][list(members)].clone() for n in block_names}, members)

"""Deployment size in model units (ALGORITHMS.md section 1).

Why integers: every block cost is a multiple of 1/32 of a block, so sizes are kept as exact integer
"32nds of a parameter" and divided once at the end. Event sizes, partition sizes and the list of
achievable sizes then agree bit for bit, and budget comparisons never flip on rounding.
"""
from __future__ import annotations

from typing import Iterable, Sequence

from flexmerge_core.errors import InvalidArgumentError

STORAGE_RULES = ("standard", "mask")
MASK_BITS = 32          # a 1-bit mask per task against 32-bit parameters
MASK_MIN_GROUP = 3      # mask methods store groups of <= 2 tasks as their original blocks


def check_storage(storage: str) -> str:
    if storage not in STORAGE_RULES:
        raise InvalidArgumentError(f"unknown storage rule {storage!r}: choose one of {', '.join(STORAGE_RULES)}")
    return storage


def block_cost_32nds(group_sizes: Iterable[int], storage: str) -> int:
    """The cost of one block in 1/32 block units, given the sizes of its task groups."""
    sizes = list(group_sizes)
    if storage == "standard":
        return MASK_BITS * len(sizes)
    check_storage(storage)
    cost = 0
    for g in sizes:
        cost += MASK_BITS * g if g < MASK_MIN_GROUP else MASK_BITS + g
    if any(g >= MASK_MIN_GROUP for g in sizes):
        cost += MASK_BITS  # the pretrained block, stored once
    return cost


def size_from_32nds(total_32nds: int, model_params: int) -> float:
    """Size in model units from the exact sum of numel * cost (in 32nds)."""
    return total_32nds / (MASK_BITS * model_params)


def size_of_partition(groups: Sequence[Sequence[Sequence[int]]], block_numels: Sequence[int],
                      storage: str) -> float:
    """Size in model units of a partition: groups[b] = the task groups of block b."""
    check_storage(storage)
    if len(groups) != len(block_numels):
        raise InvalidArgumentError(f"partition has {len(groups)} blocks but {len(block_numels)} block sizes were given")
    total = sum(int(n) * block_cost_32nds((len(g) for g in block_groups), storage)
                for n, block_groups in zip(block_numels, groups))
    return size_from_32nds(total, sum(int(n) for n in block_numels))

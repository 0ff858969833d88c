"""Bytes of a deployment, known from its partition alone: exactly the merged-parameter tensors that
save_deployment writes (Deployment.stored_bytes), at the zoo's dtypes or at an export dtype.

Why here (the deployment stage): bytes depend on the deployment's storage format, which deploy.py
defines and the plan's model units leave out: masks are packed 8 per byte per member and tensor (so
each mask row rounds up to whole bytes), every masked group stores one float32 rescaler per member
(EMR's gammas, Consensus's ones), and the pretrained block is stored once per block holding a masked
group. In model units those cost "1/32 per entry" and nothing; in bytes they are counted exactly, so
a budget in megabytes picks the deployment whose file really fits. Heads and the manifest's unmerged
per-task tensors ride along in the file (its `tasks/` entries) and are left out, as they are of the size.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence

import torch

from flexmerge_core.errors import BudgetError, InvalidArgumentError
from flexmerge_core.planning.size_accounting import MASK_MIN_GROUP

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SCALE_BYTES = torch.float32.itemsize     # one rescaler per member of a masked group (deploy.GroupStore)
MEGABYTE = 10 ** 6


def parse_dtype(name: Optional[str]) -> Optional[torch.dtype]:
    """'fp32' | 'fp16' | 'bf16' -> torch dtype; None keeps each tensor's own dtype."""
    if name is None:
        return None
    if name not in DTYPES:
        raise InvalidArgumentError(f"unknown storage dtype {name!r} (choose from {', '.join(DTYPES)})")
    return DTYPES[name]


def positive_numbers(parts, option: str, unit: str, hint: str = "") -> list[float]:
    """Each text of `parts` as a positive finite number of `unit` (BudgetError naming the CLI `option`)."""
    values = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise BudgetError(f"{option}: '{part.strip()}' is not a number{hint}") from None
        if not math.isfinite(value) or value <= 0:
            raise BudgetError(f"{option}: {part.strip()} is not a finite positive {unit}")
        values.append(value)
    return values


def parse_sizes(text: str, option: str = "--sizes") -> "str | list[float]":
    """'all' or a comma-separated list of positive finite budgets in model units (CLI `option`, named in errors)."""
    if text.strip() == "all":
        return "all"
    return positive_numbers(text.split(","), option, "size in model units", " (use e.g. 1,1.5,2 or all)")


def parse_megabytes(text: str, option: str = "--budget-mb", single: bool = False) -> list[float]:
    """A comma-separated list of positive finite megabyte budgets (one when `single`), named in errors."""
    return positive_numbers([text] if single else text.split(","), option, "number of megabytes",
                            " of megabytes")


def stored_dtype(own: torch.dtype, dtype: Optional[torch.dtype]) -> torch.dtype:
    """What a tensor of dtype `own` is written as: floating tensors take the export dtype, others stay."""
    return own if dtype is None or not own.is_floating_point else dtype


def megabytes(num_bytes: int) -> float:
    return num_bytes / MEGABYTE


class Footprint:
    """Bytes of any partition of one block spec under one algorithm's storage, at one dtype."""

    def __init__(self, spec, param_shapes, param_dtypes, storage: str, dtype: Optional[torch.dtype] = None):
        self.storage = storage
        self._copy, self._mask_row = [], []     # per block: one copy of its parameters; one member's masks
        for block in spec.blocks:
            numels = [math.prod(int(d) for d in param_shapes[n]) for n in block.params]
            self._copy.append(sum(k * stored_dtype(param_dtypes[n], dtype).itemsize
                                  for k, n in zip(numels, block.params)))
            self._mask_row.append(sum((k + 7) // 8 for k in numels))

    @classmethod
    def of(cls, zoo, spec, algorithm, dtype: Optional[torch.dtype] = None) -> "Footprint":
        return cls(spec, zoo.param_shapes, zoo.param_dtypes, algorithm.storage, dtype)

    @property
    def model_bytes(self) -> int:
        """One model's merged parameters (the 1x of model units, at this dtype)."""
        return sum(self._copy)

    def block_bytes(self, b: int, group_sizes: Sequence[int]) -> int:
        copy = self._copy[b]
        if self.storage != "mask":
            return copy * len(group_sizes)
        masked = [g for g in group_sizes if g >= MASK_MIN_GROUP]
        kept = sum(g for g in group_sizes if g < MASK_MIN_GROUP)
        total = copy * kept + sum(copy + g * (self._mask_row[b] + SCALE_BYTES) for g in masked)
        return total + (copy if masked else 0)   # the pretrained block, once

    def partition_bytes(self, partition) -> int:
        return sum(self.block_bytes(b, [len(g) for g in groups]) for b, groups in enumerate(partition.groups))

    def budget_bytes(self, plan, budget: float) -> int:
        """Bytes of the deployment a size budget (model units) selects."""
        return self.partition_bytes(plan.partition_at(budget))

    def budget_for(self, plan, max_bytes: float) -> float:
        """The size budget (model units) selecting the largest deployment of at most `max_bytes`.

        Applying merge events never adds bytes (a merge replaces stored copies by one; for mask methods
        the masks and rescalers it adds are smaller than the copies it drops for any block of 16 or more
        entries), so bytes fall with size and a bisection over the achievable sizes finds the shortest event prefix that fits,
        as partition_at picks for a size: O(log E) partitions, fast enough for a slider in MB. When
        nothing fits, a budget below the smallest size: partition_at then gives the smallest deployment
        with budget_met False, like an unreachable size does.
        """
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, numbers.Real) or not 0 < max_bytes < math.inf:
            raise BudgetError(f"size budget must be a finite positive number of bytes, got {max_bytes!r}")
        sizes = sorted(plan.achievable_sizes())
        if self.budget_bytes(plan, sizes[0]) > max_bytes:
            return plan.min_size * max_bytes / self.budget_bytes(plan, plan.min_size)
        low, high = 0, len(sizes) - 1       # invariant: sizes[low] fits
        while low < high:
            mid = (low + high + 1) // 2
            if self.budget_bytes(plan, sizes[mid]) <= max_bytes:
                low = mid
            else:
                high = mid - 1
        return float(sizes[low])


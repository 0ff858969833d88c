"""A merge plan that is only built when something needs its events.

Why: a plan needs one similarity pass over every task vector, which was half of an `export --size 1`
of an 8-task ViT-B-32 zoo (13.2 s against 6.3 s for a script that averages the files). Two kinds of
size never depend on the plan's order of events:
  - at a budget >= M no event is applied: every task keeps its own block;
  - at a budget <= the smallest size every event is applied, and every plan ends with each block
    one group of all M tasks (each block's sequence merges until one group is left; for M >= 3 the
    last event always lowers the size, so no shorter prefix reaches it; below the smallest size,
    partition_at applies every event too).
LazyPlan answers partition_at for those budgets directly, with exactly the Partition the plan would
give (groups, size, budget, budget_met, num_events); anything else builds the plan once and delegates.
"""
from __future__ import annotations

import threading
from typing import Callable, Optional, Sequence

from flexmerge_core.planning.linkage import check_linkage
from flexmerge_core.planning.plan import MergePlan, Partition, _check_budget, check_order, check_seed
from flexmerge_core.planning.size_accounting import block_cost_32nds, check_storage, size_from_32nds


def one_group_size(num_tasks: int, block_numels: Sequence[int], storage: str) -> float:
    """Size in model units when every block is one group of all tasks (the plan's smallest size)."""
    total = sum(int(n) * block_cost_32nds([num_tasks], storage) for n in block_numels)
    return size_from_32nds(total, sum(int(n) for n in block_numels))


class LazyPlan:
    """MergePlan's interface; `build()` (e.g. a cached plan) runs on the first access that needs events."""

    def __init__(self, num_tasks: int, blocks: Sequence[str], block_numels: Sequence[int], storage: str,
                 linkage: str, order: str, seed: int, build: Callable[[], MergePlan]):
        self.num_tasks, self.blocks = int(num_tasks), list(blocks)
        self.block_numels = [int(n) for n in block_numels]
        self.storage, self.linkage = check_storage(storage), check_linkage(linkage)
        self.order, self.seed = check_order(order), check_seed(seed)
        self._build, self._plan, self._lock = build, None, threading.Lock()
        self.min_size = one_group_size(self.num_tasks, self.block_numels, storage)

    @property
    def built(self) -> bool:
        return self._plan is not None

    @property
    def plan(self) -> MergePlan:
        with self._lock:
            if self._plan is None:
                self._plan = self._build()
            return self._plan

    @property
    def model_params(self) -> int:
        return sum(self.block_numels)

    @property
    def max_size(self) -> float:
        return float(self.num_tasks)

    @property
    def events(self):
        return self.plan.events

    def achievable_sizes(self) -> list[float]:
        return self.plan.achievable_sizes()

    def to_json(self) -> dict:
        return self.plan.to_json()

    def partition_at(self, budget) -> Partition:
        direct = self.direct_partition(budget)
        return direct if direct is not None else self.plan.partition_at(budget)

    def direct_partition(self, budget) -> Optional[Partition]:
        """The partition at `budget` when it needs no plan (see the module docstring), else None."""
        budget = _check_budget(budget)
        m = self.num_tasks
        if budget >= self.max_size:
            groups = [[(t,) for t in range(m)] for _ in self.blocks]
            return Partition(groups=groups, size=self.max_size, budget=budget, budget_met=True, num_events=0)
        if budget <= self.min_size:
            groups = [[tuple(range(m))] for _ in self.blocks]
            return Partition(groups=groups, size=self.min_size, budget=budget, budget_met=self.min_size <= budget,
                             num_events=len(self.blocks) * (m - 1))
        return None

"""The merge plan: ordered merge events, their sizes, and the partition at any size budget.

ALGORITHMS.md sections 1-3. A block's merges never change another block's similarities, so each
block's merge sequence is computed on its own (flexmerge_core.planning.linkage) and the orders only interleave
those sequences: `greedy` merges them by a heap keyed (higher similarity, earlier block), which is
exactly the naive "each step merge the globally most similar pair" loop with its tie rule.
For `random`, one seeded generator draws the block (uniform among blocks that still have >= 2 groups)
and each block draws its pairs from its own generator seeded (seed, block), so blocks can be processed
one at a time and still reproduce the same plan.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from numbers import Real
from typing import Callable, Optional, Sequence

import numpy as np

from flexmerge_core.errors import BudgetError, InvalidArgumentError, ZooError
from flexmerge_core.planning.linkage import (BlockStep, Group, GroupSimilarity, callable_sequence, check_linkage,
                                    matrix_sequence)
from flexmerge_core.planning.size_accounting import (block_cost_32nds, check_storage, size_from_32nds,
                                            size_of_partition)

ORDERS = ("greedy", "left-to-right", "right-to-left", "random")
PLAN_FORMAT = "flexmerge-plan/1"

__all__ = ["ORDERS", "MergeEvent", "Partition", "MergePlan", "size_of_partition", "plan_from_similarities",
           "plan_from_sequences", "block_rng", "check_order", "build_plan"]


@dataclass(frozen=True)
class MergeEvent:
    step: int
    block: int
    group_a: Group
    group_b: Group
    similarity: float
    size_after: float


@dataclass(frozen=True)
class Partition:
    groups: list[list[Group]]     # groups[b]: sorted tuples, ordered by their min id
    size: float
    budget: float
    budget_met: bool
    num_events: int

    def group_of(self, block_index: int, task_id: int) -> Group:
        for group in self.groups[block_index]:
            if task_id in group:
                return group
        raise InvalidArgumentError(f"task id {task_id} is not in block {block_index} of this partition")


@dataclass
class MergePlan:
    num_tasks: int
    blocks: list[str]
    block_numels: list[int]
    storage: str
    events: list[MergeEvent]
    linkage: str = "min"
    order: str = "greedy"
    seed: int = 0

    @property
    def model_params(self) -> int:
        return int(sum(self.block_numels))

    @property
    def max_size(self) -> float:
        return float(self.num_tasks)

    @property
    def min_size(self) -> float:
        return self.events[-1].size_after if self.events else self.max_size

    def achievable_sizes(self) -> list[float]:
        """Distinct sizes reachable by a prefix of the events, descending from M."""
        sizes = [self.max_size]
        for event in self.events:
            if event.size_after != sizes[-1]:
                sizes.append(event.size_after)
        return sizes

    def partition_at(self, budget) -> Partition:
        """The partition after the shortest prefix of events whose size is <= budget."""
        budget = _check_budget(budget)
        count, size = 0, self.max_size
        for event in self.events:
            if size <= budget:
                break
            count, size = count + 1, event.size_after
        groups = [[(t,) for t in range(self.num_tasks)] for _ in self.blocks]
        for event in self.events[:count]:
            block = groups[event.block]
            block.remove(event.group_a)
            block.remove(event.group_b)
            block.append(tuple(sorted(event.group_a + event.group_b)))
            block.sort()
        return Partition(groups=groups, size=size, budget=budget, budget_met=size <= budget, num_events=count)

    def to_json(self) -> dict:
        return {"format": PLAN_FORMAT, "num_tasks": self.num_tasks, "blocks": list(self.blocks),
                "block_numels": [int(n) for n in self.block_numels], "storage": self.storage,
                "linkage": self.linkage, "order": self.order, "seed": self.seed,
                "events": [{"step": e.step, "block": e.block, "group_a": list(e.group_a),
                            "group_b": list(e.group_b), "similarity": e.similarity,
                            "size_after": e.size_after} for e in self.events]}

    @classmethod
    def from_json(cls, d: dict) -> "MergePlan":
        if not isinstance(d, dict) or d.get("format") != PLAN_FORMAT:
            raise InvalidArgumentError(f"not a merge plan document (expected format {PLAN_FORMAT!r})")
        try:
            events = [MergeEvent(step=int(e["step"]), block=int(e["block"]), group_a=tuple(e["group_a"]),
                                 group_b=tuple(e["group_b"]), similarity=float(e["similarity"]),
                                 size_after=float(e["size_after"])) for e in d["events"]]
            return cls(num_tasks=int(d["num_tasks"]), blocks=list(d["blocks"]),
                       block_numels=[int(n) for n in d["block_numels"]], storage=check_storage(d["storage"]),
                       events=events, linkage=d["linkage"], order=d["order"], seed=int(d["seed"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArgumentError(f"malformed merge plan document: {exc}") from exc


def _check_budget(budget) -> float:
    if isinstance(budget, bool) or not isinstance(budget, Real):
        raise BudgetError(f"size budget must be a number, got {budget!r}")
    value = float(budget)
    if not math.isfinite(value) or value <= 0:
        raise BudgetError(f"size budget must be a finite positive number of model units, got {budget!r}")
    return value


def check_order(order: str) -> str:
    if order not in ORDERS:
        raise InvalidArgumentError(f"unknown order {order!r}: choose one of {', '.join(ORDERS)}")
    return order


SEED_LIMIT = 2 ** 63   # torch.manual_seed and numpy's generators take any seed in [0, 2**63)


def check_seed(seed) -> int:
    """Every seeded command (plans, the demo builder) accepts the seeds every generator it feeds takes."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < SEED_LIMIT:
        raise InvalidArgumentError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    return int(seed)


def block_rng(order: str, seed: int, block: int) -> Optional[np.random.Generator]:
    """The pair-drawing generator of one block: None (greedy pairs) unless the order is random."""
    return np.random.default_rng([seed, block + 1]) if order == "random" else None


def _interleave(sequences: Sequence[Sequence[BlockStep]], order: str, seed: int) -> list[tuple[int, BlockStep]]:
    """(block, step) pairs in plan order."""
    if order in ("left-to-right", "right-to-left"):
        blocks = range(len(sequences)) if order == "left-to-right" else reversed(range(len(sequences)))
        return [(b, step) for b in blocks for step in sequences[b]]
    position = [0] * len(sequences)
    out: list[tuple[int, BlockStep]] = []
    if order == "random":
        rng = np.random.default_rng([seed, 0])
        open_blocks = [b for b, seq in enumerate(sequences) if seq]
        while open_blocks:
            b = open_blocks[int(rng.integers(len(open_blocks)))]
            out.append((b, sequences[b][position[b]]))
            position[b] += 1
            if position[b] == len(sequences[b]):
                open_blocks.remove(b)
        return out
    heap = [(-seq[0][2], b) for b, seq in enumerate(sequences) if seq]
    heapq.heapify(heap)
    while heap:
        _, b = heapq.heappop(heap)
        out.append((b, sequences[b][position[b]]))
        position[b] += 1
        if position[b] < len(sequences[b]):
            heapq.heappush(heap, (-sequences[b][position[b]][2], b))
    return out


def plan_from_sequences(sequences: Sequence[Sequence[BlockStep]], num_tasks: int, block_numels: Sequence[int],
                        storage: str = "standard", linkage: str = "min", order: str = "greedy", seed: int = 0,
                        blocks: Optional[Sequence[str]] = None) -> MergePlan:
    """Interleave per-block merge sequences by the order and attach exact sizes to every event."""
    check_storage(storage)
    check_order(order)
    numels = [int(n) for n in block_numels]
    if len(numels) != len(sequences) or any(n <= 0 for n in numels):
        raise InvalidArgumentError(f"need one positive parameter count per block ({len(sequences)} blocks), "
                                   f"got {list(block_numels)}")
    model_params = sum(numels)
    group_sizes = [{t: 1 for t in range(num_tasks)} for _ in numels]   # block -> {label: group size}
    costs = [block_cost_32nds([1] * num_tasks, storage) for _ in numels]
    total = sum(n * c for n, c in zip(numels, costs))
    events = []
    for step, (b, (group_a, group_b, similarity)) in enumerate(_interleave(sequences, order, seed)):
        sizes = group_sizes[b]
        sizes[group_a[0]] = sizes[group_a[0]] + sizes.pop(group_b[0])
        new_cost = block_cost_32nds(sizes.values(), storage)
        total += numels[b] * (new_cost - costs[b])
        costs[b] = new_cost
        events.append(MergeEvent(step, b, group_a, group_b, similarity, size_from_32nds(total, model_params)))
    names = list(blocks) if blocks is not None else [f"block{b}" for b in range(len(numels))]
    return MergePlan(num_tasks=num_tasks, blocks=names, block_numels=numels, storage=storage, events=events,
                     linkage=linkage, order=order, seed=seed)


def plan_from_similarities(sims, block_numels: Sequence[int], storage: str = "standard", linkage: str = "min",
                           order: str = "greedy", seed: int = 0, blocks: Optional[Sequence[str]] = None,
                           group_similarity: Optional[Callable[[int], GroupSimilarity]] = None) -> MergePlan:
    """The plan from per-block similarity matrices sims[B, M, M].

    For linkage `uni`, group_similarity(block) must return that block's (group_a, group_b) -> cosine of
    the groups' merged vectors (build_plan supplies it from the algorithm)."""
    sims = np.asarray(sims, dtype=np.float64)
    if sims.ndim != 3 or sims.shape[1] != sims.shape[2]:
        raise InvalidArgumentError(f"similarities must have shape [blocks, tasks, tasks], got {sims.shape}")
    if not np.isfinite(sims).all():
        raise InvalidArgumentError("similarities contain NaN or infinite values")
    check_linkage(linkage)
    seed = check_seed(seed)
    check_order(order)
    if linkage == "uni" and group_similarity is None:
        raise InvalidArgumentError("linkage 'uni' needs the algorithm's merged vectors (use build_plan)")
    num_tasks = sims.shape[1]
    sequences = []
    for b in range(sims.shape[0]):
        rng = block_rng(order, seed, b)
        if linkage == "uni":
            sequences.append(callable_sequence(num_tasks, group_similarity(b), rng))
        else:
            sequences.append(matrix_sequence(sims[b], linkage, rng))
    return plan_from_sequences(sequences, num_tasks, block_numels, storage, linkage, order, seed, blocks)


def _check_some_task_vector_nonzero(zoo, sims: np.ndarray) -> None:
    """A zoo whose fine-tuned checkpoints all equal the pretrained one has nothing to merge.

    One zero task vector is fine (similarity 0 with everything, ALGORITHMS.md section 2); all of them
    zero (self-similarity 0 in every block) almost surely means the wrong files were given.
    """
    if not np.any(np.diagonal(sims, axis1=1, axis2=2)):
        raise ZooError(f"zoo '{zoo.name}': every task vector is zero (each fine-tuned checkpoint equals "
                       f"the pretrained one), so there is nothing to merge")


def build_plan(zoo, spec, algorithm, linkage: str = "min", order: str = "greedy", seed: int = 0,
               progress=None, device=None) -> MergePlan:
    """The plan of a zoo under a block spec, with the algorithm's preprocessing and storage rule.

    Streams one block at a time from the zoo; never touches merged tensors except for `uni`, which
    needs the algorithm's merged vectors of the groups it compares."""
    from flexmerge_core.planning.similarity import block_similarities, block_stream, pick_device
    from flexmerge_core.planning.uni_linkage import uni_block_sequence

    check_linkage(linkage)
    check_order(order)
    seed = check_seed(seed)
    storage = algorithm.storage if algorithm is not None else "standard"
    names = [block.name for block in spec.blocks]
    numels = [block.numel for block in spec.blocks]
    if linkage != "uni":
        sims = block_similarities(zoo, spec, algorithm, device=device, progress=progress)
        _check_some_task_vector_nonzero(zoo, sims)
        return plan_from_similarities(sims, numels, storage, linkage, order, seed, blocks=names)
    if algorithm is None:
        raise InvalidArgumentError("linkage 'uni' needs a merge algorithm (its merged vectors)")
    device = pick_device(device)
    if algorithm.has_preprocessing:
        algorithm.prepare_for(zoo.fingerprint, block_stream(zoo, spec))
    sequences = []
    for b, block in enumerate(spec.blocks):
        sequences.append(uni_block_sequence(zoo, block, algorithm, block_rng(order, seed, b), device))
        if progress is not None:
            progress(b + 1, len(spec.blocks), block.name)
    return plan_from_sequences(sequences, len(zoo.task_names), numels, storage, linkage, order, seed, names)

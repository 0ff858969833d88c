"""The deployment: a partition's unique stored tensors, each held once, plus per-task routing.

Why this shape (ALGORITHMS.md section 5): the point of FlexMerge is that a bigger deployment costs
memory, not inference time. So every stored tensor exists once, and a task's model is a set of
references into that storage (no copies) for standard algorithms. Mask methods (Consensus, EMR)
store the pretrained block, a unified vector, bit-packed masks and scalars; a task's block is
rebuilt on demand and the time that takes is recorded per task.

Stored entries per block:
  - "finetuned": one task's own fine-tuned tensors (singletons; mask-method groups of <= 2). They come
    straight from the checkpoint, never as pretrained + (fine-tuned - pretrained), so a deployment
    at size M is bit-identical to the fine-tuned models.
  - "merged": standard algorithms, `theta_pre + unified`, cast to the parameter's dtype.
  - "masked": mask algorithms, `unified` (parameter dtype), masks packed 8 per byte, scales [g].
Per-task tensors that are never merged (heads, the manifest's `unmerged` parameters, rows a fine-tune
added beyond the pretrained tensors: zoo/added_rows.py) ride along per task and are not counted in the size.
Bytes vs size (fp32 parameters): standard algorithms store exactly size * P * 4 bytes. Mask methods
store size * P * 4 plus rounding: each member's mask of each tensor is packed to whole bytes (< 1 byte
of padding per mask row) and EMR's scalars take 4 bytes per member (free in model units).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from flexmerge_core.algorithms.base import MergeResult
from flexmerge_core.errors import InvalidArgumentError
from flexmerge_core.planning.size_accounting import MASK_BITS
from flexmerge_core.reused_buffer import ReusedBuffer
from flexmerge_core.zoo.added_rows import appended

FINETUNED, MERGED, MASKED = "finetuned", "merged", "masked"


def entry_kind(algorithm, group_size: int) -> str:
    """How a group of `group_size` tasks is stored: its members' own tensors, merged, or masked."""
    if not algorithm.merges_group(group_size):
        return FINETUNED
    return MASKED if algorithm.storage == "mask" else MERGED


def cast_floating(tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Floating tensors as `dtype` (an export's --dtype); masks and integer tensors unchanged."""
    return {n: t.to(dtype) if t.is_floating_point() else t for n, t in tensors.items()}


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """bool [g, *shape] -> uint8 [g, ceil(numel/8)]: 1 bit per entry, as the size rule counts it."""
    flat = mask.reshape(mask.shape[0], -1).cpu().numpy()
    return torch.from_numpy(np.packbits(flat, axis=1))


def unpack_mask(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of pack_mask for one tensor of `shape`: uint8 [g, bytes] -> bool [g, *shape]."""
    numel = int(np.prod(shape, dtype=np.int64))
    bits = np.unpackbits(packed.cpu().numpy(), axis=1, count=numel)
    return torch.from_numpy(bits.astype(bool)).reshape(packed.shape[0], *shape)


@dataclass
class StoredGroup:
    """One stored entry of one block (see the module docstring for the three kinds)."""

    members: tuple[int, ...]
    kind: str
    tensors: dict[str, torch.Tensor]
    masks: Optional[dict[str, torch.Tensor]] = None     # packed uint8 [g, bytes] per name
    scales: Optional[torch.Tensor] = None               # float32 [g] (EMR) or None

    def stored_32nds(self) -> int:
        """Stored parameters of this entry in 1/32 units (masks: 1 bit = 1/32 parameter)."""
        numel = sum(t.numel() for t in self.tensors.values())
        if self.kind != MASKED:
            return MASK_BITS * numel
        return MASK_BITS * numel + len(self.members) * numel

    def stored_bytes(self) -> int:
        tensors = list(self.tensors.values()) + list((self.masks or {}).values())
        if self.scales is not None:
            tensors.append(self.scales)
        return sum(t.numel() * t.element_size() for t in tensors)


@dataclass
class Deployment:
    """Unique stored tensors + routing[b][task] -> index into entries[b].

    `recipe` records how it was made (zoo fingerprint, algorithm, hyperparameters, granularity,
    linkage, order, seed, budget, achieved size); export writes it into the file's metadata.
    """

    task_names: list[str]
    block_names: list[str]
    block_params: list[tuple[str, ...]]
    param_shapes: dict[str, tuple[int, ...]]
    param_dtypes: dict[str, torch.dtype]
    entries: list[list[StoredGroup]]
    routing: list[list[int]]
    pretrained: dict[str, torch.Tensor]                 # blocks with a masked entry only
    per_task: list[dict[str, torch.Tensor]]             # never merged: unmerged parameters
    heads: list[Optional[dict[str, torch.Tensor]]]
    storage: str
    algorithm: object
    recipe: dict = field(default_factory=dict)
    reconstruction_seconds: dict[int, float] = field(default_factory=dict)
    added_rows: list[dict[str, torch.Tensor]] = field(default_factory=list)   # per task (empty: none added)

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    @property
    def model_params(self) -> int:
        """P: parameters of one model over the merged parameter set."""
        return sum(int(np.prod(self.param_shapes[n], dtype=np.int64)) for p in self.block_params for n in p)

    def stored_32nds(self) -> int:
        total = sum(e.stored_32nds() for block in self.entries for e in block)
        return total + MASK_BITS * sum(t.numel() for t in self.pretrained.values())

    @property
    def stored_params(self) -> int:
        """Stored parameters, masks counted as 1/32 each, rounded to the nearest integer."""
        return round(self.stored_32nds() / MASK_BITS)

    @property
    def size(self) -> float:
        """Size in model units, exact (the same integer arithmetic as the plan's size rule)."""
        return self.stored_32nds() / (MASK_BITS * self.model_params)

    @property
    def stored_bytes(self) -> int:
        """Bytes of the merged-parameter storage (heads and unmerged per-task tensors excluded)."""
        total = sum(e.stored_bytes() for block in self.entries for e in block)
        return total + sum(t.numel() * t.element_size() for t in self.pretrained.values())

    def with_dtype(self, dtype: torch.dtype, name: str) -> "Deployment":
        """The same deployment with every floating tensor stored as `dtype` (masks and rescalers
        unchanged): what an export in fp16/bf16 holds. Masked tasks are rebuilt in `dtype` too, and
        the recipe records `name` ('fp16', ...) so the export can be reproduced."""
        def cast(tensors):
            return cast_floating(tensors, dtype)

        entries = [[StoredGroup(e.members, e.kind, cast(e.tensors), e.masks, e.scales) for e in block]
                   for block in self.entries]
        return Deployment(
            task_names=self.task_names, block_names=self.block_names, block_params=self.block_params,
            param_shapes=self.param_shapes,
            param_dtypes={n: dtype if d.is_floating_point else d for n, d in self.param_dtypes.items()},
            entries=entries, routing=self.routing, pretrained=cast(self.pretrained),
            per_task=[cast(own) for own in self.per_task],
            heads=[None if head is None else cast(head) for head in self.heads],
            storage=self.storage, algorithm=self.algorithm, recipe={**self.recipe, "dtype": name},
            added_rows=[cast(rows) for rows in self.added_rows])

    def task_block(self, block_index: int, task_id: int) -> dict[str, torch.Tensor]:
        """Task's tensors of one block: the stored tensors themselves, or a reconstruction (masked)."""
        entry = self.entries[block_index][self.routing[block_index][task_id]]
        if entry.kind != MASKED:
            return dict(entry.tensors)
        result = MergeResult(unified={n: t.to(torch.float32) for n, t in entry.tensors.items()},
                             masks={n: unpack_mask(m, self.param_shapes[n]) for n, m in entry.masks.items()},
                             scales=entry.scales, members=entry.members)
        vectors = self.algorithm.reconstruct(result, task_id)
        return {n: (self.pretrained[n].to(torch.float32) + v).to(self.param_dtypes[n])
                for n, v in vectors.items()}

    def task_state_dict(self, task_id: int) -> dict[str, torch.Tensor]:
        """{merged parameter: tensor} of one task; shares storage with the deployment when not masked."""
        if not 0 <= task_id < self.num_tasks:
            raise InvalidArgumentError(f"task id {task_id} out of range (deployment has {self.num_tasks} tasks)")
        start = time.perf_counter()
        state: dict[str, torch.Tensor] = {}
        rebuilt = False
        for b in range(len(self.block_names)):
            rebuilt |= self.entries[b][self.routing[b][task_id]].kind == MASKED
            state.update(self.task_block(b, task_id))
        if rebuilt:
            self.reconstruction_seconds[task_id] = time.perf_counter() - start
        return state

    def encoder_state_dict(self, task_id: int) -> dict[str, torch.Tensor]:
        """Every encoder tensor of one task: merged parameters plus its own unmerged ones, with the rows it
        added (new tokens) appended to its tensors."""
        state = self.task_state_dict(task_id)
        state.update(self.per_task[task_id])
        return appended(state, self.added_rows[task_id] if self.added_rows else {})


class GroupStore:
    """Stored entries per (block, group), built from a merger and memoised.

    Why: a curve walks through many sizes whose partitions share most groups; an entry that was
    materialised once (pretrained + unified, cast) is reused by reference, so neighbouring
    deployments also share storage. `retain` drops entries no longer in use to bound memory.
    copy_reads: checkpoint tensors are private copies (Zoo.task_tensor(copy=True)) instead of views of
    the memory maps, whose pages stay resident while the zoo is open: for one-pass streamed exports.
    """

    def __init__(self, zoo, spec, algorithm, merger, copy_reads: bool = False):
        self.zoo, self.spec, self.algorithm, self.merger = zoo, spec, algorithm, merger
        self.copy_reads = copy_reads
        self._entries: dict[tuple[int, tuple[int, ...]], list[StoredGroup]] = {}
        self._pretrained: dict[str, torch.Tensor] = {}
        self._own: dict[int, tuple[dict, Optional[dict], dict]] = {}
        self._stacks = ReusedBuffer()   # the merger stacks each merged group's rows here (GroupMerger.result)

    def task_own(self, task_id: int) -> tuple[dict[str, torch.Tensor], Optional[dict[str, torch.Tensor]],
                                              dict[str, torch.Tensor]]:
        """A task's never-merged tensors: (its unmerged parameters, its head, the rows it added)."""
        if task_id not in self._own:
            self._own[task_id] = ({n: self.zoo.task_tensor(task_id, n) for n in self.zoo.unmerged_names},
                                  self.zoo.head(task_id), self.zoo.added_rows(task_id))
        return self._own[task_id]

    def pretrained(self, name: str) -> torch.Tensor:
        if name not in self._pretrained:
            self._pretrained[name] = self.zoo.pretrained_tensor(name, copy=self.copy_reads)
        return self._pretrained[name]

    def entries(self, block_index: int, group: tuple[int, ...]) -> list[StoredGroup]:
        """The stored entries of one group: one per member when not merged, else one."""
        key = (block_index, tuple(group))
        if key not in self._entries:
            self._entries[key] = self._build(block_index, tuple(group))
        return self._entries[key]

    def retain(self, keys) -> None:
        """Keep only the entries of `keys` ((block, group) pairs) and drop the rest."""
        keep = set(keys)
        for key in [k for k in self._entries if k not in keep]:
            del self._entries[key]

    def _build(self, b: int, group: tuple[int, ...]) -> list[StoredGroup]:
        names = self.spec.blocks[b].params
        kind = entry_kind(self.algorithm, len(group))
        if kind == FINETUNED:
            return [StoredGroup((t,), FINETUNED, {n: self.zoo.task_tensor(t, n, copy=self.copy_reads) for n in names})
                    for t in group]
        result = self.merger.result(b, group, stacks=self._stacks)
        dtypes = self.zoo.param_dtypes
        unified = {n: result.unified[n].to("cpu", torch.float32) for n in names}
        if kind == MERGED:
            tensors = {n: (self.pretrained(n).to(torch.float32) + unified[n]).to(dtypes[n]) for n in names}
            return [StoredGroup(group, MERGED, tensors)]
        unified = {n: unified[n].to(dtypes[n]) for n in names}
        masks = {n: pack_mask(result.masks[n]) for n in names}
        scales = None if result.scales is None else result.scales.to("cpu", torch.float32).clone()
        return [StoredGroup(group, MASKED, unified, masks, scales)]


def block_entries(store, b: int, groups, num_tasks: int) -> tuple[list[StoredGroup], list[int], dict]:
    """One block of a partition: (its stored entries in order, routing[task] -> entry index, the
    pretrained tensors it needs: its own when an entry is masked)."""
    entries: list[StoredGroup] = []
    routing = [-1] * num_tasks
    pretrained = {}
    for group in groups:
        for entry in store.entries(b, group):
            for t in entry.members:
                routing[t] = len(entries)
            entries.append(entry)
            if entry.kind == MASKED:
                pretrained.update({n: store.pretrained(n) for n in store.spec.blocks[b].params})
    return entries, routing, pretrained


def deployment_from_partition(zoo, spec, algorithm, partition, store: GroupStore, recipe: dict) -> Deployment:
    """Assemble a Deployment from a partition, taking stored entries from `store` (shared, memoised)."""
    num_tasks = len(zoo.task_names)
    entries, routing, pretrained = [], [], {}
    for b, groups in enumerate(partition.groups):
        own_entries, own_routing, own_pretrained = block_entries(store, b, groups, num_tasks)
        entries.append(own_entries)
        routing.append(own_routing)
        pretrained.update(own_pretrained)
    return Deployment(
        task_names=list(zoo.task_names), block_names=[blk.name for blk in spec.blocks],
        block_params=[tuple(blk.params) for blk in spec.blocks],
        param_shapes={n: tuple(zoo.param_shapes[n]) for n in zoo.param_names},
        param_dtypes={n: zoo.param_dtypes[n] for n in zoo.param_names},
        entries=entries, routing=routing, pretrained=pretrained,
        per_task=[store.task_own(t)[0] for t in range(num_tasks)],
        heads=[store.task_own(t)[1] for t in range(num_tasks)],
        storage=algorithm.storage, algorithm=algorithm, recipe=dict(recipe),
        added_rows=[store.task_own(t)[2] for t in range(num_tasks)])


def deployment_recipe(zoo, spec, plan, algorithm, budget, size) -> dict:
    """Everything that determines a deployment (and, with the zoo files, reproduces it)."""
    return {"zoo": zoo.name, "zoo_fingerprint": zoo.fingerprint, "tasks": list(zoo.task_names),
            "algorithm": algorithm.name, "hyperparameters": algorithm.hyperparameters,
            "granularity": spec.granularity, "linkage": plan.linkage, "order": plan.order, "seed": plan.seed,
            "budget": float(budget), "size": float(size)}


def build_deployment(zoo, plan, algorithm, budget, merger=None, spec=None, store=None) -> Deployment:
    """The deployment at `budget` (model units): plan.partition_at(budget) with `algorithm` per group.

    The block spec comes from `merger.spec` or `spec` (the plan itself only knows block names).
    Pass a shared `store` to reuse materialised groups across sizes.
    """
    if store is None:
        if merger is None:
            if spec is None:
                raise InvalidArgumentError("build_deployment needs the block spec: pass merger= or spec=")
            from flexmerge_core.deployment.merge import GroupMerger

            merger = GroupMerger(zoo, spec, algorithm)
        store = GroupStore(zoo, merger.spec if spec is None else spec, algorithm, merger)
    spec = store.spec
    if [b.name for b in spec.blocks] != list(plan.blocks):
        raise InvalidArgumentError(f"the plan's blocks do not match granularity '{spec.granularity}' of this zoo")
    partition = plan.partition_at(budget)
    recipe = deployment_recipe(zoo, spec, plan, algorithm, partition.budget, partition.size)
    recipe["budget_met"] = partition.budget_met
    return deployment_from_partition(zoo, spec, algorithm, partition, store, recipe)

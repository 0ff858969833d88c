"""A whole deployment's export written block by block: memory holds one block's groups, not the model.

Why: export used to build the Deployment (every stored tensor), flatten it and hand it to save_file,
which serialises it once more, while the merger's memo kept every merged vector: several models in
memory (4.9 GB peak RSS for `export --size 1` of 8 ViT-B-32 tasks, against 1.9 GB for a script that
averages the files). The file's header (keys, shapes, dtypes, offsets, metadata) is known before
anything is merged: a skeleton Deployment whose tensors are meta tensors (shapes and dtypes, no
data) gives the same keys, layout JSON and recipe as the real one. Then each block's groups are
merged (GroupStore), cast, written at their offsets and dropped, then each task's own tensors. A tensorwise
algorithm's blocks go one tensor at a time instead (tensorwise.py: one reused buffer, no group cache).
The file is byte-identical to save_deployment of the built deployment (tests compare the bytes).
Whether mask entries carry scalars (EMR's rescalers) is the algorithm's business: the first masked
group is merged before the header is written and tells.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Optional

import torch

from flexmerge_core.deployment.deploy import (FINETUNED, MASKED, GroupStore, StoredGroup, block_entries,
                                              cast_floating, deployment_from_partition, entry_kind)
from flexmerge_core.deployment.export import (DEPLOYMENT_FORMAT, added_rows_tensors, deployment_layout, deployment_tensors,
                                              entry_tensors, file_metadata, pretrained_tensors, task_own_tensors)
from flexmerge_core.deployment.tensorwise import TensorwiseMerge, merges_tensorwise
from flexmerge_core.zoo.safetensors_stream import StreamedSafetensors, save_file_order


def _meta(shape, dtype) -> torch.Tensor:
    return torch.empty(tuple(shape), dtype=dtype, device="meta")


class _SkeletonStore:
    """GroupStore's interface with meta tensors: what each entry stores, without reading or merging."""

    def __init__(self, zoo, spec, algorithm, has_scales: bool):
        self.zoo, self.spec, self.algorithm, self.has_scales = zoo, spec, algorithm, has_scales

    def _params(self, names) -> dict[str, torch.Tensor]:
        return {n: _meta(self.zoo.param_shapes[n], self.zoo.param_dtypes[n]) for n in names}

    def entries(self, b: int, group: tuple[int, ...]) -> list[StoredGroup]:
        names = self.spec.blocks[b].params
        kind = entry_kind(self.algorithm, len(group))
        if kind == FINETUNED:
            return [StoredGroup((t,), FINETUNED, self._params(names)) for t in group]
        if kind != MASKED:
            return [StoredGroup(tuple(group), kind, self._params(names))]
        g = len(group)
        masks = {n: _meta((g, math.ceil(math.prod(self.zoo.param_shapes[n]) / 8)), torch.uint8) for n in names}
        scales = _meta((g,), torch.float32) if self.has_scales else None
        return [StoredGroup(tuple(group), MASKED, self._params(names), masks, scales)]

    def pretrained(self, name: str) -> torch.Tensor:
        return self._params([name])[name]

    def task_own(self, task_id: int):
        head = self.zoo.task_files(task_id).head
        heads = None if head is None else {k: _meta(head.shapes[k], head.dtypes[k]) for k in head.names}
        added = {n: _meta(rows.shape, rows.dtype) for n, rows in self.zoo.added_rows(task_id).items()}
        return self._params(self.zoo.unmerged_names), heads, added


def streamed_deployment_writes(zoo, spec, algorithm, merger, partition, recipe: dict, out,
                               dtype: Optional[torch.dtype] = None, dtype_name: Optional[str] = None
                               ) -> tuple[dict[Path, Callable[[Path], None]], dict]:
    """({out: writer}, the deployment's recipe) of the deployment of `partition`, written block by block.

    `merger` should not memoise (GroupMerger(memo=False)), or it keeps every merged block anyway.
    dtype/dtype_name: as Deployment.with_dtype (None keeps the zoo's dtypes).
    """
    num_tasks = len(zoo.task_names)
    stores: dict[int, GroupStore] = {}

    def store_of(b: int) -> GroupStore:
        return stores.setdefault(b, GroupStore(zoo, spec, algorithm, merger, copy_reads=True))

    first_masked = next(((b, g) for b, groups in enumerate(partition.groups) for g in groups
                         if entry_kind(algorithm, len(g)) == MASKED), None)
    has_scales = first_masked is not None and store_of(first_masked[0]).entries(*first_masked)[0].scales is not None
    skeleton = deployment_from_partition(zoo, spec, algorithm, partition,
                                         _SkeletonStore(zoo, spec, algorithm, has_scales), recipe)
    if dtype is not None:
        skeleton = skeleton.with_dtype(dtype, dtype_name)
    layout = {k: (tuple(t.shape), t.dtype) for k, t in deployment_tensors(skeleton).items()}
    layout = {k: layout[k] for k in save_file_order(layout)}
    meta = file_metadata(format=DEPLOYMENT_FORMAT, recipe=skeleton.recipe, layout=deployment_layout(skeleton))

    def cast(tensors):
        return tensors if dtype is None else cast_floating(tensors, dtype)

    tensorwise = TensorwiseMerge(zoo, algorithm) if merges_tensorwise(algorithm) else None

    def write(tmp: Path) -> None:
        with StreamedSafetensors(tmp, layout, meta) as file:
            for b, groups in enumerate(partition.groups):
                if tensorwise is not None:
                    _write_tensorwise(file, zoo, b, spec.blocks[b].params, skeleton.entries[b], tensorwise, cast)
                    continue
                entries, _, pretrained = block_entries(store_of(b), b, groups, num_tasks)
                stores.pop(b)
                for j, entry in enumerate(entries):
                    stored = StoredGroup(entry.members, entry.kind, cast(entry.tensors), entry.masks, entry.scales)
                    _put(file, entry_tensors(b, j, stored))
                _put(file, pretrained_tensors(cast(pretrained)))
                del entries, pretrained
            for t in range(num_tasks):
                params = {n: zoo.task_tensor(t, n, copy=True) for n in zoo.unmerged_names}
                head = zoo.head(t)
                _put(file, task_own_tensors(t, cast(params), None if head is None else cast(head)))
                _put(file, added_rows_tensors(t, cast(zoo.added_rows(t))))

    return {Path(out): write}, skeleton.recipe


def _write_tensorwise(file: StreamedSafetensors, zoo, b: int, names, entries: list[StoredGroup],
                      tensorwise: TensorwiseMerge, cast) -> None:
    """Block b's entries (as the skeleton lists them) one tensor at a time: a member's own tensor, or the
    group's merged one (no masked entries: a tensorwise algorithm stores standard groups)."""
    for j, entry in enumerate(entries):
        for name in names:
            tensor = (zoo.task_tensor(entry.members[0], name, copy=True) if entry.kind == FINETUNED
                      else tensorwise.stored(name, entry.members))
            _put(file, entry_tensors(b, j, StoredGroup(entry.members, entry.kind, cast({name: tensor}))))


def _put(file: StreamedSafetensors, tensors: dict[str, torch.Tensor]) -> None:
    for key, tensor in tensors.items():
        file.write(key, tensor)

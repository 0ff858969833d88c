"""A merged group's stored tensors made one tensor at a time in one reused buffer (tensorwise algorithms).

Why: GroupMerger stacks a whole block's task vectors in new memory and stores each result in the on-disk
group cache. For a one-pass reader (the streamed export) that cost more than the merge: `export --size 1`
of 8 ViT-B-32 tasks spent 1.9 s of its 3 s merge faulting in 2.8 GB of fresh stacks and 1 s writing
the model a second time into the cache. When an algorithm merges each tensor of a block alone
(`tensorwise`, no whole-model preparation: avg, ta), a block can be merged tensor by tensor: each
tensor's g task vectors are read into one buffer kept for the whole export (g x the largest tensor),
preprocessed and merged by the algorithm's own methods, and pretrained (read once) is added back as GroupStore does:
the same float operations on the same values, so the same bytes (tests compare exports byte for byte).
Nothing is cached: recomputing such a merge costs about what reading its cached result would.
NaN/Inf: a sum-like merge carries any non-finite input into its result, so the task tensors are read
unchecked and only the merged tensor is checked (one pass over one tensor instead of g + 1); when it is
not finite they are read again with the checkpoint's own check, which raises the error naming the
file, task and tensor that every other read path raises.
"""
from __future__ import annotations

import torch

from flexmerge_core.reused_buffer import ReusedBuffer
from flexmerge_core.zoo.checkpoint import all_finite


def merges_tensorwise(algorithm) -> bool:
    """Whether `algorithm`'s merged groups can be made tensor by tensor here."""
    return algorithm.tensorwise and not algorithm.has_preprocessing and algorithm.storage == "standard"


class TensorwiseMerge:
    """stored(name, members): pretrained + the group's merged vector of one tensor, in the parameter's dtype."""

    def __init__(self, zoo, algorithm):
        if not merges_tensorwise(algorithm):
            raise ValueError(f"algorithm {algorithm.name!r} does not merge tensor by tensor")
        self.zoo, self.algorithm = zoo, algorithm
        self._buffer = ReusedBuffer()

    def stored(self, name: str, members: tuple[int, ...]) -> torch.Tensor:
        """members: a group the algorithm merges (two or more tasks)."""
        members = tuple(members)
        into = {name: self._buffer.view((len(members), *self.zoo.param_shapes[name]))}
        # read once, checked first (as the task vectors' base is): the same error for a NaN/Inf in it
        pretrained = {name: self.zoo.pretrained_tensor(name, copy=True, dtype=torch.float32)}
        vectors = self.zoo.task_vectors([name], tasks=members, into=into, check_finite=False, pretrained=pretrained)
        vectors = self.algorithm.preprocess_block(vectors, tasks=members)
        unified = self.algorithm.merge(vectors, members).unified[name].to(torch.float32)
        # pretrained + unified, added in place (float addition commutes exactly): one tensor less in memory
        merged = unified.add_(pretrained[name])
        if not all_finite(merged):   # a NaN/Inf read (or an overflow): the checked reads name the culprit
            self.zoo.task_vectors([name], tasks=members, into=into)
        return merged.to(self.zoo.param_dtypes[name])

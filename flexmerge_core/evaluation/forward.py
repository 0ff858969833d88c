"""The encoder forward pass in stages, with any task's tensors swapped in for the duration of a stage.

Why stages: along a curve a task's model changes in one block at a time. The zoo's architecture
adapter may cut its forward into stages (`ArchitectureAdapter.stages`); the input of each stage can
be kept, and a changed block only forces re-running the stages from its own onwards. Without a split
the adapter's whole forward is one stage (correct, just not incremental).
Why swapping: every task runs through one module instance with its own (shared, view) tensors put
in place of the module's and put back afterwards, so no per-task module or weight copy is ever
made. This is what torch.func.functional_call does, minus its scan of the whole module tree on
every call (~1.5 ms, as much as a stage's compute on small models); the owner of each tensor is
looked up once instead. Like functional_call, it is not for concurrent use of one encoder.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Optional

import torch

from flexmerge_core.architectures.base import ArchitectureAdapter, StageSplit, tied_aliases
from flexmerge_core.planning.similarity import pick_device


def _one_stage(encoder: torch.nn.Module, adapter: ArchitectureAdapter) -> StageSplit:
    """The fallback: the adapter's whole forward as stage 0."""
    return StageSplit(num_stages=1, stage_of=lambda name: 0, run=lambda x, stage: adapter.forward(encoder, x))


def _owner_table(encoder: torch.nn.Module, name: str) -> dict:
    """The `_parameters` or `_buffers` dict of the submodule that holds state_dict entry `name`."""
    prefix, _, attr = name.rpartition(".")
    owner = encoder.get_submodule(prefix) if prefix else encoder
    return owner._parameters if attr in owner._parameters else owner._buffers


class StagedEncoder:
    """Runs `encoder` stage by stage with a task's tensors: features(stage_params, x, start, record).

    `adapter` (the zoo's architecture) gives the stage split and the whole forward; None runs the
    module's own forward as one stage.
    """

    def __init__(self, encoder: torch.nn.Module, device=None, adapter: Optional[ArchitectureAdapter] = None):
        self.device = pick_device(device)
        encoder = encoder.to(self.device).eval()
        # compute dtypes: the module is built in float32, so float16/bfloat16 zoos compute in float32 too
        self._dtypes = {n: t.dtype for n, t in encoder.state_dict().items()}
        names = list(self._dtypes)
        self._tables = {n: (_owner_table(encoder, n), n.rpartition(".")[2]) for n in names}
        self._aliases = tied_aliases(encoder)   # swapped along with the tensor they are tied to
        adapter = adapter if adapter is not None else ArchitectureAdapter()   # the base: module(x), one stage
        self._split = adapter.stages(encoder) or _one_stage(encoder, adapter)
        self._stage = {n: self._split.stage_of(n) for n in names}
        self.num_stages = self._split.num_stages

    def stage_of(self, name: str) -> int:
        return self._stage[name]

    def split(self, state: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """A task's tensors grouped by stage, on the device in the compute dtype (no copy when already so)."""
        per_stage: list[dict[str, torch.Tensor]] = [{} for _ in range(self.num_stages)]
        for name, tensor in state.items():
            per_stage[self._stage[name]][name] = tensor.to(self.device, self._dtypes[name], non_blocking=True)
        for alias, name in self._aliases.items():
            if name in state and alias not in state:
                per_stage[self._stage[alias]][alias] = per_stage[self._stage[name]][name]
        return per_stage

    @contextmanager
    def _swapped(self, tensors: dict[str, torch.Tensor]):
        saved = []
        try:
            for name, tensor in tensors.items():
                table, attr = self._tables[name]
                saved.append((table, attr, table[attr]))
                table[attr] = tensor
            yield
        finally:
            for table, attr, original in reversed(saved):
                table[attr] = original

    @torch.no_grad()
    def features(self, stage_params: list[dict], x: torch.Tensor, start: int = 0,
                 record: Iterable[int] = ()) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Run stages start..end on x (the input of stage `start`); returns output and recorded stage inputs."""
        record = set(record)
        kept: dict[int, torch.Tensor] = {}
        for stage in range(start, self.num_stages):
            if stage in record:
                kept[stage] = x
            with self._swapped(stage_params[stage]):
                x = self._split.run(x, stage)
        return x, kept


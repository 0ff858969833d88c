"""Rows a fine-tune added beyond the pretrained tensors (new tokens): read apart, never merged.

Why (MergeKit's resize-vocabulary rule): a fine-tune that added k tokens has embedding / output tensors of
[V + k, d] where the pretrained model has [V, d]. Only the shared vocabulary can be merged row by row, so the
zoo reads such a checkpoint as the pretrained shapes (rows :V, merged as usual: every merged tensor keeps the
pretrained shape) and hands the rows V: out separately; the task's model gets them back (`appended`) when it is
evaluated or exported, so it keeps its own vocabulary. The checkpoint file itself is not rewritten (a zoo links
other people's files). Enabled per zoo by the manifest key `"resize_vocab": true`; without it a grown tensor is
a layout error like any other shape mismatch.
"""
from __future__ import annotations

import torch

from flexmerge_core.errors import ZooError


def grown_rows(pretrained, task) -> dict[str, int]:
    """{name: k} of the task's tensors with k > 0 rows more than the pretrained one and the same other dims."""
    out = {}
    for name, shape in pretrained.shapes.items():
        other = task.shapes.get(name)
        if other is not None and len(other) == len(shape) >= 1 and other[1:] == shape[1:] and other[0] > shape[0]:
            out[name] = other[0] - shape[0]
    return out


class AddedRowsCheckpoint:
    """A task checkpoint read with the pretrained shapes; `added(name)` = its rows beyond them.

    Reads like CheckpointFile (names, shapes, dtypes, read, read_rows, read_into, reads, files, path, role)."""

    def __init__(self, file, pretrained):
        self.file, self.path, self.role, self.files = file, file.path, file.role, file.files
        self.grown = grown_rows(pretrained, file)
        counts = sorted(set(self.grown.values()))
        if len(counts) > 1:
            first, other = (next(n for n, k in self.grown.items() if k == c) for c in counts[:2])
            raise ZooError(f"{self.path}: {self.role} adds {self.grown[first]} rows to '{first}' but "
                           f"{self.grown[other]} to '{other}': a vocabulary grows by one count of tokens")
        self.shapes = {n: (pretrained.shapes[n] if n in self.grown else s) for n, s in file.shapes.items()}
        self.dtypes = file.dtypes

    @property
    def names(self) -> list[str]:
        return self.file.names

    @property
    def reads(self) -> int:
        return self.file.reads

    def read(self, name: str) -> torch.Tensor:
        return self.read_rows(name, 0, self.shapes[name][0]) if name in self.grown else self.file.read(name)

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        if name in self.grown:
            stop = min(stop, self.shapes[name][0])
        return self.file.read_rows(name, start, stop)

    def read_into(self, name: str, out: torch.Tensor, start: int = 0, stop=None, check_finite: bool = True,
                  minus=None) -> torch.Tensor:
        if name in self.grown:
            stop = self.shapes[name][0] if stop is None else min(stop, self.shapes[name][0])
        return self.file.read_into(name, out, start, stop, check_finite, minus)

    def added(self) -> dict[str, torch.Tensor]:
        """{name: the rows beyond the pretrained ones} of every grown tensor."""
        return {n: self.file.read_rows(n, self.shapes[n][0], self.shapes[n][0] + k) for n, k in self.grown.items()}


def appended(state: dict[str, torch.Tensor], rows: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with each of `rows` appended to its tensor (same dtype and device as the tensor)."""
    if not rows:
        return state
    out = dict(state)
    for name, extra in rows.items():
        out[name] = torch.cat([state[name], extra.to(state[name].device, state[name].dtype)])
    return out

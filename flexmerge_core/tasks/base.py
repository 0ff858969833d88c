"""What a task kind is: the format of a task's head and held-out data, and the metric it is scored by.

Why a class per kind: evaluation only needs "inputs in, one score per example out"; what the data file
holds, how a head turns encoder outputs into predictions and what counts as a good prediction differ
per kind (classification accuracy, a regression error, ...). Keeping those three answers together
behind one interface means a new data format or metric is one new file, and nothing else in the engine
knows which metric it runs. The value of a task is the mean of its per-example scores; the per-example
scores themselves are kept so two deployments can later be compared example by example.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol

import torch

DEFAULT_KIND = "image_classification"   # a manifest task without "kind"


class Header(Protocol):
    """The header of one safetensors/torch file of a zoo (names, shapes, dtypes; tensors read on demand)."""

    path: Path
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, torch.dtype]

    @property
    def names(self) -> list[str]: ...

    def read(self, name: str) -> torch.Tensor: ...


@dataclass(frozen=True)
class TaskFiles:
    """What a kind may look at for one task: its files' headers and the manifest's facts about it."""

    task: str                           # the task's name (for error messages)
    head: Optional[Header]              # None when the manifest names no head
    data: Optional[Header]              # None when the manifest names no held-out data
    classes: Optional[tuple[str, ...]]  # the manifest's class names, if any
    feature_dim: Optional[int]          # width of the encoder's output, when the architecture tells
    head_input: str                     # the zoo's "raw" | "normalized"


@dataclass(frozen=True)
class HeldOut:
    """A task's held-out examples and what `score` needs besides the encoder outputs.

    `head` holds the head's tensors (moved to the evaluation device as float32) and any plain
    settings the kind's `score` reads (passed through unchanged); None when the task has no head.
    """

    inputs: torch.Tensor                # [N, ...]: fed to the encoder in batches along dim 0
    targets: torch.Tensor               # [N, ...]
    head: Optional[dict[str, Any]]


class TaskKind:
    """One data format + metric. Subclasses set the three attributes and implement the three methods."""

    name: str = ""                      # the manifest's task "kind"
    metric: str = ""                    # what `value` is called in curves and charts, e.g. "accuracy"
    higher_is_better: bool = True

    def validate(self, files: TaskFiles) -> None:
        """Header-level checks when the zoo opens (ZooError naming the file and task); reads no tensor."""
        raise NotImplementedError

    def open_data(self, path: Path, role: str) -> Optional[Header]:
        """Open a data file in the kind's own format (e.g. a text data spec); None: a tensor file, opened
        lazily by the zoo. Whatever is returned needs `path`, `files` (every file it reads, for the zoo's
        fingerprint) and `reads`."""
        return None

    def input_shape(self, files: TaskFiles) -> Optional[tuple[int, ...]]:
        """One example's input shape from the data file's header, when fixed (the zoo checks at open that
        the model takes it); None when there is nothing to check."""
        return None

    def load(self, zoo, task_id: int) -> Optional[HeldOut]:
        """The task's held-out examples (value checks that need the data go here); None without data."""
        raise NotImplementedError

    def score(self, outputs: torch.Tensor, targets: torch.Tensor, head: dict[str, Any]) -> torch.Tensor:
        """Per-example scores [n] of one batch: encoder `outputs` [n, ...] against `targets` [n, ...]."""
        raise NotImplementedError

    def value(self, scores: torch.Tensor) -> float:
        """The task's metric value: the mean of its per-example scores.

        Summed in float64: for 0/1 scores the sum is an exact integer, so the value is exactly
        correct / n (the same float as Python's int division), whatever the batch order.
        """
        return float(scores.double().sum()) / len(scores)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, metric={self.metric!r})"

"""One task's evaluation result and its compact on-disk form (the eval cache's entries).

Why keep per-example scores: two deployments evaluated on the same examples can be compared with a
paired test (McNemar for 0/1 scores) only if each example's score is known, not just the mean. They are
stored compactly: 0/1 scores as a bit string (500 examples: 84 base64 characters), others as float32.
"""
from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch


@dataclass(frozen=True, eq=False)
class TaskScore:
    metric: str              # the task kind's metric name, e.g. "accuracy"
    value: float             # mean of `scores` (kind.value)
    n: int                   # held-out examples scored
    higher_is_better: bool
    scores: torch.Tensor     # float32 [n], one per held-out example, in data order

    def to_json(self) -> dict:
        return {"metric": self.metric, "value": self.value, "n": self.n, "higher_is_better": self.higher_is_better,
                "scores": encode_scores(self.scores)}

    @classmethod
    def from_json(cls, doc) -> Optional["TaskScore"]:
        """The score an entry holds, or None when it is not a well-formed entry of this format."""
        try:
            n, value = doc["n"], doc["value"]
            if isinstance(n, bool) or not isinstance(n, int) or n <= 0 or not isinstance(value, float) \
                    or not math.isfinite(value) or not isinstance(doc["metric"], str) \
                    or not isinstance(doc["higher_is_better"], bool):
                return None
            scores = decode_scores(doc["scores"], n)
        except (KeyError, TypeError, ValueError):
            return None
        return cls(doc["metric"], value, n, doc["higher_is_better"], scores)


def encode_scores(scores: torch.Tensor) -> dict:
    """{"encoding": "bits" | "float32", "data": base64}; bits when every score is exactly 0 or 1."""
    values = scores.detach().to("cpu", torch.float32).numpy()
    if np.all((values == 0) | (values == 1)):
        return {"encoding": "bits", "data": base64.b64encode(np.packbits(values.astype(bool)).tobytes()).decode()}
    return {"encoding": "float32", "data": base64.b64encode(values.astype("<f4").tobytes()).decode()}


def decode_scores(doc: dict, n: int) -> torch.Tensor:
    """The float32 [n] scores of `encode_scores`'s output (ValueError when it does not hold n scores)."""
    raw = np.frombuffer(base64.b64decode(doc["data"], validate=True), dtype=np.uint8)
    if doc["encoding"] == "bits":
        if len(raw) != (n + 7) // 8:
            raise ValueError("bit string of the wrong length")
        values = np.unpackbits(raw)[:n].astype(np.float32)
    elif doc["encoding"] == "float32":
        if len(raw) != 4 * n:
            raise ValueError("float32 scores of the wrong length")
        values = raw.view("<f4").astype(np.float32)
    else:
        raise ValueError(f"unknown encoding {doc['encoding']!r}")
    return torch.from_numpy(values.copy())

"""The one registry of merge algorithms: name -> class, and `get_algorithm` to build one."""
from __future__ import annotations

from flexmerge_core.algorithms.avg import Average
from flexmerge_core.algorithms.base import MergeAlgorithm
from flexmerge_core.algorithms.consensus import Consensus, ConsensusTaskArithmetic
from flexmerge_core.algorithms.dare import DareTaskArithmetic, DareTies
from flexmerge_core.algorithms.emr import Emr
from flexmerge_core.algorithms.pcb import Pcb
from flexmerge_core.algorithms.ta import TaskArithmetic
from flexmerge_core.algorithms.ties import Ties
from flexmerge_core.algorithms.tsv import TsvMerge
from flexmerge_core.errors import InvalidArgumentError

_CLASSES = (Average, TaskArithmetic, Ties, DareTaskArithmetic, DareTies, Pcb, TsvMerge,
            Consensus, ConsensusTaskArithmetic, Emr)
REGISTRY = {cls.name: cls for cls in _CLASSES}
ALIASES = {"dare": "dare_ta"}  # DARE alone means DARE in front of task arithmetic
ALGORITHM_NAMES = tuple(REGISTRY)


def get_algorithm(name: str, **hyperparameters) -> MergeAlgorithm:
    """A fresh algorithm instance with the paper's defaults, overridden by `hyperparameters`."""
    cls = REGISTRY.get(ALIASES.get(name, name)) if isinstance(name, str) else None
    if cls is None:
        raise InvalidArgumentError(f"unknown algorithm {name!r} (known: {', '.join(ALGORITHM_NAMES)})")
    return cls(**hyperparameters)

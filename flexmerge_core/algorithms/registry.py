"""The one registry of merge algorithms: name -> class, and `get_algorithm` to build one."""
from __future__ import annotations

from typing import Any, Iterable, Mapping

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


def split_assignments(texts: Iterable[str]) -> dict[str, str]:
    """['lam=0.3', 'k=20'] -> {'lam': '0.3', 'k': '20'} (the CLI's repeated --param name=value)."""
    out: dict[str, str] = {}
    for text in texts:
        name, sep, value = text.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise InvalidArgumentError(f"--param: expected name=value, got {text!r}")
        if name.strip() in out:
            raise InvalidArgumentError(f"--param: option {name.strip()!r} given twice")
        out[name.strip()] = value.strip()
    return out


def parse_options(name: str, assignments: Mapping[str, str], strict: bool = True) -> tuple[tuple[str, Any], ...]:
    """The options of `assignments` that algorithm `name` declares, read by their declared kind and
    validated against their ranges: sorted (option, value) pairs, as PlanSettings.hyperparameters.
    strict: an option the algorithm does not declare is an error (else it is left for another algorithm)."""
    declared = {p.name: p for p in type(get_algorithm(name)).params}
    unknown = sorted(set(assignments) - set(declared))
    if strict and unknown:
        raise InvalidArgumentError(f"algorithm {name!r} has no option {unknown[0]!r} (options: {sorted(declared)})")
    return tuple(sorted((k, declared[k].parse(v)) for k, v in assignments.items() if k in declared))

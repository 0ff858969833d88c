"""Merge algorithms behind one registry (see docs/ALGORITHMS.md section 4)."""
from flexmerge_core.algorithms.base import HyperParam, MergeAlgorithm, MergeResult
from flexmerge_core.algorithms.registry import ALGORITHM_NAMES, get_algorithm

__all__ = ["ALGORITHM_NAMES", "HyperParam", "MergeAlgorithm", "MergeResult", "get_algorithm"]

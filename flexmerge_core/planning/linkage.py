"""Per-block agglomeration: the sequence of merges one block goes through (ALGORITHMS.md section 2).

Why our own loop instead of scipy.cluster.hierarchy.linkage: the plan must equal, event for event,
the naive "merge the most similar pair" loop including its tie rule (equal similarity -> the pair
with the lexicographically smallest (min id of group a, min id of group b)). scipy cannot promise that:
it works on distances 1 - s, whose rounding turns distinct similarities into ties; its nearest-neighbour
chain breaks ties in its own internal order; and its average linkage is updated with Lance-Williams
recurrences whose rounding differs from the mean of the cross pairs. With M <= a few dozen tasks the
O(M^3) loop below costs milliseconds per block, so exactness is free.

Every linkage keeps a matrix `link[i, j]` = similarity of the groups labelled i and j, where a group's
label is its smallest task id; inactive labels and the diagonal hold -inf.
`avg` is the exactly rounded mean of the cross pairs (math.fsum, then one division), so its value does
not depend on the order in which groups were formed.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np

from flexmerge_core.errors import InvalidArgumentError

LINKAGES = ("min", "max", "avg", "uni")
MATRIX_LINKAGES = ("min", "max", "avg")

Group = tuple[int, ...]
BlockStep = tuple[Group, Group, float]          # (group_a, group_b, similarity), min(a) < min(b)
GroupSimilarity = Callable[[Group, Group], float]


def check_linkage(linkage: str) -> str:
    if linkage not in LINKAGES:
        raise InvalidArgumentError(f"unknown linkage {linkage!r}: choose one of {', '.join(LINKAGES)}")
    return linkage


def _agglomerate(link: np.ndarray, new_row: Callable, rng: Optional[np.random.Generator]) -> list[BlockStep]:
    """Merge down to one group. Greedy (rng None): the most similar pair, ties -> smallest labels;
    random: a uniformly drawn pair of current groups. new_row(link, i, j, members) -> similarities of
    the merged group (label i) to every label, computed before link is updated."""
    m = link.shape[0]
    link = np.array(link, dtype=np.float64, copy=True)
    upper = np.triu(np.ones((m, m), dtype=bool), k=1)
    link = np.where(upper, link, link.T)      # exactly symmetric, from the upper triangle
    np.fill_diagonal(link, -np.inf)
    members: dict[int, Group] = {i: (i,) for i in range(m)}
    steps: list[BlockStep] = []
    for _ in range(m - 1):
        if rng is None:
            # The first maximum in row-major order of the symmetric matrix is the tie rule's pair:
            # its row is the smallest label in any best pair, its column that label's smallest partner.
            i, j = divmod(int(np.argmax(link)), m)
        else:
            labels = sorted(members)
            pairs = [(a, b) for pos, a in enumerate(labels) for b in labels[pos + 1:]]
            i, j = pairs[int(rng.integers(len(pairs)))]
        steps.append((members[i], members[j], float(link[i, j])))
        members[i] = tuple(sorted(members[i] + members.pop(j)))
        row = np.asarray(new_row(link, i, j, members), dtype=np.float64)
        active = np.zeros(m, dtype=bool)
        active[list(members)] = True
        row = np.where(active, row, -np.inf)
        row[i] = -np.inf
        link[j, :] = link[:, j] = -np.inf
        link[i, :] = link[:, i] = row
    return steps


def _matrix_row(sim: np.ndarray, linkage: str) -> Callable:
    def row(link, i, j, members):
        if linkage == "min":
            return np.minimum(link[i], link[j])
        if linkage == "max":
            return np.maximum(link[i], link[j])
        merged = list(members[i])
        out = np.full(link.shape[0], -np.inf)
        for k, other in members.items():
            if k != i:
                cross = sim[np.ix_(merged, list(other))]
                out[k] = math.fsum(cross.ravel().tolist()) / cross.size
        return out
    return row


def matrix_sequence(sim: np.ndarray, linkage: str = "min",
                    rng: Optional[np.random.Generator] = None) -> list[BlockStep]:
    """The merge sequence of one block from its M x M similarity matrix (linkage min, max or avg)."""
    if linkage not in MATRIX_LINKAGES:
        raise InvalidArgumentError(f"linkage {linkage!r} needs merged vectors, not a similarity matrix; "
                                   f"use one of {', '.join(MATRIX_LINKAGES)}")
    return _agglomerate(sim, _matrix_row(np.asarray(sim, dtype=np.float64), linkage), rng)


def callable_sequence(num_tasks: int, group_similarity: GroupSimilarity,
                      rng: Optional[np.random.Generator] = None) -> list[BlockStep]:
    """The merge sequence of one block when group similarity needs the groups themselves (`uni`).
    group_similarity(a, b) is called with a's min id < b's min id, also for singletons."""
    link = np.full((num_tasks, num_tasks), -np.inf)
    for i in range(num_tasks):
        for j in range(i + 1, num_tasks):
            link[i, j] = link[j, i] = group_similarity((i,), (j,))

    def row(link, i, j, members):
        out = np.full(num_tasks, -np.inf)
        for k, other in members.items():
            if k != i:
                out[k] = group_similarity(*sorted((members[i], other)))
        return out

    return _agglomerate(link, row, rng)

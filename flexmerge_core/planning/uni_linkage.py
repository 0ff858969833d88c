"""The `uni` linkage: similarity of two groups = cosine of their merged vectors (ALGORITHMS.md section 2).

Why per block: a merge in one block never changes another block's groups, so each block's `uni`
sequence needs only that block's (preprocessed) task vectors, and blocks are streamed one at a time.
A group the algorithm does not merge (a singleton; a mask-method group of <= 2 tasks) is represented by
the mean of its members' vectors, so a singleton's vector is its own task vector.
Merged vectors are kept only for the groups that still exist, to bound memory by M block vectors.
"""
from __future__ import annotations

from typing import Sequence

import torch

from flexmerge_core.algorithms.base import OwnedBlock
from flexmerge_core.errors import InvalidArgumentError
from flexmerge_core.planning.linkage import Group, GroupSimilarity, callable_sequence
from flexmerge_core.planning.similarity import cosine_from_gram, gram_matrix


def uni_group_similarity(vectors: dict[str, torch.Tensor], algorithm, device: torch.device,
                         names: Sequence[str]) -> GroupSimilarity:
    """(group_a, group_b) -> cosine of the two groups' merged block vectors.

    names: the block's tensors; `vectors` (preprocessed) may hold more entries, such as TSV-M's
    per-task factors, which only the merge reads.
    """
    if algorithm is None:
        raise InvalidArgumentError("linkage 'uni' needs a merge algorithm (its merged vectors)")
    live: dict[Group, torch.Tensor] = {}

    def merged(group: Group) -> torch.Tensor:
        if group not in live:
            for old in [g for g in live if set(g) < set(group)]:
                del live[old]
            rows = {n: t[list(group)] for n, t in vectors.items()}
            result = algorithm.merge(rows, group) if len(group) > 1 else None
            if result is not None and result.unified is not None:
                parts = [result.unified[n].reshape(-1) for n in names]
            else:
                parts = [rows[n].reshape(len(group), -1).mean(0) for n in names]
            live[group] = torch.cat([p.to(torch.float32) for p in parts])
        return live[group]

    def similarity(a: Group, b: Group) -> float:
        pair = torch.stack([merged(a), merged(b)])
        return float(cosine_from_gram(gram_matrix({"pair": pair}, device))[0, 1])

    return similarity


def uni_block_sequence(zoo, block, algorithm, rng, device):
    """The `uni` merge sequence of one block, read from the zoo and freed when this returns."""
    vectors = algorithm.preprocess_block(OwnedBlock(zoo.task_vectors(block.params)))
    similarity = uni_group_similarity(vectors, algorithm, device, list(block.params))
    return callable_sequence(len(zoo.task_names), similarity, rng)

"""tsv (TSV-M, task singular vectors merge).

For each 2-D weight: per member SVD U_i S_i V_i^T, keep the top k = floor(min(m, n)/g) triplets,
concatenate the U's (m x gk), S's and V's, replace the concatenated U and V each by its polar factor
(P Q^T from the SVD P Sigma Q^T, the nearest matrix with orthonormal columns) and output
alpha * U_perp diag(S) V_perp^T. Other tensors (1-D, 4-D conv kernels) and matrices with k = 0
(rank below the group size) are averaged. SVDs run in float64 so CPU and CUDA agree closely; the
result is sign-invariant (flipping a singular pair flips the matching polar column) so device-specific
SVD sign choices do not change it.
"""
from __future__ import annotations

import torch

from flexmerge_core.algorithms.base import HyperParam, MergeAlgorithm, MergeResult

ALPHA = HyperParam("alpha", 1.0, float, 0.0, 10.0, help="scaling of the merged matrix")


def polar_factor(matrix: torch.Tensor) -> torch.Tensor:
    """P Q^T for matrix = P Sigma Q^T: orthonormal columns spanning the same space."""
    P, _, Qh = torch.linalg.svd(matrix, full_matrices=False)
    return P @ Qh


def tsv_factors(stack: torch.Tensor):
    """(U_perp, S, V_perp) of a [g, m, n] stack, or None when k = 0."""
    g, m, n = stack.shape
    k = min(m, n) // g
    if k == 0:
        return None
    U, S, Vh = torch.linalg.svd(stack.to(torch.float64), full_matrices=False)
    U_cat = U[:, :, :k].permute(1, 0, 2).reshape(m, g * k)
    V_cat = Vh[:, :k, :].permute(2, 0, 1).reshape(n, g * k)
    return polar_factor(U_cat), S[:, :k].reshape(g * k), polar_factor(V_cat)


class TsvMerge(MergeAlgorithm):
    name = "tsv"
    params = (ALPHA,)

    def _merge(self, block, members):
        alpha = self._hp["alpha"]
        out = {}
        for name, stack in block.items():
            factors = tsv_factors(stack) if stack.ndim == 3 else None
            if factors is None:
                out[name] = alpha * stack.mean(dim=0)
            else:
                U, S, V = factors
                out[name] = (alpha * (U * S) @ V.T).to(stack.dtype)
        return MergeResult(unified=out)

"""emr (EMR-Merging): elect a unified vector, per-task masks and per-task rescalers.

Per tensor: flag = sign of the members' mean (+1 if > 0, else -1); mask m_k = tau_k * flag > 0;
u = flag * max_k |m_k * tau_k|. Per member over the block's tensors:
gamma_k = sum mean|tau_k| / sum mean|m_k * u|, and 1 when that denominator is 0 (nothing of u kept).
Task k is rebuilt as theta_pre + gamma_k * m_k * u. Groups of size <= 2 are not merged.
"""
from __future__ import annotations

import torch

from flexmerge_core.algorithms.base import MergeAlgorithm, MergeResult


class Emr(MergeAlgorithm):
    name = "emr"
    storage = "mask"

    def _merge(self, block, members):
        unified, masks = {}, {}
        g = len(members)
        reference = next(iter(block.values()))
        own = torch.zeros(g, dtype=torch.float64, device=reference.device)
        kept = torch.zeros_like(own)
        for name, t in block.items():
            flag = torch.where(t.mean(dim=0) > 0, 1.0, -1.0).to(t.dtype)
            mask = t * flag > 0
            magnitude = t.abs()
            u = flag * (magnitude * mask).amax(dim=0)
            unified[name], masks[name] = u, mask
            count = max(u.numel(), 1)
            own += magnitude.reshape(g, -1).sum(dim=1, dtype=torch.float64) / count
            # mean |m_k * u| = (m_k . |u|) / count: a mat-vec, no [g, d] temporary
            kept += (mask.reshape(g, -1).to(torch.float64) @ u.abs().reshape(-1).to(torch.float64)) / count
        gamma = torch.where(kept > 0, own / torch.where(kept > 0, kept, torch.ones_like(kept)),
                            torch.ones_like(kept))
        return MergeResult(unified=unified, masks=masks, scales=gamma.to(reference.dtype))

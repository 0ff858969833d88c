"""emr (EMR-Merging): elect a unified vector, per-task masks and per-task rescalers.

Per tensor: flag = sign of the members' mean (+1 if > 0, else -1); mask m_k = tau_k * flag > 0;
u = flag * max_k |m_k * tau_k|. Per member over the block's tensors:
gamma_k = sum mean|tau_k| / sum mean|m_k * u|, and 1 when that denominator is 0 (nothing of u kept).
Task k is rebuilt as theta_pre + gamma_k * m_k * u. Groups of size <= 2 are not merged.

Cost model (columns.py): one read of the group and one write of the [g, d] bool masks (the output).
Per column slice: the mean's sign, x * flag, max(., 0) (the mask as 0/1 after sign_(), its column max
is |u|), |x| row sums, and a mat-vec of the 0/1 mask with |u| for the gamma denominators: ~9 in-cache
ops, no per-entry comparison (float-to-bool compares cost 3x the clamp + cast). Measured on one ViT-B-32
MLP block, CPU time of one thread: 0.25 s at g = 30, 6.4x averaging (the old code: 2.40 s, 69x); about
0.08 s of it is the kernel mapping the fresh 141 MB of masks.
"""
from __future__ import annotations

import torch

from flexmerge_core.algorithms.base import MergeAlgorithm, MergeResult
from flexmerge_core.algorithms.columns import as_rows, column_slices


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
            rows, own_sum, kept_sum = as_rows(t), torch.zeros_like(own), torch.zeros_like(kept)
            u, mask = torch.empty_like(rows[0]), torch.empty(rows.shape, dtype=torch.bool, device=t.device)
            for cols in column_slices(rows):
                x = rows[:, cols]
                flag = torch.where(x.mean(dim=0) > 0, 1.0, -1.0).to(t.dtype)
                signed = x * flag  # > 0 exactly where the member agrees with the flag
                agree = signed.clamp_min(0)
                magnitude = agree.amax(dim=0)  # max_k |m_k * tau_k|
                u[cols] = flag * magnitude
                own_sum += signed.abs_().sum(dim=1)
                agree.sign_()  # the mask as 0/1 floats
                mask[:, cols] = agree
                # sum |m_k * u| over the slice: a mat-vec of the mask, no [g, c] product
                kept_sum += agree @ magnitude
            count = max(u.numel(), 1)
            own += own_sum / count
            kept += kept_sum / count
            unified[name], masks[name] = u.reshape(t.shape[1:]), mask.reshape(t.shape)
        gamma = torch.where(kept > 0, own / torch.where(kept > 0, kept, torch.ones_like(kept)),
                            torch.ones_like(kept))
        return MergeResult(unified=unified, masks=masks, scales=gamma.to(reference.dtype))

"""DARE (drop and rescale), composed with ta or ties: registered as `dare_ta` and `dare_ties`.

Each task's vector: drop every entry with probability p, rescale survivors by 1/(1-p). With TIES the
trim applies AFTER dropping (the paper's code silently discarded DARE there; we do not).
Determinism and streaming: the random draw for one tensor of one task comes from its own generator,
seeded by a SHA-256 digest of (seed, task id, parameter name) (never Python's hash(), which is
salted per process). So a block can be preprocessed alone, in any order, on any device, and gives
the same drop mask every time. This differs from drawing one whole-model vector from a single
generator (the paper's code): the masks are equally distributed but not bit-identical to it.
Draws are made on the CPU so CUDA and CPU runs drop the same entries.
Cost model: the merge is the base algorithm's on the dropped vectors (dare_ta 1.0x averaging, dare_ties
as ties). Drawing costs one uniform per entry from a sequential CPU generator (~3.4 ns/entry), the
price of drop masks that do not depend on block order or device; so each mask is drawn once per
process, a tensor's M masks on DRAW_THREADS threads at once (drop_masks.prefetch), and kept bit-packed
(11 MB per ViT-B-32 task). Later reads of the zoo through _input_vectors unpack it (~0.03 ns/entry)
into an integer keep mask (~0.2 ns) that the rescaled floats are and-ed with (dropped: +0.0; 0.3 ns
with the rescale, where masked_fill_ took 1.3), in place in an OwnedBlock. dare_ties' thresholds never
build dropped rows: their two passes take each row's kept entries (kept_rows: numpy's compress, ~1 ns
an entry read from memory) and count the dropped ones (order_stats.SparseRows), so the 90% zeros are
never written, keyed or bincounted (a bincount of 90% equal keys: 1.9 ns a key, else 0.5).
bench_spectrum, old and new code alternately on 2 near-idle cores: 30-task fp16 ViT-B-32 zoo, plan
23.4 s (was 82.1 s; ~7 s of it drawing, ~6 s selecting kept entries), merges 31.8 s (43.1 s), whole
spectrum 57.0 s (127.1 s), 15.6x averaging (34.9x); 8-task fp32 zoo 15.7 s (28.8 s), 6.4x (11.2x).
The merges draw nothing (the plan's masks are kept), and each (block, task) is dropped once:
the merger's row cache (deployment/prepared_rows.py) keys dropped rows by `input_key` = (p, seed),
which dare_ta and dare_ties share; dare_ties' rows add the trim's keep (ties.py). Group bases
(deployment/group_bases.py) are keyed by those rows: dare_ta's mean of the dropped rows and dare_ties'
disjoint mean of the dropped, trimmed rows are shared across lam values, never with ta's or ties' bases.
"""
from __future__ import annotations

from typing import Iterator, Optional

import torch

from flexmerge_core.algorithms.base import HyperParam, OwnedBlock, float_block, iter_rows
from flexmerge_core.algorithms.drop_masks import DropMaskStore, shared_drop_masks
from flexmerge_core.algorithms.order_stats import SparseRows
from flexmerge_core.algorithms.ta import TaskArithmetic
from flexmerge_core.algorithms.ties import Ties
from flexmerge_core.cache import content_hash

DROP = HyperParam("p", 0.9, float, 0.0, 1.0, high_inclusive=False, help="drop probability")
SEED = HyperParam("seed", 0, int, 0, 2 ** 62, help="seed of the drop masks")


def drop_and_rescale(block, tasks, p: float, seed: int, masks: Optional[DropMaskStore] = None) -> dict:
    """Each row (task) of each tensor: keep an entry where its uniform draw >= p, scale by 1/(1-p).

    Row by row into one output (the block itself when it is an OwnedBlock): no [M, ...] mask, zeros or
    scaled temporaries (their new pages cost as much as the draws). The masks come from `masks`
    (default: the process's store), drawn once. The result is an OwnedBlock either way."""
    masks = shared_drop_masks() if masks is None else masks
    owned = isinstance(block, OwnedBlock)
    block = float_block(block)
    rows = next(iter(block.values())).shape[0]
    task_ids = list(iter_rows(tasks, rows))
    out = OwnedBlock()
    for name, t in block.items():
        dropped = t if owned else torch.empty_like(t)
        bits = torch.int32 if t.dtype == torch.float32 else torch.int64
        masks.prefetch(seed, task_ids, name, p, t.shape[1:])
        for row, task in enumerate(task_ids):
            keep = masks.keep_bits(seed, task, name, p, t.shape[1:], bits).to(t.device)
            torch.div(t[row], 1.0 - p, out=dropped[row]).view(bits).bitwise_and_(keep)  # dropped: +0.0
        out[name] = dropped
    return out


def kept_rows(block, tasks, p: float, seed: int, masks: Optional[DropMaskStore] = None) -> Iterator[SparseRows]:
    """drop_and_rescale's rows tensor by tensor as SparseRows: each row's kept entries, rescaled the same
    way, and the count of its dropped ones (+0.0 there), which order statistics then never see one by one."""
    masks = shared_drop_masks() if masks is None else masks
    block = float_block(block)
    task_ids = list(iter_rows(tasks, next(iter(block.values())).shape[0]))
    for name, t in block.items():
        masks.prefetch(seed, task_ids, name, p, t.shape[1:])
        kept = [masks.kept_entries(seed, task, name, p, t[row]).div_(1.0 - p) for row, task in enumerate(task_ids)]
        yield SparseRows(kept, [t[0].numel() - k.numel() for k in kept])


class DareMixin:
    """Puts the drop step in front of the base algorithm's own preprocessing."""

    @property
    def has_preprocessing(self) -> bool:
        return True

    @property
    def input_key(self) -> str:
        """The drop depends on p and seed only: dare_ta and dare_ties with equal p and seed share it."""
        return content_hash("rows", "dare-drop", self._hp["p"], self._hp["seed"])

    def _input_vectors(self, block, tasks):
        return drop_and_rescale(block, tasks, self._hp["p"], self._hp["seed"])


class DareTaskArithmetic(DareMixin, TaskArithmetic):
    name = "dare_ta"
    params = TaskArithmetic.params + (DROP, SEED)


class DareTies(DareMixin, Ties):
    name = "dare_ties"
    params = Ties.params + (DROP, SEED)

    def _ranked_rows(self, block):
        return kept_rows(block, None, self._hp["p"], self._hp["seed"])

"""The encoder forward pass in stages, with any task's tensors swapped in for the duration of a stage.

Why stages: along a curve a task's model changes in one block at a time. For open_clip's
VisionTransformer the forward is split into stem (patch embedding, class/positional embeddings,
ln_pre), two stages per residual block (attention half: ln_1, attn, ls_1; MLP half: ln_2, mlp,
ls_2), and the pool (ln_post, projection); the input of each stage can be kept, and a changed block
only forces re-running the stages from its own onwards.
Any other encoder runs as one stage (correct, just not incremental).
Why swapping: every task runs through one module instance with its own (shared, view) tensors put
in place of the module's and put back afterwards, so no per-task module or weight copy is ever
made. This is what torch.func.functional_call does, minus its scan of the whole module tree on
every call (~1.5 ms, as much as a stage's compute on small models); the owner of each tensor is
looked up once instead. Like functional_call, it is not for concurrent use of one encoder.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterable, Optional

import torch

from flexmerge_core.planning.similarity import pick_device

_RESBLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.(ln_1|attn|ls_1|ln_2|mlp|ls_2)\.")
_FIRST_HALF = ("ln_1", "attn", "ls_1")
_STEM = ("conv1.", "class_embedding", "positional_embedding", "ln_pre.")
_POOL = ("ln_post.", "proj")


class _Stages(torch.nn.Module):
    """forward(x, stage): one stage of an open_clip VisionTransformer.

    Stages: 0 stem; 2i+1 and 2i+2 the attention and MLP halves of residual block i; 2L+1 the pool.
    """

    def __init__(self, encoder: torch.nn.Module):
        super().__init__()
        self.enc = encoder
        self.layers = len(encoder.transformer.resblocks)
        self.batch_first = getattr(encoder.transformer, "batch_first", True)

    def forward(self, x: torch.Tensor, stage: int) -> torch.Tensor:
        enc = self.enc
        if stage == 0:
            x = enc._embeds(x)
            return x if self.batch_first else x.transpose(0, 1).contiguous()
        if stage <= 2 * self.layers:   # the two residual halves of ResidualAttentionBlock.forward
            block = enc.transformer.resblocks[(stage - 1) // 2]
            if stage % 2:
                return x + block.ls_1(block.attention(q_x=block.ln_1(x)))
            return x + block.ls_2(block.mlp(block.ln_2(x)))
        if not self.batch_first:
            x = x.transpose(0, 1)
        pooled, _ = enc._pool(x)
        return pooled @ enc.proj if enc.proj is not None else pooled


class _Whole(torch.nn.Module):
    """The fallback: the whole encoder as a single stage."""

    def __init__(self, encoder: torch.nn.Module):
        super().__init__()
        self.enc = encoder

    def forward(self, x: torch.Tensor, stage: int) -> torch.Tensor:
        return self.enc(x)


def _vit_stage(name: str, layers: int) -> Optional[int]:
    match = _RESBLOCK.match(name)
    if match:
        return 2 * int(match.group(1)) + (1 if match.group(2) in _FIRST_HALF else 2)
    if name.startswith(_STEM):
        return 0
    if name.startswith(_POOL):
        return 2 * layers + 1
    return None


def _is_plain_vit(encoder: torch.nn.Module) -> bool:
    from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

    return (isinstance(encoder, VisionTransformer) and getattr(encoder, "attn_pool", None) is None
            and all(type(block) is ResidualAttentionBlock for block in encoder.transformer.resblocks))


def _owner_table(encoder: torch.nn.Module, name: str) -> dict:
    """The `_parameters` or `_buffers` dict of the submodule that holds state_dict entry `name`."""
    prefix, _, attr = name.rpartition(".")
    owner = encoder.get_submodule(prefix) if prefix else encoder
    return owner._parameters if attr in owner._parameters else owner._buffers


class StagedEncoder:
    """Runs `encoder` stage by stage with a task's tensors: features(stage_params, x, start, record)."""

    def __init__(self, encoder: torch.nn.Module, device=None):
        self.device = pick_device(device)
        encoder = encoder.to(self.device).eval()
        # compute dtypes: the module is built in float32, so float16/bfloat16 zoos compute in float32 too
        self._dtypes = {n: t.dtype for n, t in encoder.state_dict().items()}
        names = list(self._dtypes)
        self._tables = {n: (_owner_table(encoder, n), n.rpartition(".")[2]) for n in names}
        self.module: torch.nn.Module = _Whole(encoder)
        self._stage = {n: 0 for n in names}
        if _is_plain_vit(encoder):
            layers = len(encoder.transformer.resblocks)
            stages = {n: _vit_stage(n, layers) for n in names}
            if all(s is not None for s in stages.values()):
                self.module, self._stage = _Stages(encoder), stages
        self.num_stages = max(self._stage.values()) + 1

    def stage_of(self, name: str) -> int:
        return self._stage[name]

    def split(self, state: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """A task's tensors grouped by stage, on the device in the compute dtype (no copy when already so)."""
        per_stage: list[dict[str, torch.Tensor]] = [{} for _ in range(self.num_stages)]
        for name, tensor in state.items():
            per_stage[self._stage[name]][name] = tensor.to(self.device, self._dtypes[name], non_blocking=True)
        return per_stage

    @contextmanager
    def _swapped(self, tensors: dict[str, torch.Tensor]):
        saved = []
        try:
            for name, tensor in tensors.items():
                table, attr = self._tables[name]
                saved.append((table, attr, table[attr]))
                table[attr] = tensor
            yield
        finally:
            for table, attr, original in reversed(saved):
                table[attr] = original

    @torch.no_grad()
    def features(self, stage_params: list[dict], x: torch.Tensor, start: int = 0,
                 record: Iterable[int] = ()) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Run stages start..end on x (the input of stage `start`); returns output and recorded stage inputs."""
        record = set(record)
        kept: dict[int, torch.Tensor] = {}
        for stage in range(start, self.num_stages):
            if stage in record:
                kept[stage] = x
            with self._swapped(stage_params[stage]):
                x = self.module(x, stage)
        return x, kept


def head_logits(features: torch.Tensor, head: dict[str, torch.Tensor], normalized: bool) -> torch.Tensor:
    """Class logits: head(features), features L2-normalised first for CLIP zero-shot heads."""
    if normalized:
        features = features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return features @ head["weight"].t() + head["bias"]

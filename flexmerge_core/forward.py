"""The encoder forward pass in stages, with any task's parameters swapped in functionally.

Why stages: along a curve a task's model changes in one block at a time. For open_clip's
VisionTransformer the forward is split into stem (patch embedding, class/positional embeddings,
ln_pre), one stage per residual block, and the pool (ln_post, projection); the input of each stage
can be kept, and a changed block only forces re-running the stages from its own onwards.
Any other encoder runs as one stage (correct, just not incremental).
Why functional_call: every task runs through one module instance with its (shared, view) tensors
passed in, so no per-task module or weight copy is ever made.
"""
from __future__ import annotations

import re
from typing import Iterable, Optional

import torch
from torch.func import functional_call

from flexmerge_core.merge import default_device

_RESBLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.")
_STEM = ("conv1.", "class_embedding", "positional_embedding", "ln_pre.")
_POOL = ("ln_post.", "proj")


class _Stages(torch.nn.Module):
    """forward(x, stage): one stage of an open_clip VisionTransformer (parameters under `enc.`)."""

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
        if stage <= self.layers:
            return enc.transformer.resblocks[stage - 1](x)
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
        return int(match.group(1)) + 1
    if name.startswith(_STEM):
        return 0
    if name.startswith(_POOL):
        return layers + 1
    return None


class StagedEncoder:
    """Runs `encoder` stage by stage with a task's tensors: features(params, x, start, record)."""

    def __init__(self, encoder: torch.nn.Module, device=None):
        self.device = torch.device(device) if device is not None else default_device()
        encoder = encoder.to(self.device).eval()
        names = list(encoder.state_dict())
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
        """A task's tensors grouped by stage, named for the wrapper module, on the device."""
        per_stage: list[dict[str, torch.Tensor]] = [{} for _ in range(self.num_stages)]
        for name, tensor in state.items():
            per_stage[self._stage[name]][f"enc.{name}"] = tensor.to(self.device, non_blocking=True)
        return per_stage

    @torch.no_grad()
    def features(self, stage_params: list[dict], x: torch.Tensor, start: int = 0,
                 record: Iterable[int] = ()) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Run stages start..end on x (the input of stage `start`); returns output and recorded stage inputs."""
        record = set(record)
        kept: dict[int, torch.Tensor] = {}
        for stage in range(start, self.num_stages):
            if stage in record:
                kept[stage] = x
            x = functional_call(self.module, stage_params[stage], (x, stage), strict=False)
        return x, kept


def _is_plain_vit(encoder: torch.nn.Module) -> bool:
    from open_clip.transformer import VisionTransformer

    return (isinstance(encoder, VisionTransformer) and getattr(encoder, "attn_pool", None) is None
            and hasattr(encoder, "transformer") and hasattr(encoder.transformer, "resblocks"))


def head_logits(features: torch.Tensor, head: dict[str, torch.Tensor], normalized: bool) -> torch.Tensor:
    """Class logits: head(features), features L2-normalised first for CLIP zero-shot heads."""
    if normalized:
        features = features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return features @ head["weight"].t() + head["bias"]

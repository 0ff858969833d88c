"""Encoder architectures a zoo manifest can name (`architecture.kind`).

Why a registry: the zoo must know the model's parameter names, shapes and state_dict order
(to validate checkpoints and keep model order) without allocating weights, and must be able to
build the real module for evaluation. Both come from the same constructor: once on the `meta`
device (no memory), once for real.
"""
from __future__ import annotations

from typing import Callable

import torch

from flexmerge_core.architectures.build_guard import bounded_build
from flexmerge_core.errors import FlexMergeError, ZooError


def _open_clip_vit(config: dict) -> torch.nn.Module:
    from open_clip.transformer import VisionTransformer

    return VisionTransformer(**config)


def _open_clip_model(config: dict) -> torch.nn.Module:
    from flexmerge_core.architectures.open_clip import build_visual

    return build_visual(config)


ARCHITECTURES: dict[str, Callable[[dict], torch.nn.Module]] = {
    "open_clip_vit": _open_clip_vit,
    "open_clip_model": _open_clip_model,
}


def construct(kind: str, config: dict, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The module of `kind` built from `config` on `device` (randomly initialised)."""
    if kind not in ARCHITECTURES:
        raise ZooError(f"zoo.json: unknown architecture kind '{kind}' (known: {', '.join(ARCHITECTURES)})")
    try:
        with torch.device(device), bounded_build(f"architecture '{kind}'"):
            return ARCHITECTURES[kind](config)
    except FlexMergeError:
        raise
    except Exception as exc:   # a constructor fed a hostile config raises anything (ZeroDivisionError for patch_size 0)
        raise ZooError(f"zoo.json: architecture '{kind}' cannot be built from its config: "
                       f"{type(exc).__name__}: {' '.join(str(exc).split())}") from exc


def state_layout(kind: str, config: dict) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """{name: (shape, dtype)} of the architecture's state_dict, in state_dict order (no memory used)."""
    module = construct(kind, config, device="meta")
    return {name: (tuple(t.shape), t.dtype) for name, t in module.state_dict().items()}

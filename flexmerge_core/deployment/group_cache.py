"""On-disk cache of merged group results (one safetensors file per group), behind GroupMerger's memo.

Why: a group's result depends only on (zoo content, block tensors, members, algorithm), so once
merged it is valid for every size, every plan order and every later session. GroupMerger computes
the key (`cache_key`) and calls `load`/`store`; this class only persists. Each file carries its key
and a SHA-256 of its tensor bytes (cache.write_tensor_entry): a truncated or altered entry, or one
found under another key's name, is treated as missing and recomputed, never trusted.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from flexmerge_core.algorithms.base import MergeResult
from flexmerge_core.cache import cache_root, read_tensor_entry, write_tensor_entry

_FORMAT = "flexmerge-group/1"


def _flatten(result: MergeResult) -> dict[str, torch.Tensor]:
    out = {}
    for prefix, tensors in (("unified", result.unified), ("masks", result.masks), ("originals", result.originals)):
        for name, t in (tensors or {}).items():
            out[f"{prefix}/{name}"] = t.detach().to("cpu").contiguous()
    if result.scales is not None:
        out["scales"] = result.scales.detach().to("cpu").contiguous()
    return out


def _unflatten(tensors: dict[str, torch.Tensor], members: tuple) -> MergeResult:
    parts: dict[str, dict] = {"unified": {}, "masks": {}, "originals": {}}
    for key, t in tensors.items():
        if key != "scales":
            prefix, name = key.split("/", 1)
            parts[prefix][name] = t
    return MergeResult(unified=parts["unified"] or None, masks=parts["masks"] or None,
                       scales=tensors.get("scales"), members=members, originals=parts["originals"] or None)


class GroupResultCache:
    """`load(key) -> MergeResult | None` and `store(key, result)` over a folder of safetensors files."""

    def __init__(self, folder: Optional[Path] = None):
        self.folder = Path(folder) if folder is not None else cache_root() / "groups"
        self.loads = self.stores = 0

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.safetensors"

    def load(self, key: str) -> Optional[MergeResult]:
        entry = read_tensor_entry(self.path(key), key)
        if entry is None:
            return None
        tensors, meta = entry
        try:
            if meta.get("format") != _FORMAT:
                return None
            members = tuple(json.loads(meta["members"]))
        except (ValueError, KeyError, TypeError):
            return None
        self.loads += 1
        return _unflatten(tensors, members)

    def store(self, key: str, result: MergeResult) -> None:
        meta = {"format": _FORMAT, "members": json.dumps(list(result.members))}
        write_tensor_entry(self.path(key), key, _flatten(result), meta)
        self.stores += 1

"""Finding the visual encoder inside a checkpoint's keys: bare, `visual.`, `model.visual.`, ...

Why: the same ViT weights arrive as the tower's own state dict (`conv1.weight`), as a whole CLIP
(`visual.conv1.weight` + the text tower), or wrapped once more by a training script
(`model.visual.conv1.weight`, `module.model.visual.`). The prefix is detected from the expected
keys of the architecture (every one must be found, with its shape), reported, and stripped; the
remaining tensors under the CLIP prefix are the text tower when the file is a whole CLIP.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from flexmerge_core.errors import ZooError

VISUAL_PREFIXES = ("", "visual.", "model.visual.", "module.visual.", "module.model.visual.",
                   "image_encoder.model.visual.", "model.")


@dataclass
class VisualSplit:
    prefix: str                          # the detected prefix ("" = the tower's own keys)
    visual: dict[str, torch.Tensor]      # the tower's tensors under its own names, in layout order
    clip_rest: dict[str, torch.Tensor]   # other tensors under the CLIP prefix, named as in a CLIP state dict
    ignored: int                         # tensors neither visual nor under the CLIP prefix


def _clip_prefix(prefix: str) -> str | None:
    return prefix[: -len("visual.")] if prefix.endswith("visual.") else None


def split_visual(state: dict[str, torch.Tensor], layout: dict[str, tuple], path: Path, role: str) -> VisualSplit:
    """Detect the prefix under which all of `layout`'s keys (name -> (shape, dtype)) are found."""
    def found(prefix: str) -> int:
        return sum(prefix + name in state for name in layout)

    best = max(VISUAL_PREFIXES, key=found)
    if found(best) < len(layout):
        missing = next(name for name in layout if best + name not in state)
        raise ZooError(f"{path}: {role} is not this visual encoder: under the closest prefix "
                       f"'{best}' it lacks '{best + missing}' ({len(layout) - found(best)} of {len(layout)} "
                       f"tensors missing; tried prefixes {', '.join(repr(p) for p in VISUAL_PREFIXES)})")
    for name, (shape, _dtype) in layout.items():
        if tuple(state[best + name].shape) != tuple(shape):
            raise ZooError(f"{path}: tensor '{best + name}' of {role} has shape {list(state[best + name].shape)}, "
                           f"the architecture expects {list(shape)}")
    visual = {name: state[best + name] for name in layout}
    taken = {best + name for name in layout}
    clip = _clip_prefix(best)
    rest = {k[len(clip):]: v for k, v in state.items()
            if clip is not None and k not in taken and k.startswith(clip)}
    return VisualSplit(prefix=best, visual=visual, clip_rest=rest, ignored=len(state) - len(taken) - len(rest))

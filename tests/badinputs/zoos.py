"""Tiny valid zoos and the ways the corpus breaks them (all written into temp folders, no blobs in git).

Why one template: writing a zoo costs a model construction and a validation pass, so the corpus
writes one small but complete zoo (3 tasks, heads, held-out data) per session and each case breaks
a fresh copy of it.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from flexmerge_core.zoo import write_zoo

TINY_VIT = {"image_size": 8, "patch_size": 4, "width": 8, "layers": 1, "heads": 2, "mlp_ratio": 2,
            "output_dim": 4}
TASKS = ("alpha", "beta", "gamma")
CLASSES = ("c0", "c1", "c2")
HELDOUT = 6


def _pretrained_state(seed: int) -> dict[str, torch.Tensor]:
    from open_clip.transformer import VisionTransformer

    torch.manual_seed(seed)
    return {k: v.detach().clone() for k, v in VisionTransformer(**TINY_VIT).state_dict().items()}


def write_template(folder: Path, seed: int = 0, zero_task_vectors: bool = False) -> Path:
    """A valid zoo of 3 tasks with heads and held-out data; task vectors are small random offsets
    (or exactly zero: every fine-tuned checkpoint equal to the pretrained one)."""
    pretrained = _pretrained_state(seed)
    g = torch.Generator().manual_seed(seed + 1)
    tasks = []
    for t, name in enumerate(TASKS):
        scale = 0.0 if zero_task_vectors else 0.05
        state = {k: v + scale * torch.randn(v.shape, generator=g) for k, v in pretrained.items()}
        head = {"weight": torch.randn(len(CLASSES), TINY_VIT["output_dim"], generator=g),
                "bias": torch.zeros(len(CLASSES))}
        data = (torch.randn(HELDOUT, 3, TINY_VIT["image_size"], TINY_VIT["image_size"], generator=g),
                torch.arange(HELDOUT) % len(CLASSES))
        tasks.append({"name": name, "state_dict": state, "head": head, "data": data, "classes": list(CLASSES),
                      "finetuned_accuracy": 0.9})
    return write_zoo(folder, {"kind": "open_clip_vit", "config": TINY_VIT}, pretrained, tasks)


def copy_zoo(template: Path, dest: Path) -> Path:
    shutil.copytree(template, dest)
    return dest


def edit_manifest(root: Path, edit: Callable[[dict], None]) -> None:
    path = root / "zoo.json"
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def edit_task(root: Path, index: int, **changes) -> None:
    edit_manifest(root, lambda doc: doc["tasks"][index].update(changes))


def rewrite_tensors(path: Path, edit: Callable[[dict], None]) -> None:
    """Load a safetensors file, let `edit` change the dict in place, write it back."""
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path))


def task_file(root: Path, task: str) -> Path:
    return root / "tasks" / f"{task}.safetensors"


def data_file(root: Path, task: str) -> Path:
    return root / "data" / f"{task}.safetensors"


def head_file(root: Path, task: str) -> Path:
    return root / "heads" / f"{task}.safetensors"


class _CodeInPickle:
    """Unpickling this would run `open(marker, 'w')`: proof that foreign code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def write_code_pickle(path: Path, marker: Path) -> None:
    """A torch checkpoint whose pickle calls a function when loaded unsafely."""
    torch.save({"proj": _CodeInPickle(marker)}, path)

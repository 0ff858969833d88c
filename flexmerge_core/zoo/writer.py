"""Writing a zoo folder (`zoo.json` + safetensors files) in one atomic step.

Why: the demo builder, importers and tests all produce zoos; one writer keeps the layout in one
place, and building under a temporary name then renaming means a killed process never leaves a
half-written zoo that looks valid. The result is opened (validated) before it is renamed into place.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from flexmerge_core.cache import atomic_directory
from flexmerge_core.errors import ZooError
from flexmerge_core.zoo.manifest import FORMAT, MANIFEST_NAME, check_task_name

_TASK_KEYS = {"name", "state_dict", "kind", "head", "data", "classes", "finetuned_accuracy"}


def _save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(path))


def _data_tensors(data) -> dict[str, torch.Tensor]:
    """(images, labels) of an image classification task as float32/int64; a dict is any kind's file as is."""
    if isinstance(data, dict):
        return data
    images, labels = data
    return {"images": images.to(torch.float32), "labels": labels.to(torch.int64)}


def _task_entry(folder: Path, task: dict) -> dict:
    unknown = sorted(set(task) - _TASK_KEYS)
    if unknown or "name" not in task or "state_dict" not in task:
        raise ZooError(f"write_zoo: a task needs 'name' and 'state_dict' (optional: kind, head, data, classes, "
                       f"finetuned_accuracy); got keys {', '.join(sorted(task))}")
    name = check_task_name(task["name"])
    entry = {"name": name, "checkpoint": f"tasks/{name}.safetensors"}
    if task.get("kind") is not None:
        entry["kind"] = task["kind"]
    _save(task["state_dict"], folder / entry["checkpoint"])
    if task.get("head") is not None:
        entry["head"] = f"heads/{name}.safetensors"
        _save(dict(task["head"]), folder / entry["head"])
    if task.get("data") is not None:
        entry["data"] = f"data/{name}.safetensors"
        _save(_data_tensors(task["data"]), folder / entry["data"])
    if task.get("classes") is not None:
        entry["classes"] = [str(c) for c in task["classes"]]
    if task.get("finetuned_accuracy") is not None:
        entry["finetuned_accuracy"] = float(task["finetuned_accuracy"])
    return entry


def write_zoo(folder, architecture: dict, pretrained_state: dict[str, torch.Tensor], tasks: list[dict],
              recipe: dict | None = None, head_input: str = "raw", name: str | None = None,
              unmerged: list[str] | None = None) -> Path:
    """Write a zoo to `folder` (replacing it atomically) and return its path.

    tasks: [{name, state_dict, kind (a task kind's name; default image_classification), head ({name: tensor},
    e.g. {weight, bias}, or None), data ((images, labels), or {name: tensor} for other kinds, or None),
    classes (list or None), finetuned_accuracy (float or None)}].
    """
    folder = Path(folder)

    def build(tmp: Path) -> None:
        manifest = {"format": FORMAT, "name": name or folder.name, "architecture": architecture,
                    "pretrained": "pretrained.safetensors", "head_input": head_input,
                    "tasks": [_task_entry(tmp, task) for task in tasks], "recipe": recipe or {}}
        if unmerged:
            manifest["unmerged"] = list(unmerged)
        _save(pretrained_state, tmp / manifest["pretrained"])
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        from flexmerge_core.zoo.loader import open_zoo

        open_zoo(tmp)  # refuse to publish a zoo that would not open

    return atomic_directory(folder, build)

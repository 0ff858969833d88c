"""Writing a zoo folder (`zoo.json` + safetensors files) in one atomic step.

Why: the demo builder, importers and tests all produce zoos; one writer keeps the layout in one
place, and building under a temporary name then renaming means a killed process never leaves a
half-written zoo that looks valid. The result is opened (validated) before it is renamed into place.
Renaming replaces what was there, so an existing folder is only replaced when it is empty or a zoo
(`--force` for anything else), and never when it is, holds or lies inside an input of the zoo.
A model or data file may also come as a `FileSource`, which puts its own files into the folder being
built: importers link checkpoints that are already safetensors instead of rewriting gigabytes, and
stream held-out images batch by batch.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import torch
from safetensors.torch import save_file

from flexmerge_core.cache import atomic_directory
from flexmerge_core.errors import ZooError
from flexmerge_core.outputs import check_apart, check_replaceable
from flexmerge_core.zoo.manifest import FORMAT, MANIFEST_NAME, check_name, check_task_name

_TASK_KEYS = {"name", "state_dict", "kind", "head", "data", "classes", "finetuned_accuracy"}


class FileSource:
    """Content that writes its own file(s) into a zoo being built (instead of a dict of tensors)."""

    def write(self, folder: Path, stem: str) -> str:
        """Write under `folder` and return the path, relative to it, that the manifest names.

        `stem` is where write_zoo would have put the file ("tasks/<name>", without suffix)."""
        raise NotImplementedError


def _save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(path))


def _put(content, folder: Path, stem: str) -> str:
    """A FileSource writes itself; tensors become `<stem>.safetensors`."""
    if isinstance(content, FileSource):
        return content.write(folder, stem)
    _save(content, folder / f"{stem}.safetensors")
    return f"{stem}.safetensors"


def _data_tensors(data) -> dict[str, torch.Tensor]:
    """(images, labels) of an image classification task as float32/int64; a dict is any kind's file as is."""
    if isinstance(data, dict):
        return data
    images, labels = data
    return {"images": images.to(torch.float32), "labels": labels.to(torch.int64)}


def is_zoo_folder(folder: Path) -> bool:
    """Whether `folder` holds a zoo this tool wrote (its manifest names our format)."""
    try:
        return json.loads((Path(folder) / MANIFEST_NAME).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError, RecursionError):
        return False


def check_zoo_output(folder, inputs: Iterable = (), force: bool = False) -> None:
    """Refuse a zoo output folder that overlaps an input or would replace a folder of other files."""
    check_apart([folder], inputs)
    check_replaceable(folder, is_zoo_folder, force)


def _task_entry(folder: Path, task: dict) -> dict:
    unknown = sorted(set(task) - _TASK_KEYS)
    if unknown or "name" not in task or "state_dict" not in task:
        raise ZooError(f"write_zoo: a task needs 'name' and 'state_dict' (optional: kind, head, data, classes, "
                       f"finetuned_accuracy); got keys {', '.join(sorted(task))}")
    name = check_task_name(task["name"])
    entry = {"name": name, "checkpoint": _put(task["state_dict"], folder, f"tasks/{name}")}
    if task.get("kind") is not None:
        entry["kind"] = task["kind"]
    if task.get("head") is not None:
        entry["head"] = f"heads/{name}.safetensors"
        _save(dict(task["head"]), folder / entry["head"])
    if isinstance(task.get("data"), FileSource):
        entry["data"] = task["data"].write(folder, f"data/{name}")
    elif task.get("data") is not None:
        entry["data"] = f"data/{name}.safetensors"
        _save(_data_tensors(task["data"]), folder / entry["data"])
    if task.get("classes") is not None:
        entry["classes"] = [str(c) for c in task["classes"]]
    if task.get("finetuned_accuracy") is not None:
        entry["finetuned_accuracy"] = float(task["finetuned_accuracy"])
    return entry


def write_zoo(folder, architecture: dict, pretrained_state: dict[str, torch.Tensor], tasks: list[dict],
              recipe=None, head_input: str = "raw", name: str | None = None,
              unmerged: list[str] | None = None, force: bool = False) -> Path:
    """Write a zoo to `folder` (replacing it atomically) and return its path.

    An existing non-empty `folder` that is not a zoo is refused unless `force` (check_zoo_output).

    tasks: [{name, state_dict, kind (a task kind's name; default image_classification), head ({name: tensor},
    e.g. {weight, bias}, or None), data ((images, labels), or {name: tensor} for other kinds, or None),
    classes (list or None), finetuned_accuracy (float or None)}]. `pretrained_state`, a task's
    `state_dict` and `data` may instead be FileSources. `recipe` may be a function, called once every
    file is written (importers that read sources while writing record what they found).
    """
    folder = Path(folder)
    name = check_name(name or folder.name, "zoo name")
    check_zoo_output(folder, force=force)

    def build(tmp: Path) -> None:
        pretrained = _put(pretrained_state, tmp, "pretrained")
        manifest = {"format": FORMAT, "name": name or folder.name, "architecture": architecture,
                    "pretrained": pretrained, "head_input": head_input,
                    "tasks": [_task_entry(tmp, task) for task in tasks],
                    "recipe": (recipe() if callable(recipe) else recipe) or {}}
        if unmerged:
            manifest["unmerged"] = list(unmerged)
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        from flexmerge_core.zoo.loader import open_zoo

        open_zoo(tmp)  # refuse to publish a zoo that would not open

    return atomic_directory(folder, build)

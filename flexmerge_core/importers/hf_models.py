"""HuggingFace `save_pretrained` folders as zoo checkpoints: read headers, then link or rewrite the tensors.

Why link: hub checkpoints are already safetensors, the format a zoo holds. When a folder's tensor
names are the zoo's names (a CLIPModel, a transformers-4 CLIPVisionModel, any *WithProjection model)
its files are hard-linked into the zoo's `models/` folder (copied across filesystems) and a small
`<model>.safetensors.index.json` selects the tensors the zoo uses (a CLIPModel's text tower stays in
the linked file, unread); the zoo reader opens such an index lazily, like HF's own sharded index.
Tensors a folder lacks (a fine-tuned CLIPVisionModel has no projection) are mapped to another model's
linked file, e.g. the pretrained one. Only when the names differ (transformers 5 saves a
CLIPVisionModel without the `vision_model.` prefix) are the tensors rewritten, one at a time, under
the zoo's names. Every index and shard sits in `models/`, since an index names shards beside it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from safetensors import safe_open

from flexmerge_core.errors import ZooError
from flexmerge_core.importers.file_links import link_or_copy
from flexmerge_core.zoo.checkpoint import INDEX_SUFFIX, SAFETENSORS_DTYPES
from flexmerge_core.zoo.safetensors_stream import StreamedSafetensors
from flexmerge_core.zoo.writer import FileSource

MODELS = "models"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"


def read_json(folder: Path, name: str, role: str) -> dict:
    """A JSON file of a model folder; a missing or broken one is a ZooError naming it."""
    path = folder / name
    if not path.is_file():
        raise ZooError(f"{path}: missing ({role} needs it)")
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ZooError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise ZooError(f"{path}: expected a JSON object")
    return doc


@dataclass
class TensorInfo:
    shape: tuple[int, ...]
    dtype: torch.dtype
    file: Path


class ModelFolder:
    """A `save_pretrained` folder: its config.json and the headers of its safetensors (one file or shards)."""

    def __init__(self, folder: Path, role: str, label: str):
        self.folder, self.role, self.label = Path(folder), role, label   # label: prefix of its linked files
        self.config = read_json(self.folder, "config.json", role)
        self.tensors: dict[str, TensorInfo] = {}
        index, single = self.folder / WEIGHTS_INDEX, self.folder / WEIGHTS
        if index.is_file():
            self._read_index(index)
        elif single.is_file():
            self._read_header(single, None)
        else:
            other = sorted(p.name for p in self.folder.glob("*.bin"))
            hint = f" (found {', '.join(other)}: load and re-save it with safetensors)" if other else ""
            raise ZooError(f"{self.folder / WEIGHTS}: missing ({role} needs {WEIGHTS} or {WEIGHTS_INDEX}){hint}")

    def _read_header(self, path: Path, wanted: Optional[set]) -> None:
        try:
            with safe_open(str(path), framework="pt") as handle:
                for name in handle.keys():
                    if wanted is None or name in wanted:
                        view = handle.get_slice(name)
                        self.tensors[name] = TensorInfo(tuple(view.get_shape()),
                                                        SAFETENSORS_DTYPES[view.get_dtype()], path)
        except Exception as exc:   # SafetensorError, OSError, an unknown dtype
            raise ZooError(f"{path}: cannot read safetensors file of {self.role}: {exc}") from exc

    def _read_index(self, index: Path) -> None:
        weight_map = read_json(index.parent, index.name, self.role).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ZooError(f"{index}: no 'weight_map' of tensor names to shard files")
        by_shard: dict[str, set] = {}
        for name, shard in weight_map.items():
            by_shard.setdefault(str(shard), set()).add(name)
        for shard, names in sorted(by_shard.items()):
            path = index.parent / shard
            if "/" in shard or not path.is_file():
                raise ZooError(f"{path}: shard of {self.role} named by {index.name} is missing")
            self._read_header(path, names)
            missing = sorted(names - set(self.tensors))
            if missing:
                raise ZooError(f"{path}: tensor '{missing[0]}' named by {index.name} is missing from the shard")


@dataclass
class ModelSource(FileSource):
    """One zoo checkpoint: {zoo name: (folder, its name for the tensor)}, written as a link+index or rewritten.

    `label` names its index (or rewritten file) in `models/`; `report` records "link", "copy" or
    "rewrite" once written.
    """

    label: str
    tensors: dict[str, tuple[ModelFolder, str]]
    layout: dict[str, tuple[tuple[int, ...], torch.dtype]]
    report: dict = field(default_factory=dict)

    def write(self, folder: Path, stem: str) -> str:
        renamed = any(zoo_name != source_name for zoo_name, (_, source_name) in self.tensors.items())
        return self._rewrite(folder) if renamed else self._link(folder)

    def _link(self, folder: Path) -> str:
        weight_map, modes = {}, set()
        for zoo_name, (model, source_name) in self.tensors.items():
            source = model.tensors[source_name].file
            linked = f"{model.label}--{source.name}"
            target = folder / MODELS / linked
            if not target.exists():
                modes.add(link_or_copy(source, target))
            weight_map[zoo_name] = linked
        index = f"{MODELS}/{self.label}{INDEX_SUFFIX}"
        (folder / index).write_text(json.dumps({"metadata": {"source": str(_origin(self))},
                                                "weight_map": weight_map}, indent=1) + "\n")
        self.report.update(mode="copy" if "copy" in modes else "link")
        return index

    def _rewrite(self, folder: Path) -> str:
        path = f"{MODELS}/{self.label}.safetensors"
        handles: dict[Path, object] = {}
        try:
            with StreamedSafetensors(folder / path, {n: self.layout[n] for n in self.tensors}) as out:
                for zoo_name, (model, source_name) in self.tensors.items():
                    file = model.tensors[source_name].file
                    if file not in handles:
                        handles[file] = safe_open(str(file), framework="pt")
                    out.write(zoo_name, handles[file].get_tensor(source_name))
        finally:
            handles.clear()
        self.report.update(mode="rewrite")
        return path


def _origin(source: ModelSource) -> Path:
    return next(iter(source.tensors.values()))[0].folder


def select_tensors(model: ModelFolder, layout: dict, prefixes: tuple[str, ...], fallback: Optional[ModelFolder],
                   fallback_names: tuple[str, ...]) -> tuple[dict[str, tuple[ModelFolder, str]], str, int]:
    """Map every layout name to a tensor of `model` (names tried with each of `prefixes` stripped then
    re-added), `fallback_names` missing from it to `fallback`'s same-named tensor.

    Returns (mapping, the prefix the folder's names carry, count of the model's tensors not used); ZooError naming the
    first missing tensor or the first shape/dtype mismatch."""
    def candidates(name: str) -> list[str]:
        out = [name]
        for prefix in prefixes:
            if name.startswith(prefix):
                out.append(name[len(prefix):])
        return out

    found: dict[str, tuple[ModelFolder, str]] = {}
    chosen = None
    for name, (shape, _dtype) in layout.items():
        hit = next((c for c in candidates(name) if c in model.tensors), None)
        if hit is None and fallback is not None and name in fallback_names and name in fallback.tensors:
            found[name] = (fallback, name)
            continue
        if hit is None:
            raise ZooError(f"{model.folder}: {model.role} lacks tensor '{name}' "
                           f"(or '{candidates(name)[-1]}'); is it a model of the same architecture?")
        if tuple(model.tensors[hit].shape) != tuple(shape):
            raise ZooError(f"{model.tensors[hit].file}: tensor '{hit}' of {model.role} has shape "
                           f"{list(model.tensors[hit].shape)}, the pretrained config expects {list(shape)}")
        if chosen is None and len(candidates(name)) > 1:   # the first prefixable name tells the folder's naming
            chosen = next(p for p in prefixes if name.startswith(p)) if hit == name else ""
        found[name] = (model, hit)
    used = {hit for m, hit in found.values() if m is model}
    return found, chosen or "", len(model.tensors) - len(used)

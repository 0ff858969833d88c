"""Zoo specs: a YAML file naming a pretrained model, fine-tuned models and their held-out data.

Why a spec: real zoos are hub models (FusionBench's pools name `tanganke/clip-vit-base-patch32_sun397`)
and hub datasets the user already has on disk; a spec names them once, like FusionBench's model pool
configs, and `zoo import SPEC.yaml --out DIR` turns them into a zoo. Schema (unknown keys are errors):

    name: clip-vit-b32-tta              # optional; default the --out folder's name
    models:                             # required: `_pretrained_` + at least 2 tasks
      _pretrained_: openai/clip-vit-base-patch32
      sun397: tanganke/clip-vit-base-patch32_sun397
      cars: ./models/cars               # a folder path (relative to the spec) or a hub id (`owner/name[@rev]`)
    datasets:                           # optional; per task
      sun397: {path: tanganke/sun397, split: test}
      cars:
        path: ./data/cars.parquet       # parquet file/folder, save_to_disk folder, image folder, tensor file,
        split: test                     #   or a dataset id in the hub cache; split default "test"
        image_column: image             # default: the Image feature (label_column: the ClassLabel one)
        classes: [audi, bmw]            # default: the ClassLabel names
    templates: simple                   # zero-shot prompts: simple | openai | a list | a file
    max_examples: 500                   # optional seeded subset per task (the --max-examples option wins)
    seed: 0

Ids resolve against the local HuggingFace cache only (hf_cache.py): an id not on disk is an error,
never a download. The family is read from the pretrained folder's config.json.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from flexmerge_core.errors import ZooError
from flexmerge_core.importers.hf_cache import resolve_local
from flexmerge_core.importers.hf_clip import PRETRAINED, TaskData, import_hf_clip, is_hf_clip
from flexmerge_core.importers.hf_models import read_json

SPEC_SUFFIXES = (".yaml", ".yml")
_TOP = {"name", "models", "datasets", "templates", "max_examples", "seed"}
_DATASET = {"path", "split", "image_column", "label_column", "classes"}


def _load(path: Path) -> dict:
    import yaml

    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ZooError(f"{path}: not a readable YAML zoo spec: {' '.join(str(exc).split())}") from exc
    if not isinstance(doc, dict):
        raise ZooError(f"{path}: a zoo spec is a mapping with 'models' (and optional 'datasets')")
    unknown = sorted(set(doc) - _TOP)
    if unknown:
        raise ZooError(f"{path}: unknown key '{unknown[0]}' (allowed: {', '.join(sorted(_TOP))})")
    if not isinstance(doc.get("models"), dict) or PRETRAINED not in doc["models"]:
        raise ZooError(f"{path}: 'models' must map '{PRETRAINED}' and each task name to a folder or hub id")
    return doc


def _optional_int(path: Path, doc: dict, key: str, minimum: int) -> Optional[int]:
    value = doc.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
        raise ZooError(f"{path}: '{key}' must be an integer >= {minimum}, got {value!r}")
    return value


def _dataset(path: Path, task: str, raw) -> TaskData:
    where = f"{path}: dataset of '{task}'"
    raw = {"path": raw} if isinstance(raw, str) else raw
    if not isinstance(raw, dict) or "path" not in raw:
        raise ZooError(f"{where}: expected a path/id or a mapping with 'path' (and split, image_column, ...)")
    unknown = sorted(set(raw) - _DATASET)
    if unknown:
        raise ZooError(f"{where}: unknown key '{unknown[0]}' (allowed: {', '.join(sorted(_DATASET))})")
    classes = raw.get("classes")
    if classes is not None and (not isinstance(classes, list) or not all(isinstance(c, str) for c in classes)):
        raise ZooError(f"{where}: 'classes' must be a list of names")
    return TaskData(resolve_local(where, raw["path"], path.parent, kind="dataset"), str(raw.get("split", "test")),
                    raw.get("image_column"), raw.get("label_column"), classes)


def import_spec(spec, out, max_examples: Optional[int] = None, templates=None, name: Optional[str] = None,
                progress=None, force: bool = False):
    """Resolve every model and dataset of the spec on disk, then import (see the module docstring)."""
    path = Path(spec).resolve()
    doc = _load(path)
    models = {task: resolve_local(f"{path}: model '{task}'", str(value), path.parent)
              for task, value in doc["models"].items()}
    datasets = doc.get("datasets") or {}
    if not isinstance(datasets, dict):
        raise ZooError(f"{path}: 'datasets' must map task names to datasets")
    missing = sorted(set(datasets) - set(models))
    if missing:
        raise ZooError(f"{path}: dataset '{missing[0]}' names no model under 'models'")
    config = read_json(models[PRETRAINED], "config.json", f"{path}: model '{PRETRAINED}'")
    if not is_hf_clip(config):
        raise ZooError(f"{models[PRETRAINED] / 'config.json'}: model type {config.get('model_type')!r} has no "
                       f"importer (supported: HuggingFace CLIP)")
    limit = max_examples if max_examples is not None else _optional_int(path, doc, "max_examples", 1)
    return import_hf_clip(models, out, {t: _dataset(path, t, d) for t, d in datasets.items()},
                          templates=templates if templates is not None else doc.get("templates"),
                          max_examples=limit, seed=_optional_int(path, doc, "seed", 0) or 0,
                          name=name or doc.get("name"),
                          source={"spec": str(path), "ids": {t: str(v) for t, v in doc["models"].items()}},
                          progress=progress, force=force, inputs=(path,))

"""`zoo import` of HuggingFace CLIP folders: a pretrained `CLIPModel` + fine-tuned vision models -> a zoo.

What is read (all offline; a missing file is a ZooError naming it):
  - pretrained: a `CLIPModel` folder (config.json, model.safetensors or its index, preprocessor_config.json,
    tokenizer files) or a `CLIPVisionModelWithProjection` folder (then no zero-shot heads);
  - per task: a `CLIPVisionModel` / `CLIPVisionModelWithProjection` / `CLIPModel` folder fine-tuned from it;
  - per task, optionally, held-out data (hf_datasets.py formats, an image folder or a tensor file).
The zoo's architecture is `hf_clip_vision` (vision tower + visual projection). Decision on the projection:
FusionBench fine-tunes only the vision tower and evaluates through the pretrained projection, so a task
folder without one gets the pretrained CLIP's (mapped to its linked file, no copy); when no task has its
own, the projection is declared unmerged (`zoo.json` "unmerged"): identical for every task, it has no
task vector and does not count in the merged size. When some task brings its own, it is merged like any
other weight (the others' task vector there is zero). Heads are CLIP zero-shot heads from the pretrained
text tower and tokenizer (`head_input = "normalized"`), with the usual prompt templates (zeroshot.py).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from flexmerge_core.architectures.hf_clip_vision import KIND, PROJECTION, clean_vision_config
from flexmerge_core.architectures.hf_image_preprocess import preprocess_subset
from flexmerge_core.architectures.registry import get_architecture, state_layout
from flexmerge_core.cache import content_hash, tensors_digest
from flexmerge_core.errors import ZooError
from flexmerge_core.importers.hf_datasets import dataset_source, is_hf_dataset
from flexmerge_core.importers.hf_models import ModelFolder, ModelSource, read_json, select_tensors
from flexmerge_core.importers.imagefolder import load_task_data
from flexmerge_core.importers.zeroshot import PromptEncoder, load_templates, zeroshot_head
from flexmerge_core.zoo.writer import check_zoo_output, write_zoo

PRETRAINED = "_pretrained_"
FAMILY_TYPES = {"clip", "clip_vision_model"}
_VISION_PREFIX = "vision_model."
_TOKENIZER_FILES = (("vocab.json", "merges.txt"), ("tokenizer.json",))


def is_hf_clip(config: dict) -> bool:
    """A config.json of this family (by model_type, else by the architectures it names)."""
    if config.get("model_type") in FAMILY_TYPES:
        return True
    return any(str(a).startswith("CLIP") for a in config.get("architectures") or [])


def _vision_config(model: ModelFolder) -> dict:
    """The vision config of a CLIPModel (its `vision_config`) or of a vision model (the config itself)."""
    config = model.config
    if not is_hf_clip(config):
        raise ZooError(f"{model.folder / 'config.json'}: {model.role} is not a CLIP model "
                       f"(model_type {config.get('model_type')!r}, architectures {config.get('architectures')})")
    if isinstance(config.get("vision_config"), dict):
        vision = dict(config["vision_config"])
        if "projection_dim" in config:
            vision["projection_dim"] = config["projection_dim"]
        return clean_vision_config(vision)
    return clean_vision_config(config)


@dataclass
class TaskData:
    """Where a task's held-out data is and how to read it (hf_datasets.py formats, image folder, tensor file)."""
    path: Path
    split: str = "test"
    image_column: Optional[str] = None
    label_column: Optional[str] = None
    classes: Optional[list[str]] = None


@dataclass
class HFImportReport:
    out: Path
    architecture: dict
    tasks: list[str]
    models: dict[str, dict] = field(default_factory=dict)   # label -> {path, prefix, unused_tensors, mode}
    heads: dict[str, str] = field(default_factory=dict)     # task -> "zero-shot" | "none"
    data: dict[str, int] = field(default_factory=dict)      # task -> held-out examples
    projection: str = ""

    def to_json(self) -> dict:
        return {"out": str(self.out), "architecture": self.architecture, "tasks": self.tasks, "models": self.models,
                "heads": self.heads, "data": self.data, "projection": self.projection}

    def lines(self) -> list[str]:
        out = [f"imported {len(self.tasks)} tasks of {KIND} into {self.out}"]
        for label, info in self.models.items():
            unused = f", {info['unused_tensors']} tensors not used" if info["unused_tensors"] else ""
            out.append(f"  {label}: {info['mode']} of {info['path']} (prefix '{info['prefix']}'{unused})")
        out.append(f"  {PROJECTION}: {self.projection}")
        for task in self.tasks:
            out.append(f"  {task}: head {self.heads[task]}, {self.data.get(task, 0)} held-out examples")
        return out


class HFTextTower(PromptEncoder):
    """The pretrained CLIPModel's text tower and tokenizer (read from its folder, never downloaded)."""

    def __init__(self, folder: Path):
        from transformers import CLIPModel, CLIPTokenizer

        if not any(all((folder / f).is_file() for f in files) for files in _TOKENIZER_FILES):
            raise ZooError(f"{folder / 'vocab.json'}: missing (zero-shot heads need the pretrained CLIP's tokenizer: "
                           f"vocab.json + merges.txt, or tokenizer.json)")
        try:
            self.tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
            self.model = CLIPModel.from_pretrained(str(folder), local_files_only=True).eval()
        except (OSError, ValueError) as exc:
            raise ZooError(f"{folder}: cannot load the pretrained CLIPModel's text tower: {exc}") from exc
        text = {n: t for n, t in self.model.state_dict().items() if not n.startswith(("vision_model.", "visual_"))}
        files = sorted(p for files in _TOKENIZER_FILES for p in (folder / f for f in files) if p.is_file())
        self._identity = [KIND, tensors_digest(text), content_hash([p.read_text() for p in files])]

    def identity(self) -> list:
        return self._identity

    def encode(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts, padding=True, return_tensors="pt")
        return self.model.get_text_features(input_ids=tokens["input_ids"],
                                            attention_mask=tokens["attention_mask"]).pooler_output

    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.exp()


def _check_same_config(pretrained: dict, task: ModelFolder, config: dict) -> None:
    for key in sorted(set(pretrained) | set(config)):
        if key != "projection_dim" and pretrained.get(key) != config.get(key):
            raise ZooError(f"{task.folder / 'config.json'}: {task.role} has {key}={config.get(key)!r}, the "
                           f"pretrained model {pretrained.get(key)!r}: not fine-tuned from it")


def _architecture(pretrained: ModelFolder, vision: dict, with_data: bool) -> dict:
    config = {"vision_config": vision}
    path = pretrained.folder / "preprocessor_config.json"
    if path.is_file() or with_data:
        config["preprocess"] = preprocess_subset(read_json(pretrained.folder, path.name,
                                                           "preprocessing the held-out images"))
    return {"kind": KIND, "config": config}


def _task_data(task: str, spec: TaskData, architecture: dict, max_examples: Optional[int], seed: int):
    """(data for write_zoo, class names, examples) of one task."""
    adapter = get_architecture(KIND)
    transform = adapter.input_transform(architecture["config"])
    size = adapter.expected_input(architecture["config"])["image_size"]
    where = f"data of task '{task}' ({spec.path})"
    if is_hf_dataset(spec.path):
        source, classes = dataset_source(spec.path, spec.split, where, transform, size, max_examples, seed,
                                         spec.image_column, spec.label_column, spec.classes)
        return source, classes, len(source.rows)
    data = load_task_data(spec.path, transform, size)
    return (data.images, data.labels), spec.classes or data.classes, len(data.labels)


def import_hf_clip(models: dict[str, Path], out, datasets: Optional[dict[str, TaskData]] = None,
                   templates=None, max_examples: Optional[int] = None, seed: int = 0, name: Optional[str] = None,
                   source: Optional[dict] = None,
                   progress: Optional[Callable[[int, int, str], None]] = None, force: bool = False,
                   inputs: tuple = ()) -> HFImportReport:
    """`models` = {"_pretrained_": folder, task: folder, ...} (local folders) -> a zoo at `out`.

    datasets: {task: TaskData}; max_examples: a seeded subset per task; source: extra facts for the
    recipe's "source" (e.g. the spec file and the ids it named). `out` may not overlap any model, dataset
    or other `inputs` (e.g. the spec), nor replace a non-empty folder that is not a zoo unless `force`."""
    check_zoo_output(out, [*models.values(), *(d.path for d in (datasets or {}).values()), *inputs], force)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")   # transformers must never reach for the network
    if PRETRAINED not in models:
        raise ZooError(f"no '{PRETRAINED}' model: the pretrained CLIP is needed to form task vectors")
    tasks = [t for t in models if t != PRETRAINED]
    if len(tasks) < 2:
        raise ZooError(f"a zoo needs at least 2 fine-tuned models, found {len(tasks)}")
    datasets = datasets or {}
    unknown = sorted(set(datasets) - set(tasks))
    if unknown:
        raise ZooError(f"dataset for '{unknown[0]}', which names no fine-tuned model")
    prompts = load_templates(templates) if datasets else None   # the named sets import open_clip (seconds)
    steps = len(tasks) + 2
    pretrained = ModelFolder(models[PRETRAINED], "the pretrained model", PRETRAINED)
    vision = _vision_config(pretrained)
    architecture = _architecture(pretrained, vision, bool(datasets))
    layout = state_layout(KIND, architecture["config"])
    report = HFImportReport(out=Path(out), architecture=architecture, tasks=tasks)

    def source_of(label: str, model: ModelFolder, fallback: Optional[ModelFolder]) -> ModelSource:
        tensors, prefix, unused = select_tensors(model, layout, (_VISION_PREFIX,), fallback, (PROJECTION,))
        report.models[label] = {"path": str(model.folder), "prefix": prefix, "unused_tensors": unused,
                                "mode": "pending"}
        return ModelSource(label, tensors, layout, report.models[label])

    base = source_of(PRETRAINED, pretrained, None)
    task_folders = {}
    for task in tasks:
        task_folders[task] = ModelFolder(models[task], f"task '{task}'", task)
        _check_same_config(vision, task_folders[task], _vision_config(task_folders[task]))
    sources = {t: source_of(t, f, pretrained) for t, f in task_folders.items()}
    own = [t for t, s in sources.items() if s.tensors[PROJECTION][0] is task_folders[t]]
    unmerged = None if own else [f"^{PROJECTION.replace('.', '[.]')}$"]
    report.projection = (f"own in {', '.join(own)}; merged" if own
                         else "the pretrained CLIP's, shared by every task (unmerged)")
    tower = None
    if any(t in datasets for t in tasks):
        if progress:
            progress(0, steps, "text tower")
        tower = HFTextTower(pretrained.folder)
    entries = []
    for i, task in enumerate(tasks):
        if progress:
            progress(i + 1, steps, task)
        data, classes, report.heads[task] = None, None, "none"
        if task in datasets:
            data, classes, report.data[task] = _task_data(task, datasets[task], architecture, max_examples, seed)
        head = None
        if classes is not None and tower is not None:
            head, report.heads[task] = zeroshot_head(tower, classes, prompts), "zero-shot"
        entries.append({"name": task, "state_dict": sources[task], "head": head, "data": data, "classes": classes})
    if progress:
        progress(steps - 1, steps, "writing the zoo")
    recipe = {"source": {"format": "hf_clip", **(source or {}),
                         "models": {label: info["path"] for label, info in report.models.items()}},
              "heads": report.heads, "max_examples": max_examples, "seed": seed}
    write_zoo(out, architecture, base, entries, recipe=recipe, head_input="normalized",
              name=name or Path(out).name, unmerged=unmerged, force=force)
    if progress:
        progress(steps, steps, "done")
    return report

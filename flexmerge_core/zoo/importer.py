"""`zoo import`: a folder in the common research layout -> a safetensors zoo of kind `open_clip_model`.

Layout read (as in the task-vectors line of work):
    SOURCE/<Task>/finetuned.pt      the fine-tuned encoder (state dict, or a pickled module with --trust-pickle)
    SOURCE/<Task>/zeroshot.pt       the pretrained encoder (the same in every task folder; or --pretrained FILE)
    SOURCE/head_<Task>.pt           optional linear head (weight [C, D], bias [C])
    DATA/<Task>/<class>/*.png       optional held-out data (or DATA/<Task>.safetensors; see imagefolder.py)
Each file's visual-tower prefix is detected and reported. A task without a head file gets a
zero-shot head when the pretrained file is a whole CLIP (it then has the text tower) and the task's
class names are known. Why convert instead of reading in place: the zoo then holds only safetensors,
so every later open is lazy (memory-mapped) and never unpickles anything.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from flexmerge_core.errors import ZooError
from flexmerge_core.zoo.architectures import state_layout
from flexmerge_core.zoo.checkpoint import SAFETENSORS_SUFFIXES, TORCH_SUFFIXES
from flexmerge_core.zoo.imagefolder import TaskData, find_task_data, load_task_data
from flexmerge_core.zoo.openclip_arch import eval_transform, model_config
from flexmerge_core.zoo.source_files import read_state_dict
from flexmerge_core.zoo.visual_keys import VisualSplit, split_visual
from flexmerge_core.zoo.writer import write_zoo
from flexmerge_core.zoo.zeroshot import TextTower, load_templates, zeroshot_head

KIND = "open_clip_model"
CHECKPOINT_SUFFIXES = TORCH_SUFFIXES + SAFETENSORS_SUFFIXES


@dataclass
class ImportReport:
    out: Path
    architecture: dict
    tasks: list[str]
    prefixes: dict[str, str] = field(default_factory=dict)     # file -> detected visual prefix
    ignored: dict[str, int] = field(default_factory=dict)      # file -> tensors that are not the visual tower
    heads: dict[str, str] = field(default_factory=dict)        # task -> "file" | "zero-shot" | "none"
    data: dict[str, int] = field(default_factory=dict)         # task -> held-out images
    text_tower: bool = False

    def to_json(self) -> dict:
        return {"out": str(self.out), "architecture": self.architecture, "tasks": self.tasks,
                "prefixes": self.prefixes, "ignored_tensors": self.ignored, "heads": self.heads,
                "data": self.data, "text_tower": self.text_tower}

    def lines(self) -> list[str]:
        out = [f"imported {len(self.tasks)} tasks of {self.architecture['config']['name']} into {self.out}"]
        for file, prefix in self.prefixes.items():
            extra = f", {self.ignored[file]} other tensors ignored" if self.ignored.get(file) else ""
            out.append(f"  {file}: visual prefix '{prefix}'{extra}")
        out.append(f"  text tower: {'used for zero-shot heads' if self.text_tower else 'not used'}")
        for task in self.tasks:
            out.append(f"  {task}: head {self.heads[task]}, {self.data.get(task, 0)} held-out images")
        return out


def _one_file(folder: Path, stem: str) -> Optional[Path]:
    found = [folder / f"{stem}{s}" for s in CHECKPOINT_SUFFIXES if (folder / f"{stem}{s}").is_file()]
    if len(found) > 1:
        raise ZooError(f"{folder}: several '{stem}' checkpoints ({', '.join(p.name for p in found)}); keep one")
    return found[0] if found else None


def discover_tasks(source: Path) -> dict[str, Path]:
    """{task: its fine-tuned file} for every SOURCE/<Task>/ holding a finetuned checkpoint."""
    if not source.is_dir():
        raise ZooError(f"{source}: source folder not found")
    tasks = {p.name: f for p in sorted(source.iterdir()) if p.is_dir() and (f := _one_file(p, "finetuned"))}
    if len(tasks) < 2:
        raise ZooError(f"{source}: expected at least 2 task folders with a finetuned.pt "
                       f"(<Task>/finetuned.pt), found {len(tasks)}")
    return tasks


class _Reader:
    """Reads and splits source files, recording what it detected for the report."""

    def __init__(self, source: Path, layout: dict, trust_pickle: bool, report: ImportReport):
        self.source, self.layout, self.trust_pickle, self.report = source, layout, trust_pickle, report

    def _label(self, path: Path) -> str:
        return str(path.relative_to(self.source)) if path.is_relative_to(self.source) else str(path)

    def visual(self, path: Path, role: str) -> VisualSplit:
        state = read_state_dict(path, role, self.trust_pickle)
        split = split_visual(state, self.layout, path, role)
        self.report.prefixes[self._label(path)] = split.prefix
        self.report.ignored[self._label(path)] = split.ignored + (len(split.clip_rest) if role != "pretrained" else 0)
        return split

    def head(self, path: Path, task: str) -> dict[str, torch.Tensor]:
        state = read_state_dict(path, f"head of task '{task}'", self.trust_pickle)
        weight = state.get("weight")
        if weight is None or weight.ndim != 2:
            raise ZooError(f"{path}: head of task '{task}' needs a 2-d 'weight' [C, D], found {', '.join(sorted(state))}")
        bias = state.get("bias", torch.zeros(weight.shape[0], dtype=weight.dtype))
        return {"weight": weight.float().contiguous(), "bias": bias.float().contiguous()}


def _pretrained(reader: _Reader, tasks: dict[str, Path], pretrained: Optional[Path]) -> VisualSplit:
    """The given pretrained file, else the task folders' zeroshot files (which must all agree)."""
    if pretrained is not None:
        return reader.visual(pretrained, "pretrained")
    files = [f for f in (_one_file(p.parent, "zeroshot") for p in tasks.values()) if f is not None]
    if not files:
        raise ZooError(f"{reader.source}: no <Task>/zeroshot.pt and no --pretrained FILE: the pretrained "
                       f"encoder is needed to form task vectors")
    first = reader.visual(files[0], "pretrained")
    for other in files[1:]:
        state = reader.visual(other, "pretrained").visual
        differing = next((n for n in first.visual if not torch.equal(first.visual[n], state[n])), None)
        if differing is not None:
            raise ZooError(f"{other}: tensor '{differing}' differs from {files[0]}: the task folders' "
                           f"zeroshot checkpoints must be the same pretrained model")
    return first


def _task_data(data_root: Optional[Path], tasks: list[str], config: dict) -> dict[str, TaskData]:
    if data_root is None:
        return {}
    if not data_root.is_dir():
        raise ZooError(f"{data_root}: data folder not found")
    transform = eval_transform(config)
    size = model_config(config)["vision_cfg"].get("image_size", 224)
    found = {t: find_task_data(data_root, t) for t in tasks}
    return {t: load_task_data(p, transform, size) for t, p in found.items() if p is not None}


def import_research_folder(source, out, model: str, pretrained=None, data=None, templates=None,
                           trust_pickle: bool = False, quick_gelu: Optional[bool] = None,
                           head_input: str = "normalized", name: Optional[str] = None,
                           progress: Optional[Callable[[int, int, str], None]] = None) -> ImportReport:
    """Convert SOURCE (see the module docstring) into a validated safetensors zoo at `out`."""
    source = Path(source).resolve()
    config = {"name": model} if quick_gelu is None else {"name": model, "quick_gelu": bool(quick_gelu)}
    architecture = {"kind": KIND, "config": config}
    prompts = load_templates(templates)
    tasks = discover_tasks(source)
    report = ImportReport(out=Path(out), architecture=architecture, tasks=list(tasks))
    reader = _Reader(source, state_layout(KIND, config), trust_pickle, report)
    total = len(tasks) + 2
    if progress:
        progress(0, total, "pretrained")
    data = _task_data(None if data is None else Path(data), list(tasks), config)   # fails before GBs are read
    base = _pretrained(reader, tasks, None if pretrained is None else Path(pretrained))
    head_files = {task: _one_file(source, f"head_{task}") for task in tasks}
    wants_zeroshot = head_input == "normalized" and any(
        head_files[t] is None and t in data and data[t].classes is not None for t in tasks)
    tower = TextTower.from_clip_rest(config, base.clip_rest) if wants_zeroshot else None
    report.text_tower = tower is not None
    entries = []
    for i, (task, file) in enumerate(tasks.items()):
        if progress:
            progress(i + 1, total, task)
        task_data = data.get(task)
        classes = task_data.classes if task_data is not None else None
        head, report.heads[task] = None, "none"
        if head_files[task] is not None:
            head, report.heads[task] = reader.head(head_files[task], task), "file"
        elif tower is not None and classes is not None:
            head, report.heads[task] = zeroshot_head(tower, classes, prompts), "zero-shot"
        if task_data is not None:
            report.data[task] = len(task_data.labels)
        entries.append({"name": task, "state_dict": reader.visual(file, f"task '{task}'").visual, "head": head,
                        "data": None if task_data is None else (task_data.images, task_data.labels),
                        "classes": classes})
    if progress:
        progress(total - 1, total, "writing the zoo")
    recipe = {"imported_from": str(source), "prefixes": report.prefixes, "heads": report.heads}
    write_zoo(out, architecture, base.visual, entries, recipe=recipe, head_input=head_input,
              name=name or Path(out).name)
    if progress:
        progress(total, total, "done")
    return report

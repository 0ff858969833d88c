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

from flexmerge_core.errors import InvalidArgumentError, ZooError
from flexmerge_core.architectures.registry import get_architecture, state_layout
from flexmerge_core.machine import require_memory
from flexmerge_core.zoo.checkpoint import SAFETENSORS_SUFFIXES, TORCH_SUFFIXES
from flexmerge_core.importers.imagefolder import TaskData, find_task_data, load_task_data
from flexmerge_core.zoo.manifest import MANIFEST_NAME, read_manifest
from flexmerge_core.importers.source_files import read_checkpoint, read_head
from flexmerge_core.importers.visual_keys import VisualSplit, split_visual
from flexmerge_core.zoo.writer import check_zoo_output, write_zoo
from flexmerge_core.importers.zeroshot import TextTower, load_templates, zeroshot_head

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
    read_as: dict[str, str] = field(default_factory=dict)      # file -> safetensors | state_dict | pickle | ...

    @property
    def source_format(self) -> str:
        """`task_vectors_pickle` when any file was a pickled module (read structurally or trusted)."""
        return "task_vectors_pickle" if any("pickle" in how for how in self.read_as.values()) \
            else "open_clip_research"

    def to_json(self) -> dict:
        return {"out": str(self.out), "architecture": self.architecture, "tasks": self.tasks,
                "prefixes": self.prefixes, "ignored_tensors": self.ignored, "heads": self.heads,
                "data": self.data, "text_tower": self.text_tower, "read_as": self.read_as,
                "source_format": self.source_format}

    def lines(self) -> list[str]:
        model = self.architecture["config"].get("name", self.architecture["kind"])
        out = [f"imported {len(self.tasks)} tasks of {model} into {self.out}"]
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
        state, self.report.read_as[self._label(path)] = read_checkpoint(path, role, self.trust_pickle)
        split = split_visual(state, self.layout, path, role)
        self.report.prefixes[self._label(path)] = split.prefix
        self.report.ignored[self._label(path)] = split.ignored + (len(split.clip_rest) if role != "pretrained" else 0)
        return split

    def head(self, path: Path, task: str, head_input: str) -> dict[str, torch.Tensor]:
        state, normalize, self.report.read_as[self._label(path)] = read_head(path, f"head of task '{task}'",
                                                                             self.trust_pickle)
        if normalize is not None and normalize != (head_input == "normalized"):
            raise ZooError(f"{path}: head of task '{task}' has normalize={normalize}, but the zoo's head input is "
                           f"'{head_input}' (use --head-input {'normalized' if normalize else 'raw'})")
        weight = state.get("weight")
        if weight is None or weight.ndim != 2:
            raise ZooError(f"{path}: head of task '{task}' needs a 2-d 'weight' [C, D], found {', '.join(sorted(state))}")
        bias = state.get("bias", torch.zeros(weight.shape[0], dtype=weight.dtype))
        return {"weight": weight.float().contiguous(), "bias": bias.float().contiguous()}


class _ReadWhenWritten:
    """A task's visual tensors, read only when the zoo writer saves them and not kept afterwards.

    Why: checkpoints are 0.35-1.2 GB each; holding every task's state until the zoo is written
    would need all of them in memory at once (safetensors and unpickled sources are not memory-mapped).
    """

    def __init__(self, reader: _Reader, task: "_SourceTask"):
        self.reader, self.task = reader, task

    def _read(self) -> dict[str, torch.Tensor]:
        return self.reader.visual(self.task.checkpoint, f"task '{self.task.name}'").visual

    def items(self):   # all write_zoo asks of a state dict
        return self._read().items()


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


def input_transform(architecture: dict) -> tuple[Callable, int]:
    """(the architecture's inference transform, input size): image files become what the encoder reads."""
    adapter = get_architecture(architecture["kind"])
    config = adapter.check_config(architecture["config"])
    transform, expected = adapter.input_transform(config), adapter.expected_input(config)
    if transform is None or expected is None or "image_size" not in expected:
        raise ZooError(f"architecture '{adapter.kind}' declares no image preprocessing (input_transform, "
                       f"expected_input['image_size']): its held-out data cannot be imported")
    return transform, expected["image_size"]


def _task_data(data_root: Optional[Path], tasks: list[str], architecture: dict) -> dict[str, TaskData]:
    if data_root is None:
        return {}
    if not data_root.is_dir():
        raise ZooError(f"{data_root}: data folder not found")
    transform, size = input_transform(architecture)
    found = {t: find_task_data(data_root, t) for t in tasks}
    return {t: load_task_data(p, transform, size) for t, p in found.items() if p is not None}


def _template_file(templates) -> Optional[Path]:
    """The templates option when it names a file (an input the output must not overwrite)."""
    return Path(templates) if isinstance(templates, (str, Path)) and Path(templates).is_file() else None


IMPORT_PEAK_FILES = 3   # the pretrained state, a second full checkpoint (the next zeroshot file compared
                        # with it, or the whole CLIP for the text tower) and the task being written


def _check_memory(files, source: Path) -> None:
    """Memory guard of `zoo import`: its peak holds about the IMPORT_PEAK_FILES largest checkpoints (read
    whole: torch files unpickled, safetensors loaded), with the usual 1.25 margin."""
    sizes = sorted((Path(f).stat().st_size for f in files if f is not None and Path(f).is_file()), reverse=True)
    require_memory(int(1.25 * sum(sizes[:IMPORT_PEAK_FILES])), f"importing {source}", "import on a larger machine")


@dataclass
class _SourceTask:
    name: str
    checkpoint: Path
    head: Optional[Path]
    data: Optional[TaskData]
    classes: Optional[list[str]]


def _convert(reader: _Reader, base: VisualSplit, tasks: list[_SourceTask], out, head_input: str, prompts: list[str],
             name: Optional[str], progress, force: bool) -> ImportReport:
    """Heads (given or zero-shot), checkpoints and data of every task -> one validated safetensors zoo."""
    report, architecture = reader.report, reader.report.architecture
    wants_zeroshot = architecture["kind"] == KIND and head_input == "normalized" and any(
        t.head is None and t.classes is not None for t in tasks)
    tower = TextTower.from_clip_rest(architecture["config"], base.clip_rest) if wants_zeroshot else None
    report.text_tower = tower is not None
    entries = []
    for i, task in enumerate(tasks):
        if progress:
            progress(i + 1, len(tasks) + 2, task.name)
        head, report.heads[task.name] = None, "none"
        if task.head is not None:
            head, report.heads[task.name] = reader.head(task.head, task.name, head_input), "file"
        elif tower is not None and task.classes is not None:
            head, report.heads[task.name] = zeroshot_head(tower, task.classes, prompts), "zero-shot"
        if task.data is not None:
            report.data[task.name] = len(task.data.labels)
        entries.append({"name": task.name, "state_dict": _ReadWhenWritten(reader, task),
                        "head": head, "data": None if task.data is None else (task.data.images, task.data.labels),
                        "classes": task.classes})
    if progress:
        progress(len(tasks) + 1, len(tasks) + 2, "writing the zoo")
    def recipe() -> dict:   # after writing: task files are read while the zoo is written
        return {"source": {"format": report.source_format, "path": str(reader.source), "read_as": report.read_as},
                "imported_from": str(reader.source), "prefixes": report.prefixes, "heads": report.heads}

    write_zoo(out, architecture, base.visual, entries, recipe=recipe, head_input=head_input,
              name=name or Path(out).name, force=force)
    if progress:
        progress(len(tasks) + 2, len(tasks) + 2, "done")
    return report


def import_research_folder(source, out, model: str, pretrained=None, data=None, templates=None,
                           trust_pickle: bool = False, quick_gelu: Optional[bool] = None,
                           head_input: str = "normalized", name: Optional[str] = None,
                           progress: Optional[Callable[[int, int, str], None]] = None,
                           force: bool = False) -> ImportReport:
    """Convert SOURCE (see the module docstring) into a validated safetensors zoo at `out`."""
    check_zoo_output(out, [source, data, pretrained, _template_file(templates)], force)
    source = Path(source).resolve()
    config = {"name": model} if quick_gelu is None else {"name": model, "quick_gelu": bool(quick_gelu)}
    architecture = {"kind": KIND, "config": config}
    prompts = load_templates(templates)
    found = discover_tasks(source)
    report = ImportReport(out=Path(out), architecture=architecture, tasks=list(found))
    reader = _Reader(source, state_layout(KIND, config), trust_pickle, report)
    if progress:
        progress(0, len(found) + 2, "pretrained")
    data = _task_data(None if data is None else Path(data), list(found), architecture)   # fails before GBs are read
    _check_memory([*found.values(), pretrained, *(_one_file(f.parent, "zeroshot") for f in found.values())], source)
    base = _pretrained(reader, found, None if pretrained is None else Path(pretrained))
    tasks = [_SourceTask(task, file, _one_file(source, f"head_{task}"), data.get(task),
                         data[task].classes if task in data else None) for task, file in found.items()]
    return _convert(reader, base, tasks, out, head_input, prompts, name, progress, force)


def import_manifest_folder(source, out, templates=None, trust_pickle: bool = False, name: Optional[str] = None,
                           progress: Optional[Callable[[int, int, str], None]] = None,
                           force: bool = False) -> ImportReport:
    """A hand-written zoo.json whose files may be torch files, pickled modules or prefixed state dicts
    (e.g. a whole CLIP as the pretrained file): the same detection and conversion as the research layout.
    A task's `data` may be a tensor file or an image folder; `classes` default to the folder's."""
    check_zoo_output(out, [source, _template_file(templates)], force)
    source = Path(source).resolve()
    manifest = read_manifest(source)
    architecture = {"kind": manifest.architecture_kind, "config": manifest.architecture_config}
    prompts = load_templates(templates)
    report = ImportReport(out=Path(out), architecture=architecture, tasks=[t.name for t in manifest.tasks])
    reader = _Reader(source, state_layout(architecture["kind"], architecture["config"]), trust_pickle, report)
    transform, size = input_transform(architecture)
    tasks = []
    for task in manifest.tasks:
        data = None if task.data is None else load_task_data(source / task.data, transform, size)
        classes = list(task.classes) if task.classes is not None else (data.classes if data is not None else None)
        tasks.append(_SourceTask(task.name, source / task.checkpoint,
                                 None if task.head is None else source / task.head, data, classes))
    _check_memory([source / manifest.pretrained, *(source / t.checkpoint for t in manifest.tasks)], source)
    base = reader.visual(source / manifest.pretrained, "pretrained")
    return _convert(reader, base, tasks, out, manifest.head_input, prompts, name or manifest.name, progress, force)


def import_folder(source, out, model: Optional[str] = None, **options) -> ImportReport:
    """`zoo import`: a folder with a zoo.json is a manifest import, any other a research-layout import."""
    if (Path(source) / MANIFEST_NAME).is_file():
        ignored = sorted(k for k in ("pretrained", "data", "quick_gelu") if options.pop(k, None) is not None)
        options.pop("head_input", None)
        if model is not None or ignored:
            raise InvalidArgumentError(f"{source}: has a {MANIFEST_NAME}, which names the architecture, files and "
                                       f"head input; drop --model/--{'/--'.join(ignored or ['pretrained'])}")
        return import_manifest_folder(source, out, **options)
    if model is None:
        raise InvalidArgumentError(f"{source}: a research-layout folder needs --model (an open_clip name, e.g. ViT-B-32)")
    return import_research_folder(source, out, model, **options)

"""`zoo import` of language models: HF `save_pretrained` folders, PEFT LoRA adapters, text data specs.

Sources:
  - a folder with `pretrained/` (a save_pretrained folder: config.json + model.safetensors or a sharded
    index) and one `<task>/` per fine-tune: a save_pretrained folder of the same model, or a PEFT LoRA
    adapter folder (adapter_config.json + adapter_model.safetensors); held-out data as text data specs
    (tasks/text_data.py) in `data/<task>.json` (or `--data D`: `D/<task>.json`);
  - a YAML spec in the style of FusionBench's model pools (lm_spec.py) naming the same things.
The family comes from config.json: encoder-decoder models are `hf_seq2seq`, the rest `hf_causal_lm`.
Why link instead of convert: HF checkpoints are already safetensors; the zoo hard-links them (a copy
where links are impossible), so importing a 7B model costs no disk and no time, and the zoo opens
lazily like any other. The zoo is validated (opened) before it is published.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from flexmerge_core.cache import atomic_directory
from flexmerge_core.errors import ZooError
from flexmerge_core.zoo.manifest import FORMAT, MANIFEST_NAME, check_task_name
from flexmerge_core.zoo.writer import check_zoo_output

PRETRAINED = "_pretrained_"
WEIGHTS = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin")
ADAPTER_WEIGHTS, ADAPTER_CONFIG = "adapter_model.safetensors", "adapter_config.json"
_TOKENIZER_AND_CONFIG = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                         "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt",
                         "spiece.model", "tokenizer.model", "chat_template.jinja")


@dataclass
class LMImportReport:
    out: Path
    kind: str
    model_type: str
    tasks: dict[str, str] = field(default_factory=dict)     # task -> "full" | "lora"
    data: dict[str, str] = field(default_factory=dict)      # task -> its task kind
    links: int = 0
    copies: int = 0

    def to_json(self) -> dict:
        return {"out": str(self.out), "architecture": self.kind, "model_type": self.model_type, "tasks": self.tasks,
                "data": self.data, "files_linked": self.links, "files_copied": self.copies}

    def lines(self) -> list[str]:
        out = [f"imported {len(self.tasks)} tasks of a {self.model_type} model ({self.kind}) into {self.out} "
               f"({self.links} files linked, {self.copies} copied)"]
        out += [f"  {t}: {how} fine-tune, held-out data: {self.data.get(t, 'none')}" for t, how in self.tasks.items()]
        return out


def is_language_model(folder: Path) -> bool:
    """A save_pretrained folder whose config.json is a text model's (no vision tower)."""
    try:
        doc = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and "model_type" in doc and "vision_config" not in doc \
        and doc.get("model_type") not in ("clip", "clip_vision_model", "siglip", "vit")


def is_lm_folder(source) -> bool:
    """pretrained/ + <task>/ folders whose pretrained model is a language model."""
    return is_language_model(Path(source) / "pretrained")


def read_config(folder: Path, role: str) -> dict:
    try:
        doc = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ZooError(f"{folder / 'config.json'}: cannot read the config of {role}: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("model_type"), str):
        raise ZooError(f"{folder / 'config.json'}: the config of {role} names no model_type")
    return doc


def family(config: dict) -> str:
    """The architecture kind of a config.json: encoder-decoder -> hf_seq2seq, else hf_causal_lm."""
    return "hf_seq2seq" if config.get("is_encoder_decoder") else "hf_causal_lm"


def _weights(folder: Path, role: str) -> Path:
    for name in WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    raise ZooError(f"{folder}: no weights of {role} ({', '.join(WEIGHTS)})")


def _shards(index: Path) -> list[Path]:
    try:
        return sorted({index.parent / s for s in json.loads(index.read_text())["weight_map"].values()})
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ZooError(f"{index}: not a safetensors index: {exc}") from exc


class _Placer:
    """Hard-links files into the zoo being built (a copy where the filesystem refuses), counting both."""

    def __init__(self, root: Path):
        self.root, self.links, self.copies = root, 0, 0

    def put(self, source: Path, relative: str) -> str:
        target = self.root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(Path(source).resolve(), target)
            self.links += 1
        except OSError:
            shutil.copyfile(Path(source).resolve(), target)
            self.copies += 1
        return relative

    def model(self, folder: Path, prefix: str, role: str) -> str:
        """A full model's weights (every shard of an index) and side files; returns the weights' path."""
        weights = _weights(folder, role)
        files = [weights] + (_shards(weights) if weights.name.endswith(".index.json") else [])
        files += [folder / n for n in _TOKENIZER_AND_CONFIG if (folder / n).is_file()]
        for file in files:
            self.put(file, f"{prefix}/{file.name}")
        return f"{prefix}/{weights.name}"

    def adapter(self, folder: Path, prefix: str) -> str:
        self.put(folder / ADAPTER_CONFIG, f"{prefix}/{ADAPTER_CONFIG}")
        return self.put(folder / ADAPTER_WEIGHTS, f"{prefix}/{ADAPTER_WEIGHTS}")

    def data(self, spec: dict, spec_dir: Path, task: str) -> tuple[str, str]:
        """The task's data spec and its source (file or folder tree) under data/<task>/; (spec path, kind)."""
        from flexmerge_core.tasks.text_data import FORMAT as DATA_FORMAT

        source = (spec_dir / str(spec.get("source", ""))).resolve()
        if not source.exists() or not spec.get("source"):
            raise ZooError(f"{spec_dir}: data source {spec.get('source')!r} of task '{task}' not found")
        files = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
        for file in files:
            inside = file.relative_to(source.parent)
            self.put(file, f"data/{task}/{inside.as_posix()}")
        doc = {"format": DATA_FORMAT, **spec, "source": source.name}
        doc.pop("tokenizer", None)   # the zoo's tokenizer is the one beside its pretrained weights
        relative = f"data/{task}/{task}.data.json"
        (self.root / relative).write_text(json.dumps(doc, indent=2) + "\n")
        return relative, str(doc.get("kind", "text_classification_rank"))


def import_lm_models(models: dict[str, Path], out, data: dict[str, tuple[dict, Path]], name: Optional[str] = None,
                     source: Optional[dict] = None, force: bool = False) -> LMImportReport:
    """models: {PRETRAINED: folder, task: folder}; data: {task: (spec dict, folder its paths are relative to)}.
    `out` may not overlap an input nor replace a non-empty folder that is not a zoo (unless `force`)."""
    if PRETRAINED not in models or len(models) < 3:
        raise ZooError(f"a language-model zoo needs '{PRETRAINED}' and at least 2 fine-tunes, got "
                       f"{', '.join(sorted(models)) or 'none'}")
    unknown = sorted(set(data) - set(models))
    if unknown:
        raise ZooError(f"held-out data names task '{unknown[0]}', which has no model")
    sources = [(folder / str(spec.get("source", ""))).resolve() for spec, folder in data.values()]
    check_zoo_output(out, [*models.values(), *sources], force)
    config = read_config(models[PRETRAINED], "the pretrained model")
    report = LMImportReport(Path(out), family(config), config["model_type"])

    def build(tmp: Path) -> None:
        placer = _Placer(tmp)
        pretrained = placer.model(models[PRETRAINED], "pretrained", "the pretrained model")
        tasks = []
        for task, folder in models.items():
            if task == PRETRAINED:
                continue
            check_task_name(task)
            entry = {"name": task}
            if (folder / ADAPTER_CONFIG).is_file():
                entry["checkpoint"], report.tasks[task] = placer.adapter(folder, f"tasks/{task}"), "lora"
            else:
                _same_family(config, read_config(folder, f"task '{task}'"), task, folder)
                entry["checkpoint"] = placer.model(folder, f"tasks/{task}", f"task '{task}'")
                report.tasks[task] = "full"
            if task in data:
                entry["data"], entry["kind"] = placer.data(*data[task], task)
                report.data[task] = entry["kind"]
            tasks.append(entry)
        manifest = {"format": FORMAT, "name": name or Path(out).name,
                    "architecture": {"kind": report.kind, "config": config}, "pretrained": pretrained,
                    "tasks": tasks, "recipe": {"imported_from": source or {}}}
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        report.links, report.copies = placer.links, placer.copies
        from flexmerge_core.zoo.loader import open_zoo

        open_zoo(tmp)   # refuse to publish a zoo that would not open

    atomic_directory(Path(out), build)
    return report


def _same_family(pretrained: dict, task: dict, name: str, folder: Path) -> None:
    """A fine-tune of another model type is named here; shapes (e.g. added tokens) are checked at open."""
    if task["model_type"] != pretrained["model_type"]:
        raise ZooError(f"{folder / 'config.json'}: task '{name}' is a {task['model_type']} model, "
                       f"the pretrained one a {pretrained['model_type']}")
    if task.get("vocab_size") != pretrained.get("vocab_size"):
        raise ZooError(f"{folder / 'config.json'}: task '{name}' has vocabulary size {task.get('vocab_size')}, "
                       f"the pretrained model {pretrained.get('vocab_size')} (added tokens?): its embedding "
                       f"and output tensors cannot be merged row by row")


def import_lm_folder(source, out, data=None, name: Optional[str] = None, force: bool = False) -> LMImportReport:
    """SOURCE/pretrained/ + SOURCE/<task>/ (full or LoRA) + data specs -> a zoo (see the module docstring)."""
    source = Path(source).resolve()
    models = {PRETRAINED: source / "pretrained"}
    models.update({p.name: p for p in sorted(source.iterdir()) if p.is_dir() and p.name not in ("pretrained", "data")
                   and ((p / "config.json").is_file() or (p / ADAPTER_CONFIG).is_file())})
    data_dir = Path(data).resolve() if data is not None else source / "data"
    if data is not None and not data_dir.is_dir():
        raise ZooError(f"{data_dir}: data folder not found")
    specs = {}
    for task in models:
        spec = data_dir / f"{task}.json"
        if task != PRETRAINED and spec.is_file():
            try:
                specs[task] = (json.loads(spec.read_text()), spec.parent)
            except (OSError, ValueError) as exc:
                raise ZooError(f"{spec}: not a JSON text data spec: {exc}") from exc
    return import_lm_models(models, out, specs, name=name, source={"folder": str(source)}, force=force)

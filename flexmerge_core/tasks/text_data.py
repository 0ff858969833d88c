"""Held-out text data of a task: a small JSON spec naming a source file and how to read its rows.

Why a spec file: text datasets come as jsonl files, parquet files or `datasets.save_to_disk` folders,
with their own column names (GLUE's `sentence`, `premise`/`hypothesis`, `label`); the spec maps them
onto what a text task kind needs, so the data is used as published. A manifest task's `data` names the
spec (e.g. `data/rte.json`):
    {"format": "flexmerge-text-data/1", "kind": "text_classification_rank",   # kind: optional check
     "source": "rte.jsonl",                                         # relative to the spec's folder
     "split": "validation",                                         # datasets folders / parquet sets
     "template": "{premise} Question: {hypothesis}",                # or "columns": {"input": "sentence"}
     "columns": {"choices": "options", "label": "label", "answer": "answers"},
     "choices": ["no", "yes"],                                      # fixed choices for every example
     "choice_prefix": " ", "max_new_tokens": 16, "limit": 1000, "tokenizer": "../pretrained"}
Paths are relative to the spec's folder.
Tokenisation (with the tokenizer beside the zoo's pretrained weights unless "tokenizer" names a
folder) is done once per task and kept on disk (`cache/text-tokens/`), keyed by the spec, the files'
sizes and times, and the tokenizer's files.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Optional

import torch

from flexmerge_core.architectures.hf_lm import force_offline
from flexmerge_core.cache import atomic_write, cache_root, content_hash
from flexmerge_core.errors import ZooError
from flexmerge_core.tasks.base import HeldOut, TaskFiles, TaskKind

FORMAT = "flexmerge-text-data/1"
_KEYS = {"format", "kind", "source", "split", "template", "columns", "choices", "choice_prefix", "max_new_tokens",
         "limit", "tokenizer"}
_COLUMNS = {"input", "choices", "label", "answer"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "vocab.txt", "merges.txt", "spiece.model", "tokenizer.model")


def _relative(spec: Path, value, what: str) -> Path:
    """A path relative to the spec's folder (absolute paths are refused: a zoo must be movable)."""
    if not isinstance(value, str) or not value or PurePosixPath(value.replace("\\", "/")).is_absolute() \
            or value[1:3] == ":\\":
        raise ZooError(f"{spec}: '{what}' must be a path relative to the spec's folder, got {value!r}")
    return (spec.parent / value).resolve()


@dataclass
class TextData:
    """An opened text data spec: its settings and every file it reads (the zoo fingerprints them)."""

    path: Path
    role: str
    doc: dict
    source: Path
    files: list[Path] = field(default_factory=list)
    reads: int = 0

    @property
    def columns(self) -> dict:
        return self.doc.get("columns") or {}

    def setting(self, key: str, default=None):
        value = self.doc.get(key)
        return default if value is None else value

    def tokenizer_folder(self, pretrained: Path) -> Path:
        """The spec's tokenizer folder, else the folder of the zoo's pretrained weights."""
        if self.doc.get("tokenizer") is None:
            return pretrained.parent
        return _relative(self.path, self.doc["tokenizer"], "tokenizer")


def open_text_data(path: Path, role: str, kind: str) -> TextData:
    """Parse and check a spec read by task kind `kind` (ZooError naming the file and the key); the rows
    are read by `rows`."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ZooError(f"{path}: {role} is not a text data spec (JSON): {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ZooError(f"{path}: {role} must be a JSON object with \"format\": \"{FORMAT}\"")
    unknown = sorted(set(doc) - _KEYS)
    if unknown:
        raise ZooError(f"{path}: unknown key(s) {', '.join(unknown)} in {role} (allowed: {', '.join(sorted(_KEYS))})")
    if doc.get("kind", kind) != kind:
        raise ZooError(f"{path}: {role} is data of kind '{doc['kind']}', but the manifest's task kind is '{kind}'")
    columns = doc.get("columns") or {}
    if not isinstance(columns, dict) or set(columns) - _COLUMNS \
            or not all(isinstance(v, str) for v in columns.values()):
        raise ZooError(f"{path}: 'columns' of {role} maps some of {', '.join(sorted(_COLUMNS))} to column names")
    for key in ("max_new_tokens", "limit"):
        value = doc.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ZooError(f"{path}: '{key}' of {role} must be a positive integer")
    source = _relative(Path(path), doc.get("source"), "source")
    if not source.exists():
        raise ZooError(f"{path}: source '{doc.get('source')}' of {role} not found")
    files = [Path(path)] + (sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source])
    return TextData(Path(path), role, doc, source, files)


def rows(data: TextData) -> list[dict]:
    """The source's rows (dicts of column values), the first `limit` of them."""
    source, split = data.source, data.doc.get("split")
    try:
        if source.is_dir():
            found = _dataset_rows(source, split)
        elif source.suffix == ".parquet":
            import pyarrow.parquet as pq

            found = pq.read_table(source).to_pylist()
        elif source.suffix in (".jsonl", ".json"):
            found = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
        else:
            raise ValueError(f"unsupported source '{source.name}' (use .jsonl, .parquet or a datasets folder)")
    except (OSError, ValueError, KeyError) as exc:
        raise ZooError(f"{data.path}: cannot read {data.role} from {source}: {' '.join(str(exc).split())}") from exc
    limit = data.doc.get("limit")
    found = found[:limit] if limit else found
    if not found:
        raise ZooError(f"{data.path}: {data.role} has no rows")
    return found


def _dataset_rows(folder: Path, split: Optional[str]) -> list[dict]:
    """A `save_to_disk` folder (Dataset or DatasetDict), else the folder's parquet files of `split`."""
    if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
        import datasets

        loaded = datasets.load_from_disk(str(folder))
        if isinstance(loaded, datasets.DatasetDict):
            if split is None and len(loaded) != 1:
                raise ValueError(f"name a 'split' (the folder has {', '.join(loaded)})")
            loaded = loaded[split] if split is not None else next(iter(loaded.values()))
        return loaded.to_list()
    import pyarrow.parquet as pq

    parts = sorted(p for p in folder.rglob("*.parquet") if split is None or split in p.name)
    if not parts:
        raise ValueError(f"no parquet files{'' if split is None else f' of split {split!r}'}")
    return [row for part in parts for row in pq.read_table(part).to_pylist()]


def row_text(data: TextData, row: dict, index: int) -> str:
    """The example's input: the spec's template filled from the row, else its input column."""
    try:
        if data.doc.get("template") is not None:
            return str(data.doc["template"]).format(**row)
        return str(row[data.columns.get("input", "input")])
    except (KeyError, IndexError, ValueError) as exc:
        raise row_error(data, index, f"lacks what the input needs: {exc}") from exc


def row_error(data: TextData, index: int, problem: str) -> ZooError:
    """The one-line error about row `index` of a task's held-out file."""
    return ZooError(f"{data.path}: row {index} of {data.role} {problem}")


def column(data: TextData, row: dict, index: int, name: str, default: str) -> Any:
    key = data.columns.get(name, default)
    if key not in row:
        raise row_error(data, index, f"has no column '{key}' ({name}); columns: {', '.join(sorted(row))}")
    return row[key]


def load_tokenizer(folder: Path, role: str):
    force_offline()
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError) as exc:
        raise ZooError(f"{folder}: no tokenizer for {role}: {' '.join(str(exc).split())[:200]}") from exc


def _stats(paths) -> list:
    return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in paths]


def cached_tokens(data: TextData, kind: str, tokenizer_folder: Path,
                  build: Callable[[], tuple[dict[str, torch.Tensor], dict]]) -> tuple[dict[str, torch.Tensor], dict]:
    """`build()`'s (tensors, JSON extras), computed once per spec + files + tokenizer and kept on disk."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    tokenizer_files = [tokenizer_folder / n for n in TOKENIZER_FILES if (tokenizer_folder / n).is_file()]
    key = content_hash("text-tokens/1", kind, data.doc, _stats(data.files), _stats(tokenizer_files))
    path = cache_root() / "text-tokens" / f"{key}.safetensors"
    if path.is_file():
        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["extras"])
        except Exception:   # a corrupt entry is rebuilt, never trusted
            pass
    tensors, extras = build()
    atomic_write(path, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
                                             metadata={"extras": json.dumps(extras)}))
    return tensors, extras


class TextKind(TaskKind):
    """What both text kinds share: the spec file as data, no head, tokenisation cached per task."""

    def open_data(self, path: Path, role: str) -> TextData:
        return open_text_data(path, role, self.name)

    def validate(self, files: TaskFiles) -> None:
        if files.head is not None:
            raise ZooError(f"{files.head.path}: task '{files.task}' of kind '{self.name}' takes no head file "
                           f"(the language model's own output layer scores it)")

    def load(self, zoo, task_id: int) -> Optional[HeldOut]:
        data = zoo.task_files(task_id).data
        if data is None:
            return None
        folder = data.tokenizer_folder(zoo.pretrained_path)
        tokenizer = load_tokenizer(folder, data.role)
        tensors, extras = cached_tokens(data, self.name, folder, lambda: self.tokenize(data, rows(data), tokenizer))
        return HeldOut(tensors["inputs"], tensors["targets"], {"tokenizer": tokenizer, **extras})

    def tokenize(self, data: TextData, examples: list[dict], tokenizer) -> tuple[dict[str, torch.Tensor], dict]:
        """({"inputs": lm_requests tensor, "targets": tensor}, JSON extras handed to `score` in `head`)."""
        raise NotImplementedError


def context_ids(tokenizer, text: str) -> list[int]:
    """The input as the model reads it (with the tokenizer's special tokens, e.g. BOS or T5's </s>)."""
    return list(tokenizer(text)["input_ids"])


def continuation_ids(tokenizer, text: str) -> list[int]:
    """A continuation's tokens (no special tokens: the adapter adds what its family needs)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])

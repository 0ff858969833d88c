"""A language-model zoo described by a YAML model-pool spec, in the style of FusionBench's pools.

Why: FusionBench's `flan-t5-base_glue` pool names a pretrained model and one fine-tune per task by hub
id; people who have those models on disk should be able to hand us that file. Accepted:
    name: flan-t5-base-glue                       # optional
    models:
      _pretrained_: google/flan-t5-base           # a hub id (local HuggingFace cache only) or a folder
      glue-cola: ./models/cola                    # folders are relative to the spec; PEFT adapter folders too
      glue-sst2:                                  # FusionBench's instantiate form
        _target_: transformers.AutoModelForSeq2SeqLM.from_pretrained
        pretrained_model_name_or_path: tanganke/flan-t5-base_glue-sst2
    data:                                         # optional: text data specs (tasks/text_data.py) per task,
      glue-cola: {kind: text_classification_rank, source: ./data/cola.parquet,
                  template: "{sentence}", choices: [unacceptable, acceptable]}
The older list form (`models: [{name: ..., path: ...}]`) is read too. FusionBench's bookkeeping keys
(`_target_`, `_recursive_`, `tokenizer`, `model_kwargs`, ...) are accepted and ignored: the tokenizer is
the one saved beside the pretrained model. Nothing is downloaded; an id missing from the cache is an
error naming the model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from flexmerge_core.errors import ZooError
from flexmerge_core.importers.hf_lm import PRETRAINED, LMImportReport, import_lm_models, is_language_model

SPEC_SUFFIXES = (".yaml", ".yml")
_IGNORED = {"tokenizer", "model_kwargs", "type", "dtype", "torch_dtype", "device", "peft_config", "base_model"}
_PATH_KEYS = ("pretrained_model_name_or_path", "path")


def _read(path: Path) -> dict:
    import yaml

    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ZooError(f"{path}: not a readable YAML model-pool spec: {' '.join(str(exc).split())}") from exc
    if not isinstance(doc, dict) or "models" not in doc:
        raise ZooError(f"{path}: a model-pool spec is a mapping with 'models'")
    unknown = sorted(k for k in doc if k not in {"name", "models", "data"} | _IGNORED and not k.startswith("_"))
    if unknown:
        raise ZooError(f"{path}: unknown key '{unknown[0]}' (read: name, models, data)")
    return doc


def is_lm_spec(source) -> bool:
    """A YAML spec whose pretrained model is a language model (config.json without a vision tower)."""
    path = Path(source)
    if path.suffix.lower() not in SPEC_SUFFIXES or not path.is_file():
        return False
    try:
        return is_language_model(_models(path, _read(path))[PRETRAINED])
    except ZooError:
        return False


def _entries(path: Path, raw) -> dict[str, object]:
    if isinstance(raw, list):
        if not all(isinstance(e, dict) and "name" in e for e in raw):
            raise ZooError(f"{path}: 'models' as a list needs entries with 'name' and 'path'")
        return {str(e["name"]): e for e in raw}
    if not isinstance(raw, dict):
        raise ZooError(f"{path}: 'models' must map '{PRETRAINED}' and task names to folders or hub ids")
    return {str(k): v for k, v in raw.items()}


def _location(path: Path, task: str, value) -> str:
    if isinstance(value, dict):
        value = next((value[k] for k in _PATH_KEYS if k in value), None)
    if not isinstance(value, str) or not value:
        raise ZooError(f"{path}: model '{task}' needs a folder or hub id ({' or '.join(_PATH_KEYS)})")
    return value


def _resolve(path: Path, task: str, value: str) -> Path:
    """A folder relative to the spec, else the id's snapshot in the local HuggingFace cache."""
    folder = (path.parent / value).expanduser()
    if folder.is_dir():
        return folder.resolve()
    from flexmerge_core.architectures.hf_lm import force_offline

    force_offline()
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=value, local_files_only=True))
    except Exception as exc:   # LocalEntryNotFoundError, a malformed id (HFValidationError), ...
        raise ZooError(f"{path}: model '{task}': '{value}' is neither a folder nor in the local HuggingFace "
                       f"cache (nothing is downloaded)") from exc


def _models(path: Path, doc: dict) -> dict[str, Path]:
    entries = _entries(path, doc["models"])
    if PRETRAINED not in entries:
        raise ZooError(f"{path}: 'models' names no '{PRETRAINED}'")
    return {task: _resolve(path, task, _location(path, task, value)) for task, value in entries.items()}


def import_lm_spec(spec, out, name: Optional[str] = None, force: bool = False) -> LMImportReport:
    """Resolve every model of the spec on disk and import them with their data (see the module docstring)."""
    path = Path(spec).resolve()
    doc = _read(path)
    data = doc.get("data") or {}
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ZooError(f"{path}: 'data' must map task names to text data specs")
    return import_lm_models(_models(path, doc), out, {t: (dict(v), path.parent) for t, v in data.items()},
                            name=name or doc.get("name"), source={"spec": str(path)}, force=force)

"""`zoo import SRC`: which importer reads SRC (a zoo spec, HF folders, a manifest, the research layout).

Why one place: the command line and the dashboard take any of these sources; the choice depends only
on what SRC is, and options that the chosen importer does not take are refused in one line instead of
being silently ignored:
  - `SPEC.yaml` / `.yml`: a zoo spec (zoo_spec.py);
  - a folder with `pretrained/config.json`: HuggingFace `save_pretrained` folders, `pretrained/` and one
    `<task>/` per fine-tuned model, family read from config.json (`--data D`: `D/<task>` or
    `D/<task>.parquet`, any format of hf_datasets.py or imagefolder.py);
  - language models (hf_lm.py, lm_spec.py), checked first: a model-pool YAML or pretrained/ + <task>/ folders
    whose pretrained config.json is a text model's (tasks may be PEFT LoRA adapters; data/<task>.json specs);
  - otherwise a folder with `zoo.json` (manifest import) or in the research layout (research.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from flexmerge_core.errors import InvalidArgumentError, ZooError
from flexmerge_core.importers.hf_clip import PRETRAINED, TaskData, import_hf_clip, is_hf_clip
from flexmerge_core.importers.hf_lm import import_lm_folder, is_lm_folder
from flexmerge_core.importers.lm_spec import import_lm_spec, is_lm_spec
from flexmerge_core.importers.hf_models import read_json
from flexmerge_core.importers.imagefolder import find_task_data
from flexmerge_core.importers.research import import_folder
from flexmerge_core.importers.zoo_spec import SPEC_SUFFIXES, import_spec

_RESEARCH_ONLY = ("model", "pretrained", "quick_gelu", "trust_pickle", "head_input")


def _refuse(source: Path, what: str, options: dict) -> None:
    given = sorted(k for k in _RESEARCH_ONLY if options.get(k) not in (None, False, "normalized"))
    if given:
        raise InvalidArgumentError(f"{source}: {what} names its own models and heads; drop "
                                   f"--{', --'.join(g.replace('_', '-') for g in given)}")


def _hf_data(root: Path, task: str) -> Optional[Path]:
    parquet = root / f"{task}.parquet"
    return parquet if parquet.is_file() else find_task_data(root, task)


def import_hf_folders(source, out, data=None, templates=None, max_examples: Optional[int] = None, seed: int = 0,
                      name: Optional[str] = None, progress=None, force: bool = False):
    """SOURCE/pretrained/ + SOURCE/<task>/ save_pretrained folders (and D/<task> data) -> a zoo."""
    source = Path(source).resolve()
    config = read_json(source / "pretrained", "config.json", "the pretrained model")
    if not is_hf_clip(config):
        raise ZooError(f"{source / 'pretrained' / 'config.json'}: model type {config.get('model_type')!r} has "
                       f"no importer (supported: HuggingFace CLIP)")
    models = {PRETRAINED: source / "pretrained"}
    models.update({p.name: p for p in sorted(source.iterdir())
                   if p.is_dir() and p.name != "pretrained" and (p / "config.json").is_file()})
    datasets = {}
    if data is not None:
        root = Path(data)
        if not root.is_dir():
            raise ZooError(f"{root}: data folder not found")
        datasets = {t: TaskData(p) for t in models if t != PRETRAINED and (p := _hf_data(root, t)) is not None}
    return import_hf_clip(models, out, datasets, templates=templates, max_examples=max_examples, seed=seed,
                          name=name, source={"folder": str(source)}, progress=progress, force=force,
                          inputs=(source,) + ((Path(data),) if data is not None else ()))


def import_source(source, out, model: Optional[str] = None, data=None, templates=None,
                  max_examples: Optional[int] = None, seed: Optional[int] = None, name: Optional[str] = None,
                  progress=None, **research_options):
    """Pick the importer for `source` (see the module docstring) and run it; returns its report."""
    path = Path(source)
    force = bool(research_options.pop("force", False))
    options = {"model": model, **research_options}
    if is_lm_spec(path) or is_lm_folder(path):
        _refuse(path, "a language-model source", options)
        if templates is not None or max_examples is not None or seed is not None:
            raise InvalidArgumentError(f"{path}: language-model sources take no --templates/--max-examples/--seed "
                                       f"(text data specs name their rows)")
        if is_lm_spec(path):
            if data is not None:
                raise InvalidArgumentError(f"{path}: a model-pool spec names its data; drop --data")
            return import_lm_spec(path, out, name=name, force=force)
        return import_lm_folder(path, out, data=data, name=name, force=force)
    if path.suffix.lower() in SPEC_SUFFIXES:
        if not path.is_file():
            raise ZooError(f"{path}: zoo spec not found")
        _refuse(path, "a zoo spec", options)
        if data is not None or seed is not None:
            raise InvalidArgumentError(f"{path}: a zoo spec names its datasets and seed; drop --data/--seed")
        return import_spec(path, out, max_examples=max_examples, templates=templates, name=name, progress=progress,
                           force=force)
    if (path / "pretrained" / "config.json").is_file():
        _refuse(path, "a folder of HuggingFace models", options)
        return import_hf_folders(path, out, data, templates, max_examples, seed or 0, name, progress, force)
    if max_examples is not None or seed is not None:
        raise InvalidArgumentError(f"{path}: --max-examples/--seed apply to HuggingFace sources (a spec or "
                                   f"pretrained/ + <task>/ folders)")
    return import_folder(source, out, model, data=data, templates=templates, name=name, progress=progress,
                         force=force, **research_options)

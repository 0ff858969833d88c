"""Export of deployments as safetensors, the loader that rebuilds them, and reproducible recipes.

Why one file: a deployment is only useful if every task can be served from it, so the whole
thing (stored tensors, each once; routing; per-task heads and unmerged tensors) travels together,
with the routing and the recipe (zoo fingerprint, algorithm, hyperparameters, granularity, linkage,
order, seed, budget, achieved size) in the metadata. `--task T` instead writes one plain state
dict that loads strictly into the zoo's encoder (its head goes beside it, `<name>.head.safetensors`).
The recipe JSON beside an export re-creates it byte for byte (`pipeline.reproduce_export`): safetensors
serialisation is deterministic and so is everything upstream (plan, merge on CPU, seeded DARE).
An export's files are published together (cache.atomic_write_all: the recipe last, all or none), and
never onto the zoo they come from (outputs.check_apart). A whole deployment is written block by block
(export_stream.py: the same bytes as save_deployment, one block in memory at a time).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Optional

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from flexmerge_core.cache import atomic_write_all
from flexmerge_core.deployment.deploy import MASKED, Deployment, StoredGroup
from flexmerge_core.errors import InvalidArgumentError, ZooError
from flexmerge_core.outputs import check_apart

DEPLOYMENT_FORMAT = "flexmerge-deployment/1"
TASK_FORMAT = "flexmerge-task-model/1"
RECIPE_FORMAT = "flexmerge-export-recipe/1"
_META_KEY = "flexmerge"

_DTYPES = {str(d): d for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64,
                                torch.int32, torch.uint8, torch.bool)}


def recipe_path(out: Path) -> Path:
    return Path(out).with_suffix(".recipe.json")


def head_path(out: Path) -> Path:
    return Path(out).with_suffix(".head.safetensors")


def _entry_key(b: int, j: int, part: str) -> str:
    return f"blocks/{b}/{j}/{part}"


def entry_tensors(b: int, j: int, entry: StoredGroup) -> dict[str, torch.Tensor]:
    """The file's {key: tensor} of entry j of block b."""
    out = {_entry_key(b, j, f"tensor/{name}"): t for name, t in entry.tensors.items()}
    out.update({_entry_key(b, j, f"mask/{name}"): m for name, m in (entry.masks or {}).items()})
    if entry.scales is not None:
        out[_entry_key(b, j, "scales")] = entry.scales
    return out


def pretrained_tensors(pretrained: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"pretrained/{n}": t for n, t in pretrained.items()}


def task_own_tensors(t: int, params: dict[str, torch.Tensor], head: Optional[dict]) -> dict[str, torch.Tensor]:
    """The file's {key: tensor} of task t's never-merged tensors (unmerged parameters, head)."""
    out = {f"tasks/{t}/param/{n}": v for n, v in params.items()}
    out.update({f"tasks/{t}/head/{k}": v for k, v in (head or {}).items()})
    return out


def added_rows_tensors(t: int, rows: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The file's {key: tensor} of the vocabulary rows task t added (resize_vocab zoos; else none)."""
    return {f"tasks/{t}/added/{n}": v for n, v in rows.items()}


def deployment_tensors(deployment: Deployment) -> dict[str, torch.Tensor]:
    """The flat {key: tensor} of a deployment (stored tensors once, plus per-task extras)."""
    out: dict[str, torch.Tensor] = {}
    for b, entries in enumerate(deployment.entries):
        for j, entry in enumerate(entries):
            out.update(entry_tensors(b, j, entry))
    out.update(pretrained_tensors(deployment.pretrained))
    for t, own in enumerate(deployment.per_task):
        out.update(task_own_tensors(t, own, deployment.heads[t]))
    for t, rows in enumerate(deployment.added_rows):
        out.update(added_rows_tensors(t, rows))
    return {k: v.contiguous() for k, v in out.items()}


def deployment_layout(deployment: Deployment) -> dict:
    """Everything but the tensors: names, shapes, dtypes, entries and routing (JSON)."""
    return {"task_names": deployment.task_names, "block_names": deployment.block_names,
            "block_params": [list(p) for p in deployment.block_params],
            "param_shapes": {n: list(s) for n, s in deployment.param_shapes.items()},
            "param_dtypes": {n: str(d) for n, d in deployment.param_dtypes.items()},
            "storage": deployment.storage, "routing": deployment.routing,
            "entries": [[{"members": list(e.members), "kind": e.kind} for e in block] for block in deployment.entries]}


def file_metadata(**documents) -> dict[str, str]:
    """One metadata key: safetensors writes its metadata map in hash order, a single entry keeps the bytes stable."""
    return {_META_KEY: json.dumps(documents, sort_keys=True)}


Writes = dict[Path, Callable[[Path], None]]


def _safetensors_writer(tensors: dict[str, torch.Tensor], meta: dict) -> Callable[[Path], None]:
    return lambda tmp: save_file(tensors, str(tmp), metadata=meta)


def deployment_writes(deployment: Deployment, out) -> Writes:
    """{path: writer} of the whole deployment as one safetensors file."""
    tensors = deployment_tensors(deployment)
    meta = file_metadata(format=DEPLOYMENT_FORMAT, recipe=deployment.recipe, layout=deployment_layout(deployment))
    return {Path(out): _safetensors_writer(tensors, meta)}


def save_deployment(deployment: Deployment, out) -> Path:
    """Write the whole deployment to one safetensors file (atomically)."""
    atomic_write_all(deployment_writes(deployment, out))
    return Path(out)


def _read(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise ZooError(f"{path}: not a readable safetensors file ({exc})") from exc
    try:
        return json.loads(meta.get(_META_KEY, "{}")), tensors
    except ValueError as exc:
        raise ZooError(f"{path}: metadata is not valid JSON ({exc})") from exc


def load_deployment(path) -> Deployment:
    """Rebuild a Deployment from an exported file; per-task models come from `task_state_dict`."""
    from flexmerge_core.algorithms import get_algorithm

    path = Path(path)
    meta, tensors = _read(path)
    if meta.get("format") != DEPLOYMENT_FORMAT:
        raise ZooError(f"{path}: not a FlexMerge deployment (metadata format {meta.get('format')!r})")
    try:
        layout, recipe = meta["layout"], meta["recipe"]
        entries = [[_entry(tensors, b, j, e, layout["block_params"][b]) for j, e in enumerate(block)]
                   for b, block in enumerate(layout["entries"])]
        num_tasks = len(layout["task_names"])
        per_task = [_prefixed(tensors, f"tasks/{t}/param/") for t in range(num_tasks)]
        heads = [_prefixed(tensors, f"tasks/{t}/head/") or None for t in range(num_tasks)]
        return Deployment(
            task_names=list(layout["task_names"]), block_names=list(layout["block_names"]),
            block_params=[tuple(p) for p in layout["block_params"]],
            param_shapes={n: tuple(s) for n, s in layout["param_shapes"].items()},
            param_dtypes={n: _DTYPES[d] for n, d in layout["param_dtypes"].items()},
            entries=entries, routing=[list(r) for r in layout["routing"]],
            pretrained=_prefixed(tensors, "pretrained/"), per_task=per_task, heads=heads,
            storage=layout["storage"], algorithm=get_algorithm(recipe["algorithm"], **recipe["hyperparameters"]),
            recipe=recipe, added_rows=[_prefixed(tensors, f"tasks/{t}/added/") for t in range(num_tasks)])
    except (KeyError, TypeError, IndexError) as exc:
        raise ZooError(f"{path}: deployment metadata is incomplete ({exc!r})") from exc


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _entry(tensors, b: int, j: int, entry: dict, params) -> StoredGroup:
    own = _prefixed(tensors, _entry_key(b, j, ""))
    masked = entry["kind"] == MASKED
    return StoredGroup(members=tuple(entry["members"]), kind=entry["kind"],
                       tensors={n: own[f"tensor/{n}"] for n in params},
                       masks={n: own[f"mask/{n}"] for n in params} if masked else None,
                       scales=own.get("scales"))


def task_model_writes(deployment: Deployment, task: int, out, encoder_order: list[str]) -> Writes:
    """{path: writer} of one task's standalone encoder state dict (strict-loadable) and its head beside it."""
    state = deployment.encoder_state_dict(task)
    tensors = {n: state[n].contiguous() for n in encoder_order}
    meta = file_metadata(format=TASK_FORMAT, recipe=deployment.recipe, task=deployment.task_names[task])
    writes = {Path(out): _safetensors_writer(tensors, meta)}
    head = deployment.heads[task]
    if head is not None:
        writes[head_path(out)] = _safetensors_writer({k: v.contiguous() for k, v in head.items()}, meta)
    return writes


def task_writes(zoo, deployment: Deployment, task: int, out) -> Writes:
    """One task's model in its family's own format (`out` becomes a folder, e.g. for `from_pretrained`),
    else as task_model_writes; the stored names only (tied aliases are restored by the family's loader)."""
    adapter = zoo.architecture
    if not adapter.native_export:
        return task_model_writes(deployment, task, out, zoo.state_names)
    state = deployment.encoder_state_dict(task)
    # a task that added tokens ships with its own side files (its tokenizer knows them; the pretrained one not)
    source = zoo.task_checkpoint_path(task) if zoo.added_rows(task) else zoo.pretrained_path
    files = adapter.native_files(zoo.manifest.architecture_config, {n: state[n] for n in zoo.state_names},
                                 source.parent)
    return {Path(out) / name: write for name, write in files.items()}


def file_tensor_bytes(path, skip_prefix: Optional[str] = None) -> int:
    """Sum of numel * itemsize over the tensors of a safetensors file (read from its header only),
    leaving out keys starting with `skip_prefix` (e.g. "tasks/": heads and unmerged tensors)."""
    total = 0
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            if skip_prefix is None or not key.startswith(skip_prefix):
                view = f.get_slice(key)
                total += math.prod(view.get_shape()) * _ITEMSIZE[view.get_dtype()]
    return total


_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def export(zoo, spec, plan, algorithm, size, out, task: Optional[str] = None, zoo_path: Optional[str] = None,
           dtype: Optional[str] = None) -> dict:
    """Build the deployment at `size` and write it (or one task's model) plus its recipe; returns the recipe.

    zoo_path: how to re-open the zoo ("demo" or a folder; default the zoo's folder), kept in the recipe.
    dtype: 'fp32' | 'fp16' | 'bf16' writes every floating tensor in that dtype (recorded in the recipe);
    None keeps the zoo's dtypes.
    """
    from flexmerge_core.deployment.deploy import build_deployment, deployment_recipe
    from flexmerge_core.deployment.export_stream import streamed_deployment_writes
    from flexmerge_core.deployment.footprint import parse_dtype
    from flexmerge_core.deployment.group_cache import GroupResultCache
    from flexmerge_core.deployment.merge import GroupMerger

    if task is not None and task not in zoo.task_names:
        raise InvalidArgumentError(f"--task: unknown task '{task}' (zoo '{zoo.name}' has {', '.join(zoo.task_names)})")
    # inside the zoo folder is refused too: a rebuilt or re-imported zoo replaces its whole folder
    check_apart([out, recipe_path(out), head_path(out)], [zoo.root])
    # merged on CPU: bit-reproducible, so the recipe re-creates the same bytes on any machine
    # a whole deployment is streamed block by block (memory holds one block, not the deployment)
    streamed = task is None
    merger = GroupMerger(zoo, spec, algorithm, cache=GroupResultCache(), device="cpu", memo=not streamed)
    torch_dtype = None if dtype is None else parse_dtype(dtype)
    if streamed:
        if [b.name for b in spec.blocks] != list(plan.blocks):
            raise InvalidArgumentError(f"the plan's blocks do not match granularity '{spec.granularity}' of this zoo")
        partition = plan.partition_at(size)
        made = deployment_recipe(zoo, spec, plan, algorithm, partition.budget, partition.size)
        made["budget_met"] = partition.budget_met
        writes, made = streamed_deployment_writes(zoo, spec, algorithm, merger, partition, made, out,
                                                  torch_dtype, dtype)
    else:
        deployment = build_deployment(zoo, plan, algorithm, size, merger=merger)
        if dtype is not None:
            deployment = deployment.with_dtype(torch_dtype, dtype)
        writes = (deployment_writes(deployment, out) if task is None
                  else task_writes(zoo, deployment, zoo.task_names.index(task), out))
        made = deployment.recipe
    recipe = {"format": RECIPE_FORMAT, "zoo_path": zoo_path or str(zoo.root), "task": task, **made}
    text = (json.dumps(recipe, indent=2, sort_keys=True) + "\n").encode()
    writes[recipe_path(out)] = lambda tmp: tmp.write_bytes(text)   # last: a recipe means the export is whole
    atomic_write_all(writes)
    return recipe

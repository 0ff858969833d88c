"""Opening a zoo folder: validation at open time, lazy per-tensor access afterwards.

Why this shape: every consumer (similarity, merge, evaluation) streams one block of parameters at
a time, so the Zoo hands out single tensors read from memory maps and never a whole model. Everything
that can be checked from file headers (keys, shapes, dtypes, head/data layout) is checked when the zoo
is opened; values (NaN/Inf) are checked when a tensor is read, because that needs the data.
"""
from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Optional

import torch

from flexmerge_core.cache import content_hash
from flexmerge_core.errors import InvalidArgumentError, ZooError
from flexmerge_core.architectures.base import ArchitectureAdapter, tied_aliases
from flexmerge_core.architectures.registry import construct, get_architecture, state_aliases, state_layout
from flexmerge_core.tasks import HeldOut, TaskFiles, TaskKind, get_task_kind
from flexmerge_core.zoo.added_rows import AddedRowsCheckpoint, grown_rows
from flexmerge_core.zoo.checkpoint import CheckpointFile
from flexmerge_core.zoo.lora import LoraCheckpoint, is_lora_adapter
from flexmerge_core.zoo.manifest import MANIFEST_NAME, Manifest, TaskEntry, read_manifest


class _Files:
    """Opened checkpoint files of one zoo folder, shared by a zoo and its subsets."""

    def __init__(self, root: Path, pretrained: str, resize_vocab: bool = False):
        self.root, self.pretrained, self.resize_vocab = root, pretrained, resize_vocab
        self._open: dict[str, CheckpointFile | LoraCheckpoint] = {}
        self._trimmed: dict[str, AddedRowsCheckpoint] = {}

    def get(self, relative: str, role: str, kind: TaskKind | None = None):
        """The opened file: a CheckpointFile; a PEFT LoRA adapter (adapter_config.json beside it) reads as
        the dense pretrained + adapter checkpoint; a data file in a task kind's own format as `kind` opens it."""
        if relative not in self._open:
            path = self.root / relative
            if not path.is_file():
                raise ZooError(f"{path}: file of {role} not found")
            own = kind.open_data(path, role) if kind is not None else None
            if own is not None:
                self._open[relative] = own
            elif relative != self.pretrained and is_lora_adapter(path):
                self._open[relative] = LoraCheckpoint(path, role, self.get(self.pretrained, "pretrained"))
            else:
                self._open[relative] = CheckpointFile(path, role)
        return self._open[relative]

    def checkpoint(self, relative: str, role: str):
        """A task's checkpoint; in a `resize_vocab` zoo read with the pretrained shapes, its added rows apart."""
        file = self.get(relative, role)
        if not self.resize_vocab or type(file) is not CheckpointFile:
            return file
        if relative not in self._trimmed:
            self._trimmed[relative] = AddedRowsCheckpoint(file, self.get(self.pretrained, "pretrained"))
        return self._trimmed[relative]

    @property
    def tensors_read(self) -> int:
        return sum(f.reads for f in self._open.values())


def _task_role(task: TaskEntry) -> str:
    return f"task '{task.name}'"


def _check_same_layout(reference: CheckpointFile, other: CheckpointFile, ref_label: str) -> None:
    """`other` must have exactly the keys, shapes and dtypes of `reference`."""
    missing = [n for n in reference.names if n not in other.shapes]
    if missing:
        raise ZooError(f"{other.path}: {other.role} lacks tensor '{missing[0]}' of {ref_label}"
                       + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    extra = [n for n in other.names if n not in reference.shapes]
    if extra:
        raise ZooError(f"{other.path}: {other.role} has tensor '{extra[0]}' not in {ref_label}"
                       + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
    grown = grown_rows(reference, other)
    for name in reference.names:
        if other.shapes[name] != reference.shapes[name]:
            hint = (" (rows the fine-tune added, e.g. new tokens: \"resize_vocab\": true in zoo.json keeps them "
                    "per task, unmerged)") if name in grown else ""
            raise ZooError(f"{other.path}: tensor '{name}' of {other.role} has shape "
                           f"{list(other.shapes[name])}, {ref_label} has {list(reference.shapes[name])}{hint}")
        if other.dtypes[name] != reference.dtypes[name]:
            raise ZooError(f"{other.path}: tensor '{name}' of {other.role} has dtype "
                           f"{other.dtypes[name]}, {ref_label} has {reference.dtypes[name]}")


def _check_architecture(manifest: Manifest, pretrained: CheckpointFile) -> list[str]:
    """The pretrained checkpoint must match the declared architecture; returns state_dict order."""
    layout = state_layout(manifest.architecture_kind, manifest.architecture_config)
    label = f"architecture '{manifest.architecture_kind}'"
    for name, (shape, _dtype) in layout.items():
        if name not in pretrained.shapes:
            raise ZooError(f"{pretrained.path}: pretrained checkpoint lacks tensor '{name}' of {label}")
        if pretrained.shapes[name] != shape:
            raise ZooError(f"{pretrained.path}: tensor '{name}' of the pretrained checkpoint has shape "
                           f"{list(pretrained.shapes[name])}, {label} expects {list(shape)}")
    aliases = state_aliases(manifest.architecture_kind, manifest.architecture_config)
    extra = [n for n in pretrained.names if n not in layout and n not in aliases]   # older saves keep tied copies
    if extra:
        raise ZooError(f"{pretrained.path}: pretrained checkpoint has tensor '{extra[0]}' "
                       f"unknown to {label}")
    return list(layout)


# Merging adds and scales task vectors, and evaluation computes in float32: float checkpoints of any
# width are converted for compute (exports keep the zoo's dtype), integer index buffers (int64:
# positions, counts) are kept as they are. Quantized or boolean weights (int8, uint8, bool, float8)
# would merge as if they were values: refused, with how to get a usable zoo.
COMPUTE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int64)


def _check_dtypes(pretrained: CheckpointFile) -> None:
    for name, dtype in pretrained.dtypes.items():
        if dtype not in COMPUTE_DTYPES:
            raise ZooError(f"{pretrained.path}: tensor '{name}' of the pretrained checkpoint has dtype "
                           f"{str(dtype).removeprefix('torch.')}; a zoo holds float16, bfloat16, float32 or "
                           f"float64 weights (dequantize quantized checkpoints first)")


def _merged_names(manifest: Manifest, ordered: list[str]) -> list[str]:
    """Parameters not matched by the manifest's `unmerged` patterns nor the architecture's own."""
    patterns = [re.compile(p) for p in manifest.unmerged]
    for pattern in patterns:
        if not any(pattern.search(n) for n in ordered):
            raise ZooError(f"zoo.json: unmerged pattern '{pattern.pattern}' matches no parameter")
    adapter = get_architecture(manifest.architecture_kind)
    patterns += [re.compile(p) for p in adapter.unmerged(manifest.architecture_config)]
    merged = [n for n in ordered if not any(p.search(n) for p in patterns)]
    if not merged:
        raise ZooError("zoo.json: the 'unmerged' patterns exclude every parameter")
    return merged


def _check_inputs_fit(manifest: Manifest, files: _Files, adapter) -> None:
    """Held-out inputs must be what the model takes (e.g. image channels and resolution): one forward pass
    of a single example on the meta device (shapes only: no memory, no compute) per distinct input shape,
    whatever the architecture, instead of a shape error deep inside the first evaluation. The task kind
    says what one example's input shape is (None: nothing to check, e.g. token ids of varying length).
    A shape the adapter knows to fit from the checkpoint's shapes (`input_fits`) needs no forward: opening
    such a zoo then builds nothing and imports no model library."""
    encoder, outcome = None, {}
    shapes = files.get(manifest.pretrained, "pretrained").shapes
    for task in manifest.tasks:
        task_files = _task_files(files, manifest, task, None)
        shape = get_task_kind(task.kind).input_shape(task_files) if task.data is not None else None
        if shape is None:
            continue
        if shape not in outcome and adapter.input_fits(manifest.architecture_config, shapes, shape):
            outcome[shape] = None   # known from the shapes: no model library imported, nothing built
        if shape not in outcome:
            encoder = encoder or construct(manifest.architecture_kind, manifest.architecture_config, "meta").eval()
            try:
                with torch.no_grad():
                    adapter.forward(encoder, torch.empty((1, *shape), device="meta"))
                outcome[shape] = None
            except Exception as exc:   # whatever the module raises on an input it cannot take
                outcome[shape] = " ".join(str(exc).split())[:160] or type(exc).__name__
        if outcome[shape] is not None:
            raise ZooError(f"{task_files.data.path}: data of task '{task.name}' has inputs "
                           f"[N, {', '.join(map(str, shape))}] that the model ('{manifest.architecture_kind}') "
                           f"cannot take: {outcome[shape]}")


class Zoo:
    """A validated zoo: a pretrained model, M fine-tuned task models, optional heads and held-out data.

    Task id = index in `task_names`. Tensors are read lazily, one at a time. Parameters matched by the
    manifest's `unmerged` patterns are validated like the others but left out of `param_names`; like
    heads, each task keeps its own value of them (`task_tensor`).
    """

    def __init__(self, root: Path, manifest: Manifest, files: _Files, state_order: list[str]):
        self.root = root
        self.manifest = manifest
        self._files = files
        self._state_order = state_order
        pretrained = self._pretrained_file
        self.param_names: list[str] = _merged_names(manifest, state_order)
        self._merged = set(self.param_names)
        self.unmerged_names: list[str] = [n for n in state_order if n not in self._merged]
        self.param_shapes = {n: pretrained.shapes[n] for n in state_order}
        self.param_dtypes = {n: pretrained.dtypes[n] for n in state_order}
        self.fingerprint = self._fingerprint()

    # -- identity -----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.manifest.tasks]

    @property
    def architecture(self) -> ArchitectureAdapter:
        """The adapter of the manifest's architecture kind (build, forward, stages, inputs)."""
        return get_architecture(self.manifest.architecture_kind)

    @property
    def head_input(self) -> str:
        return self.manifest.head_input

    @property
    def recipe(self) -> dict:
        return self.manifest.recipe

    @property
    def classes(self) -> list[list[str] | None]:
        return [None if t.classes is None else list(t.classes) for t in self.manifest.tasks]

    def task_kind(self, task_id: int) -> TaskKind:
        """The task's kind (data format + metric; manifest `kind`, default image_classification)."""
        return get_task_kind(self._task(task_id).kind)

    @property
    def finetuned_accuracy(self) -> dict[str, float] | None:
        known = {t.name: t.finetuned_accuracy for t in self.manifest.tasks if t.finetuned_accuracy is not None}
        return known or None

    def _referenced_files(self) -> list[str]:
        files = [self.manifest.pretrained]
        for t in self.manifest.tasks:
            files += [f for f in (t.checkpoint, t.head, t.data) if f is not None]
        return files

    def _fingerprint(self) -> str:
        """Hash of the manifest and each referenced file's (size, mtime_ns).

        Why not content digests: opening a zoo must stay O(1) in model size; hashing GBs of
        checkpoints would cost tens of seconds per open. Any rewrite of a file changes its mtime
        (the demo builder replaces whole folders), so a stale cache is never hit; the price is a
        spurious miss after copying a zoo elsewhere.
        """
        stats = []
        for rel in self._referenced_files():
            for path in self._files.get(rel, "a file of the zoo").files:   # shards of an index too
                st = path.stat()
                stats.append([str(path.relative_to(self.root)), st.st_size, st.st_mtime_ns])
        return content_hash(self.manifest.to_json(), stats)

    # -- tensors --------------------------------------------------------------------------------
    @property
    def _pretrained_file(self) -> CheckpointFile:
        return self._files.get(self.manifest.pretrained, "pretrained")

    def _task_file(self, task_id: int) -> CheckpointFile:
        task = self._task(task_id)
        return self._files.checkpoint(task.checkpoint, _task_role(task))

    def _task(self, task_id: int) -> TaskEntry:
        if isinstance(task_id, bool) or not isinstance(task_id, int) or not 0 <= task_id < len(self.manifest.tasks):
            raise InvalidArgumentError(f"task id {task_id!r} out of range (zoo has {len(self.manifest.tasks)} tasks)")
        return self.manifest.tasks[task_id]

    def _check_param(self, name: str) -> None:
        if name not in self.param_shapes:
            raise InvalidArgumentError(f"unknown parameter '{name}' in zoo '{self.name}'")

    def pretrained_tensor(self, name: str, copy: bool = False, dtype=None) -> torch.Tensor:
        """The pretrained tensor: a view of the file's memory map, or with `copy` a private copy
        (CheckpointFile.read_into: freed when dropped, for one-pass readers such as a streamed export);
        dtype: converted to it (a copy is converted as it is read), e.g. float32 for a zoo in half precision."""
        self._check_param(name)
        return self._read(self._pretrained_file, name, copy, dtype)

    def task_tensor(self, task_id: int, name: str, copy: bool = False) -> torch.Tensor:
        self._check_param(name)
        return self._read(self._task_file(task_id), name, copy)

    def _read(self, file, name: str, copy: bool, dtype=None) -> torch.Tensor:
        if not copy or isinstance(file, LoraCheckpoint):   # a LoRA tensor is computed, never mapped
            return file.read(name).to(dtype)
        return file.read_into(name, torch.empty(self.param_shapes[name], dtype=dtype or self.param_dtypes[name]))

    def added_rows(self, task_id: int) -> dict[str, torch.Tensor]:
        """{name: rows the task added beyond the pretrained tensor} (resize_vocab zoos; else empty): never
        merged, appended to the task's own model (zoo/added_rows.py)."""
        file = self._task_file(task_id)
        return file.added() if isinstance(file, AddedRowsCheckpoint) else {}

    def task_checkpoint_path(self, task_id: int) -> Path:
        """The task's checkpoint file (a fine-tune's folder may hold its own side files, e.g. its tokenizer)."""
        return self._task_file(task_id).path

    def task_vectors(self, names, tasks=None, into=None, check_finite: bool = True,
                     pretrained=None) -> dict[str, torch.Tensor]:
        """{name: float32 [m, *shape]} of fine-tuned minus pretrained, for task ids `tasks` (default all).
        A one-pass caller (deployment/tensorwise.py) may pass into: {name: contiguous float32 [m, *shape]} filled
        instead of new tensors (its reused buffer); check_finite=False: checkpoint values are not checked for
        NaN/Inf (CheckpointFile.read_into); pretrained: {name: float32 pretrained tensor} it has read already."""
        task_ids = self._task_ids(tasks)
        out = {}
        for name in names:
            self._check_merged(name)
            stacked = _checked_buffer(name, None if into is None else into[name],
                                      (len(task_ids), *self.param_shapes[name]))
            self._fill(name, task_ids, list(stacked), check_finite=check_finite,
                       base=None if pretrained is None else pretrained[name])
            out[name] = stacked
        return out

    def task_vectors_apart(self, names, tasks=None) -> list[dict[str, torch.Tensor]]:
        """[{name: float32 [*shape]}, one per task of `tasks` (default all)]: task_vectors' rows, each task's in
        memory of its own, so a cache that keeps and evicts tasks apart (deployment/prepared_rows.py) needs no
        copy out of a stack; the pretrained tensors are read once for all tasks."""
        task_ids = self._task_ids(tasks)
        out = [{} for _ in task_ids]
        for name in names:
            self._check_merged(name)
            rows = [torch.empty(self.param_shapes[name], dtype=torch.float32) for _ in task_ids]
            self._fill(name, task_ids, rows)
            for vectors, row in zip(out, rows):
                vectors[name] = row
        return out

    def _task_ids(self, tasks) -> list[int]:
        task_ids = list(range(len(self.manifest.tasks))) if tasks is None else list(tasks)
        for task_id in task_ids:
            self._task(task_id)
        return task_ids

    def _check_merged(self, name: str) -> None:
        if name not in self._merged:
            raise InvalidArgumentError(f"'{name}' is not a merged parameter of zoo '{self.name}'")

    def _fill(self, name: str, task_ids: list[int], rows: list[torch.Tensor], start: int = 0,
              stop: Optional[int] = None, check_finite: bool = True, base: Optional[torch.Tensor] = None) -> None:
        """rows[i] = rows start:stop (default all) of task task_ids[i]'s vector of `name`, each read by pread and
        subtracted as it arrives (copies: a pass leaves no mapped pages behind); the pretrained rows are read once
        unless `base` gives them."""
        for row, task_id in zip(rows, task_ids):
            file = self._task_file(task_id)
            if isinstance(file, LoraCheckpoint):      # the LoRA delta itself (zero where not adapted: no read)
                row.copy_(file.task_vector(name) if stop is None else file.task_vector_rows(name, start, stop))
                continue
            if base is None:
                base = self._pretrained_file.read_into(name, torch.empty(row.shape, dtype=torch.float32), start, stop,
                                                       check_finite=check_finite)
            file.read_into(name, row, start, stop, check_finite=check_finite, minus=base)

    def task_files(self, task_id: int) -> TaskFiles:
        """Headers of the task's head and data files (what its kind validates and loads from)."""
        task = self._task(task_id)
        return _task_files(self._files, self.manifest, task,
                           self.architecture.feature_dim(self.manifest.architecture_config, self.param_shapes))

    def task_vector_rows(self, name: str, start: int, stop: int, tasks=None, into=None) -> torch.Tensor:
        """float32 [m, stop - start, *shape[1:]]: rows start:stop of `task_vectors([name], tasks)[name]`,
        reading only those rows of each checkpoint (planning streams large tensors this way); into: a
        contiguous float32 tensor of that shape filled instead of a new one (a streaming caller's buffer)."""
        task_ids = self._task_ids(tasks)
        self._check_merged(name)
        out = _checked_buffer(name, into, (len(task_ids), stop - start, *self.param_shapes[name][1:]))
        self._fill(name, task_ids, list(out), start, stop)
        return out

    def head(self, task_id: int) -> dict[str, torch.Tensor] | None:
        """Every tensor of the task's head file (their layout is the task kind's business)."""
        f = self.task_files(task_id).head
        return None if f is None else {name: f.read(name) for name in f.names}

    def heldout_set(self, task_id: int) -> HeldOut | None:
        """The task's held-out examples and head, as its kind loads them (None without data)."""
        return self.task_kind(task_id).load(self, task_id)

    def heldout(self, task_id: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(inputs, targets) of the task's held-out data, e.g. (images, labels); None without data."""
        held = self.heldout_set(task_id)
        return None if held is None else (held.inputs, held.targets)

    @property
    def tensors_read(self) -> int:
        """How many tensors were read from disk so far (all files of this folder)."""
        return self._files.tensors_read

    # -- models and subsets --------------------------------------------------------------------
    def build_encoder(self) -> torch.nn.Module:
        """The architecture with the pretrained weights loaded, in eval mode, on CPU.

        Tied aliases are not in the state: loading their stored tensor fills them (one shared Parameter)."""
        module = construct(self.manifest.architecture_kind, self.manifest.architecture_config)
        state = {name: self._pretrained_file.read(name) for name in self._state_order}
        result = module.load_state_dict(state, strict=False)
        missing = set(result.missing_keys) - set(tied_aliases(module))
        if missing or result.unexpected_keys:
            raise ZooError(f"{self._pretrained_file.path}: the pretrained state does not load into architecture "
                           f"'{self.manifest.architecture_kind}' (missing {sorted(missing)[:3]}, "
                           f"unexpected {result.unexpected_keys[:3]})")
        return module.eval()

    @property
    def pretrained_path(self) -> Path:
        """The pretrained checkpoint file (its folder holds a model's side files, e.g. its tokenizer)."""
        return self._pretrained_file.path

    @property
    def state_names(self) -> list[str]:
        """Every stored tensor name of a model, in state_dict order (merged and unmerged; no tied aliases)."""
        return list(self._state_order)

    def subset(self, task_names) -> "Zoo":
        """The same files with only `task_names` (kept in this zoo's order; ids are re-numbered)."""
        wanted = list(task_names)
        unknown = [n for n in wanted if n not in self.task_names]
        if unknown:
            raise InvalidArgumentError(f"unknown task '{unknown[0]}' (zoo '{self.name}' has "
                                       f"{', '.join(self.task_names)})")
        if len(set(wanted)) != len(wanted) or not wanted:
            raise InvalidArgumentError("a task subset needs at least one task, each named once")
        chosen = set(wanted)
        tasks = tuple(t for t in self.manifest.tasks if t.name in chosen)
        return Zoo(self.root, replace(self.manifest, tasks=tasks), self._files, self._state_order)

    def __repr__(self) -> str:
        return f"Zoo({self.name!r}, tasks={self.task_names}, root={str(self.root)!r})"


def _checked_buffer(name: str, into, shape: tuple) -> torch.Tensor:
    """`into` when it is a contiguous float32 tensor of `shape`, a new one when it is None; else a clear error."""
    if into is None:
        return torch.empty(shape, dtype=torch.float32)
    if into.shape != shape or into.dtype != torch.float32 or not into.is_contiguous():
        raise InvalidArgumentError(f"task vectors: the buffer of '{name}' is not contiguous float32 {list(shape)}")
    return into


def _task_files(files: _Files, manifest: Manifest, task: TaskEntry, feature_dim: int | None) -> TaskFiles:
    return TaskFiles(task=task.name, classes=task.classes, feature_dim=feature_dim, head_input=manifest.head_input,
                     head=None if task.head is None else files.get(task.head, f"head of task '{task.name}'"),
                     data=None if task.data is None else files.get(task.data, f"data of task '{task.name}'",
                                                                   get_task_kind(task.kind)))


def _validate_files(root: Path, manifest: Manifest, files: _Files) -> list[str]:
    """Header-level checks of every referenced file; returns the state_dict order."""
    pretrained = files.get(manifest.pretrained, "pretrained")
    order = _check_architecture(manifest, pretrained)
    _check_dtypes(pretrained)
    adapter = get_architecture(manifest.architecture_kind)
    feature_dim = adapter.feature_dim(manifest.architecture_config, pretrained.shapes)
    for task in manifest.tasks:
        _check_same_layout(pretrained, files.checkpoint(task.checkpoint, _task_role(task)),
                           f"the pretrained checkpoint ({manifest.pretrained})")
        get_task_kind(task.kind).validate(_task_files(files, manifest, task, feature_dim))
    _check_inputs_fit(manifest, files, adapter)
    return order


def open_zoo(path) -> Zoo:
    """Open and validate a zoo folder (names of embedded demos are resolved by the caller:
    `flexmerge_core.pipeline.resolve_zoo`)."""
    root = Path(path).resolve()
    manifest = read_manifest(root)
    files = _Files(root, manifest.pretrained, manifest.resize_vocab)
    order = _validate_files(root, manifest, files)
    return Zoo(root, manifest, files, order)


__all__ = ["Zoo", "open_zoo", "MANIFEST_NAME"]

"""Reading a user's checkpoint file into a flat {name: tensor} dict, refusing pickled code by default.

Why: research checkpoints are often whole pickled modules (`torch.save(model)`), and unpickling
runs whatever code the file names. The safe reader (`weights_only=True`) accepts plain state dicts
only. A pickled object (the task vectors' `src.modeling.ImageEncoder` wrapping an open_clip model,
their `ClassificationHead`s) is then read by the structural reader (safe_pickle.py), which rebuilds
tensors and module trees without importing or calling anything the file names. Only what that reader
refuses (a pickle calling code outside its allow-list) needs `trust_pickle`: the file is then
unpickled once, here, and the importer writes safetensors so no later load unpickles.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file

from flexmerge_core.errors import ZooError
from flexmerge_core.inputs import check_regular_file
from flexmerge_core.importers.safe_pickle import StandIn, classification_head, load_structural, module_state_dict
from flexmerge_core.zoo.checkpoint import SAFETENSORS_SUFFIXES, TORCH_SUFFIXES

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")


def _load_weights_only(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):   # legacy (non-zip) torch files cannot be memory-mapped
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


def _refusal(path: Path, role: str, exc: Exception) -> ZooError:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ZooError(f"{path}: {role} is a pickled Python object whose unpickling runs code named in the file "
                    f"({reason[:160]}); the structural reader does not run it, so it was not loaded. If you trust "
                    f"where this file comes from, re-run with --trust-pickle: it is unpickled once and converted "
                    f"to safetensors, so later loads never unpickle")


def _flat_tensors(path: Path, role: str, obj) -> dict[str, torch.Tensor]:
    """A flat state dict from a loaded object: a module (or its StandIn), a dict of tensors, or a known wrapper."""
    if type(obj) is StandIn:
        return dict(module_state_dict(obj, f"{path}: {role}"))
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict):
        for key in _WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, torch.nn.Module):
                inner = inner.state_dict()
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, dict) or not obj or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise ZooError(f"{path}: {role} holds no state dict of named tensors (found {type(obj).__name__})")
    return dict(obj)


def load_torch_object(path: Path, role: str, trust_pickle: bool = False) -> tuple[object, str]:
    """(the object a torch file holds, how it was read: "state_dict" | "pickle" | "trusted_pickle").

    "pickle": a pickled object rebuilt structurally (classes as StandIns; nothing imported or run)."""
    try:
        return _load_weights_only(path), "state_dict"
    except pickle.UnpicklingError as exc:
        try:
            return load_structural(path), "pickle"
        except ZooError as refused:
            if not trust_pickle:
                raise _refusal(path, role, refused) from exc
        try:
            return torch.load(path, map_location="cpu", weights_only=False), "trusted_pickle"
        except Exception as inner:   # e.g. ModuleNotFoundError: the module's class is not importable here
            raise ZooError(f"{path}: cannot unpickle {role} even with --trust-pickle: "
                           f"{type(inner).__name__}: {inner}") from inner
    except Exception as exc:   # truncated or foreign file
        raise ZooError(f"{path}: cannot read torch file of {role}: {type(exc).__name__}: {exc}") from exc


def read_checkpoint(path, role: str, trust_pickle: bool = False) -> tuple[dict[str, torch.Tensor], str]:
    """({name: tensor} of a safetensors or torch file, how it was read: "safetensors" or load_torch_object's)."""
    path = check_regular_file(path, role)
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        try:
            return load_file(str(path)), "safetensors"
        except Exception as exc:   # SafetensorError / OSError: a damaged or foreign file
            raise ZooError(f"{path}: cannot read safetensors file of {role}: {exc}") from exc
    if suffix not in TORCH_SUFFIXES:
        raise ZooError(f"{path}: unsupported checkpoint format '{suffix}' for {role} "
                       f"(use .safetensors, .pt, .pth or .bin)")
    obj, how = load_torch_object(path, role, trust_pickle)
    return _flat_tensors(path, role, obj), how


def read_state_dict(path, role: str, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """{name: tensor} of a safetensors or torch file (pickled modules read structurally, see above)."""
    return read_checkpoint(path, role, trust_pickle)[0]


def read_head(path, role: str, trust_pickle: bool = False) -> tuple[dict[str, torch.Tensor], Optional[bool], str]:
    """(head tensors, its `normalize` flag when the file is a pickled head module (else None), how it was read)."""
    path = Path(path)
    if path.suffix.lower() in TORCH_SUFFIXES and path.is_file():
        obj, how = load_torch_object(path, role, trust_pickle)
        if type(obj) is StandIn:
            head = classification_head(obj, f"{path}: {role}")
            return {k: v for k, v in head.items() if k != "normalize" and v is not None}, head["normalize"], how
        if isinstance(obj, torch.nn.Module) and isinstance(getattr(obj, "normalize", None), bool):
            return _flat_tensors(path, role, obj), obj.normalize, how
        return _flat_tensors(path, role, obj), None, how
    state, how = read_checkpoint(path, role, trust_pickle)
    return state, None, how

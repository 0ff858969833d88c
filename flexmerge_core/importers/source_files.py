"""Reading a user's checkpoint file into a flat {name: tensor} dict, refusing pickled code by default.

Why: research checkpoints are often whole pickled modules (`torch.save(model)`), and unpickling
runs whatever code the file names. The safe reader (`weights_only=True`) accepts plain state dicts
only; anything else is refused with a message saying why and how to opt in. With `trust_pickle`
the file is unpickled once, here, and the importer writes safetensors so no later load unpickles.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file

from flexmerge_core.errors import ZooError
from flexmerge_core.inputs import check_regular_file
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
    return ZooError(f"{path}: {role} is a pickled Python object, not a plain state dict; unpickling runs code "
                    f"named in the file, so it was not loaded ({reason[:160]}). If you trust where this file "
                    f"comes from, re-run with --trust-pickle: it is unpickled once and converted to "
                    f"safetensors, so later loads never unpickle")


def _flat_tensors(path: Path, role: str, obj) -> dict[str, torch.Tensor]:
    """A flat state dict from a loaded object: a module, a dict of tensors, or a known wrapper dict."""
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


def read_state_dict(path, role: str, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """{name: tensor} of a safetensors or torch file; pickled objects only with `trust_pickle`."""
    path = check_regular_file(path, role)
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        try:
            return load_file(str(path))
        except Exception as exc:   # SafetensorError / OSError: a damaged or foreign file
            raise ZooError(f"{path}: cannot read safetensors file of {role}: {exc}") from exc
    if suffix not in TORCH_SUFFIXES:
        raise ZooError(f"{path}: unsupported checkpoint format '{suffix}' for {role} "
                       f"(use .safetensors, .pt, .pth or .bin)")
    try:
        obj = _load_weights_only(path)
    except pickle.UnpicklingError as exc:
        if not trust_pickle:
            raise _refusal(path, role, exc) from exc
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as inner:   # e.g. ModuleNotFoundError: the module's class is not importable here
            raise ZooError(f"{path}: cannot unpickle {role} even with --trust-pickle: "
                           f"{type(inner).__name__}: {inner}") from inner
    except Exception as exc:   # truncated or foreign file
        raise ZooError(f"{path}: cannot read torch file of {role}: {type(exc).__name__}: {exc}") from exc
    return _flat_tensors(path, role, obj)

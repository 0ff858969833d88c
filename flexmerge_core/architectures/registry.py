"""The architecture kinds a zoo manifest can name (`architecture.kind`), each served by one adapter.

Why a registry with entry points: the engine never names a model family; it asks the adapter of
the manifest's kind. Built-in adapters are registered below; a third-party package adds its own by
declaring an entry point in the group `flexmerge.architectures` (an `ArchitectureAdapter` subclass
or instance), read once, the first time a kind is not found. `construct` and `state_layout` are the
engine's two uses of an adapter that need the same config check and the same one-line error.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from flexmerge_core.architectures import hf_causal_lm, hf_clip_vision, hf_seq2seq, open_clip
from flexmerge_core.architectures.base import ArchitectureAdapter
from flexmerge_core.architectures.build_guard import bounded_build
from flexmerge_core.errors import FlexMergeError, ZooError
from flexmerge_core.plugins import PluginRegistry

ENTRY_POINT_GROUP = "flexmerge.architectures"
_REGISTRY: PluginRegistry[ArchitectureAdapter] = PluginRegistry(
    "architecture kind", ENTRY_POINT_GROUP, name_of=lambda adapter: adapter.kind,
    check=lambda a: isinstance(a, ArchitectureAdapter) and isinstance(a.kind, str) and bool(a.kind), replace=True)


def register_architecture(adapter: ArchitectureAdapter) -> ArchitectureAdapter:
    """Make `adapter` (or an instance of an adapter class) the one serving `adapter.kind`, replacing an
    earlier one of that kind."""
    return _REGISTRY.add(adapter)


def get_architecture(kind: str) -> ArchitectureAdapter:
    """The adapter of `kind`; ZooError listing the known kinds when there is none."""
    return _REGISTRY.get(kind)


def architecture_kinds() -> list[str]:
    """Every registered kind (entry points included), sorted."""
    return _REGISTRY.names()


@contextmanager
def _building(kind: str):
    """A constructor's own complaint about the config becomes one ZooError naming the kind."""
    try:
        with bounded_build(f"architecture '{kind}'"):
            yield
    except FlexMergeError:
        raise
    except Exception as exc:   # a constructor fed a hostile config raises anything (ZeroDivisionError for patch_size 0)
        raise ZooError(f"zoo.json: architecture '{kind}' cannot be built from its config: "
                       f"{type(exc).__name__}: {' '.join(str(exc).split())}") from exc


def construct(kind: str, config: dict, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The module of `kind` built from `config` on `device` (randomly initialised)."""
    adapter = get_architecture(kind)
    config = adapter.check_config(config)
    with _building(kind), torch.device(device):
        return adapter.build(config)


def state_layout(kind: str, config: dict) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """{name: (shape, dtype)} of the architecture's state_dict, in state_dict order (no memory used)."""
    adapter = get_architecture(kind)
    config = adapter.check_config(config)
    with _building(kind):
        return adapter.layout(config)


def state_aliases(kind: str, config: dict) -> dict[str, str]:
    """{alias: stored name} of the architecture's tied state_dict entries (no memory used)."""
    adapter = get_architecture(kind)
    config = adapter.check_config(config)
    with _building(kind):
        return adapter.tied(config)


for _adapter in open_clip.ADAPTERS + hf_clip_vision.ADAPTERS + hf_seq2seq.ADAPTERS + hf_causal_lm.ADAPTERS:
    register_architecture(_adapter)

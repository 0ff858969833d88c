"""Task kinds by name: the built-in ones, those registered at run time, and installed plug-ins.

Why entry points: a third-party package adds a data format or metric without editing this
repository, by declaring `[project.entry-points."flexmerge.task_kinds"] name = "pkg.module:KindClass"`
(a TaskKind subclass or instance); plug-ins are loaded on the first lookup of an unknown name.
"""
from __future__ import annotations

from flexmerge_core.plugins import PluginRegistry
from flexmerge_core.tasks.base import TaskKind
from flexmerge_core.tasks.image_classification import ImageClassification
from flexmerge_core.tasks.text_exact_match import TextGenerationExactMatch
from flexmerge_core.tasks.text_rank import TextClassificationRank

ENTRY_POINT_GROUP = "flexmerge.task_kinds"
_REGISTRY: PluginRegistry[TaskKind] = PluginRegistry(
    "task kind", ENTRY_POINT_GROUP, name_of=lambda kind: kind.name,
    check=lambda k: isinstance(k, TaskKind) and all(isinstance(v, str) and v for v in (k.name, k.metric)),
    replace=False)


def register_task_kind(kind: TaskKind) -> TaskKind:
    """Make `kind` (or an instance of a kind class) known by its name; another kind under a taken name is refused."""
    return _REGISTRY.add(kind)


def get_task_kind(name: str) -> TaskKind:
    """The kind registered as `name` (ZooError listing the known kinds otherwise)."""
    return _REGISTRY.get(name)


def task_kind_names() -> list[str]:
    return _REGISTRY.names()


for _kind in (ImageClassification(), TextClassificationRank(), TextGenerationExactMatch()):
    register_task_kind(_kind)

"""Task kinds by name: the built-in ones, those registered at run time, and installed plug-ins.

Why entry points: a third-party package adds a data format or metric without editing this
repository, by declaring `[project.entry-points."flexmerge.task_kinds"] name = "pkg.module:KindClass"`
(a TaskKind subclass or instance); plug-ins are loaded on the first lookup of an unknown name.
"""
from __future__ import annotations

from importlib.metadata import entry_points

from flexmerge_core.errors import InvalidArgumentError, ZooError
from flexmerge_core.tasks.base import TaskKind
from flexmerge_core.tasks.image_classification import ImageClassification
from flexmerge_core.tasks.text_exact_match import TextGenerationExactMatch
from flexmerge_core.tasks.text_rank import TextClassificationRank

ENTRY_POINT_GROUP = "flexmerge.task_kinds"

_KINDS: dict[str, TaskKind] = {}
_plugins_loaded = False


def register_task_kind(kind: TaskKind) -> TaskKind:
    """Make `kind` known by its name; a different kind under a taken name is refused."""
    if isinstance(kind, type):
        kind = kind()
    if not isinstance(kind, TaskKind) or not isinstance(kind.name, str) or not kind.name \
            or not isinstance(kind.metric, str) or not kind.metric:
        raise InvalidArgumentError(f"{kind!r} is not a TaskKind with a name and a metric")
    known = _KINDS.get(kind.name)
    if known is not None and known is not kind:
        raise InvalidArgumentError(f"task kind '{kind.name}' is already registered ({known!r})")
    _KINDS[kind.name] = kind
    return kind


def _load_plugins() -> None:
    global _plugins_loaded
    _plugins_loaded = True
    for point in entry_points(group=ENTRY_POINT_GROUP):
        if point.name not in _KINDS:
            register_task_kind(point.load())


def get_task_kind(name: str) -> TaskKind:
    """The kind registered as `name` (ZooError listing the known kinds otherwise)."""
    if name not in _KINDS and not _plugins_loaded:
        _load_plugins()
    if name not in _KINDS:
        raise ZooError(f"unknown task kind {name!r} (known: {', '.join(task_kind_names())})")
    return _KINDS[name]


def task_kind_names() -> list[str]:
    return sorted(_KINDS)


for _kind in (ImageClassification(), TextClassificationRank(), TextGenerationExactMatch()):
    register_task_kind(_kind)

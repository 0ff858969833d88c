"""Task kinds: one per held-out data format + metric (see base.py); looked up by the manifest's task `kind`."""
from flexmerge_core.tasks.base import DEFAULT_KIND, HeldOut, TaskFiles, TaskKind
from flexmerge_core.tasks.registry import get_task_kind, register_task_kind, task_kind_names

__all__ = ["DEFAULT_KIND", "HeldOut", "TaskFiles", "TaskKind", "get_task_kind", "register_task_kind",
           "task_kind_names"]

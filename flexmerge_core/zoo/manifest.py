"""The zoo manifest (`zoo.json`): parsing and structural validation.

Why strict: a typo in a key ("finetuned_acc") or a path that escapes the zoo folder must fail
loudly at open time with the culprit named, not surface later as a silently missing feature.
File contents (tensor names, shapes) are checked by the loader; this module checks the document.
"""
from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from flexmerge_core.errors import ZooError
from flexmerge_core.tasks import DEFAULT_KIND, get_task_kind
from flexmerge_core.inputs import read_json

MANIFEST_NAME = "zoo.json"
FORMAT = "flexmerge-zoo/1"
HEAD_INPUTS = ("raw", "normalized")

_TOP_REQUIRED = {"format", "architecture", "pretrained", "tasks"}
_TOP_OPTIONAL = {"name", "head_input", "recipe", "unmerged"}
_ARCH_KEYS = {"kind", "config"}
_TASK_REQUIRED = {"name", "checkpoint"}
_TASK_OPTIONAL = {"kind", "head", "data", "classes", "finetuned_accuracy"}


@dataclass(frozen=True)
class TaskEntry:
    name: str
    checkpoint: str
    head: str | None
    data: str | None
    classes: tuple[str, ...] | None
    finetuned_accuracy: float | None
    kind: str = DEFAULT_KIND

    def to_json(self) -> dict:
        """The canonical document; `kind` only when not the default, so zoos written before task kinds
        existed keep their fingerprint (and their caches and export recipes stay valid)."""
        doc = {"name": self.name, "checkpoint": self.checkpoint, "head": self.head, "data": self.data,
               "classes": None if self.classes is None else list(self.classes),
               "finetuned_accuracy": self.finetuned_accuracy}
        return doc if self.kind == DEFAULT_KIND else {**doc, "kind": self.kind}


@dataclass(frozen=True)
class Manifest:
    name: str
    architecture_kind: str
    architecture_config: dict
    pretrained: str
    head_input: str
    tasks: tuple[TaskEntry, ...]
    recipe: dict
    unmerged: tuple[str, ...]

    def to_json(self) -> dict:
        return {"format": FORMAT, "name": self.name,
                "architecture": {"kind": self.architecture_kind, "config": self.architecture_config},
                "pretrained": self.pretrained, "head_input": self.head_input,
                "tasks": [t.to_json() for t in self.tasks], "recipe": self.recipe,
                "unmerged": list(self.unmerged)}


def _check_keys(where: str, found: dict, required: set, optional: set) -> None:
    unknown = sorted(set(found) - required - optional)
    if unknown:
        raise ZooError(f"{where}: unknown key(s) {', '.join(unknown)} "
                       f"(allowed: {', '.join(sorted(required | optional))})")
    missing = sorted(required - set(found))
    if missing:
        raise ZooError(f"{where}: missing key(s) {', '.join(missing)}")


def _relative_file(where: str, value) -> str:
    """A path inside the zoo folder: relative, no '..' (a manifest must not point outside its zoo)."""
    if not isinstance(value, str) or not value:
        raise ZooError(f"{where}: expected a relative file path, got {value!r}")
    path = PurePosixPath(value.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or re.match(r"^[A-Za-z]:", value):
        raise ZooError(f"{where}: file path '{value}' must stay inside the zoo folder")
    return value


def check_name(name, what: str = "task name") -> str:
    """Zoo and task names become file, cache and download names and one-line messages: non-empty,
    no path separators, no '..', no surrounding spaces, no control or format characters (a NUL
    ends a C string, a newline splits a message, a bidi override hides what a name says)."""
    if not isinstance(name, str) or not name.strip():
        raise ZooError(f"zoo.json: {what} {name!r} must be a non-empty string")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs") for c in name):
        raise ZooError(f"zoo.json: {what} {name!r} must not contain control characters")
    if "/" in name or "\\" in name or ".." in name or name != name.strip():
        raise ZooError(f"zoo.json: {what} '{name}' must not contain '/', '\\', '..' "
                       f"or surrounding spaces")
    return name


def check_task_name(name) -> str:
    return check_name(name, "task name")


def _optional_accuracy(where: str, value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0.0 <= value <= 1.0:
        raise ZooError(f"{where}: finetuned_accuracy must be a number in [0, 1] or null, got {value!r}")
    return float(value)


def _optional_classes(where: str, value) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value) or not value:
        raise ZooError(f"{where}: classes must be a non-empty list of strings or null")
    return tuple(value)


def _task_kind(where: str, value) -> str:
    if not isinstance(value, str) or not value:
        raise ZooError(f"{where}: kind must be a non-empty string, got {value!r}")
    try:
        get_task_kind(value)
    except ZooError as exc:
        raise ZooError(f"{where}: {exc}") from None
    return value


def _parse_task(index: int, raw) -> TaskEntry:
    where = f"zoo.json: tasks[{index}]"
    if not isinstance(raw, dict):
        raise ZooError(f"{where}: expected an object")
    _check_keys(where, raw, _TASK_REQUIRED, _TASK_OPTIONAL)
    name = check_task_name(raw["name"])
    where = f"zoo.json: task '{name}'"
    return TaskEntry(
        name=name,
        checkpoint=_relative_file(f"{where} checkpoint", raw["checkpoint"]),
        head=None if raw.get("head") is None else _relative_file(f"{where} head", raw["head"]),
        data=None if raw.get("data") is None else _relative_file(f"{where} data", raw["data"]),
        classes=_optional_classes(where, raw.get("classes")),
        finetuned_accuracy=_optional_accuracy(where, raw.get("finetuned_accuracy")),
        kind=_task_kind(where, raw.get("kind", DEFAULT_KIND)),
    )


def _parse_unmerged(raw) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(p, str) for p in raw):
        raise ZooError("zoo.json: 'unmerged' must be a list of regular expressions")
    for pattern in raw:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ZooError(f"zoo.json: unmerged pattern '{pattern}' is not a valid regex: {exc}") from exc
    return tuple(raw)


def parse_manifest(doc, default_name: str) -> Manifest:
    """Validate a loaded zoo.json document; every error names the key or task at fault."""
    if not isinstance(doc, dict):
        raise ZooError("zoo.json: expected a JSON object at the top level")
    _check_keys("zoo.json", doc, _TOP_REQUIRED, _TOP_OPTIONAL)
    if doc["format"] != FORMAT:
        raise ZooError(f"zoo.json: unsupported format {doc['format']!r} (expected '{FORMAT}')")
    arch = doc["architecture"]
    if not isinstance(arch, dict):
        raise ZooError("zoo.json: 'architecture' must be an object with 'kind' and 'config'")
    _check_keys("zoo.json: architecture", arch, _ARCH_KEYS, set())
    if not isinstance(arch["kind"], str) or not isinstance(arch["config"], dict):
        raise ZooError("zoo.json: architecture 'kind' must be a string and 'config' an object")
    head_input = doc.get("head_input", "raw")
    if head_input not in HEAD_INPUTS:
        raise ZooError(f"zoo.json: head_input {head_input!r} must be one of {', '.join(HEAD_INPUTS)}")
    recipe = doc.get("recipe", {}) or {}
    if not isinstance(recipe, dict):
        raise ZooError("zoo.json: 'recipe' must be an object")
    raw_tasks = doc["tasks"]
    if not isinstance(raw_tasks, list) or len(raw_tasks) < 2:
        count = len(raw_tasks) if isinstance(raw_tasks, list) else "no list of"
        raise ZooError(f"zoo.json: a zoo needs at least 2 tasks, found {count}")
    tasks = tuple(_parse_task(i, t) for i, t in enumerate(raw_tasks))
    seen: set[str] = set()
    for task in tasks:
        if task.name in seen:
            raise ZooError(f"zoo.json: duplicate task name '{task.name}'")
        seen.add(task.name)
    name = check_name(doc.get("name", default_name), "zoo name")
    return Manifest(name=name, architecture_kind=arch["kind"], architecture_config=arch["config"],
                    pretrained=_relative_file("zoo.json: pretrained", doc["pretrained"]),
                    head_input=head_input, tasks=tasks, recipe=recipe,
                    unmerged=_parse_unmerged(doc.get("unmerged", [])))


def read_manifest(root: Path) -> Manifest:
    """Load and validate `root/zoo.json`."""
    path = Path(root) / MANIFEST_NAME
    if not Path(root).is_dir():
        raise ZooError(f"{root}: zoo folder not found")
    if not path.is_file():
        raise ZooError(f"{path}: manifest not found (a zoo folder holds a {MANIFEST_NAME})")
    doc = read_json(path, "manifest")
    return parse_manifest(doc, default_name=Path(root).resolve().name)

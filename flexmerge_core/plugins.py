"""Named plug-ins of one type: built-ins registered at import, third-party ones from an entry point group.

Why one mechanism: architecture adapters and task kinds are the engine's two extension points, and
both need the same things: lookup by the name a manifest uses, a one-line error listing the known
names, and discovery of installed packages through Python entry points (read once, the first time a
name is unknown; a plug-in that fails to load is named in the error, never skipped silently).
"""
from __future__ import annotations

import importlib.metadata
from typing import Callable, Generic, TypeVar

from flexmerge_core.errors import InvalidArgumentError, ZooError

T = TypeVar("T")


class PluginRegistry(Generic[T]):
    """`what` names the plug-ins in errors ("architecture kind"); `group` is the entry point group."""

    def __init__(self, what: str, group: str, name_of: Callable[[T], str], check: Callable[[T], bool],
                 replace: bool):
        self.what, self.group, self._name_of, self._check, self._replace = what, group, name_of, check, replace
        self.items: dict[str, T] = {}
        self.entry_points_loaded = False

    def add(self, item) -> T:
        """Register `item` (a class is instantiated); refused when `check` fails, or, unless `replace`,
        when another item already holds its name."""
        if isinstance(item, type):
            item = item()
        if not self._check(item):
            raise InvalidArgumentError(f"{item!r} is not a valid {self.what} plug-in")
        name = self._name_of(item)
        known = self.items.get(name)
        if known is not None and known is not item and not self._replace:
            raise InvalidArgumentError(f"{self.what} '{name}' is already registered ({known!r})")
        self.items[name] = item
        return item

    def _load_entry_points(self) -> None:
        self.entry_points_loaded = True
        for point in importlib.metadata.entry_points(group=self.group):
            if point.name in self.items:
                continue
            try:
                self.add(point.load())
            except Exception as exc:   # a broken plug-in is named, whatever it raised
                raise ZooError(f"{self.what} entry point '{point.name}' ({point.value}) failed to load: "
                               f"{type(exc).__name__}: {exc}") from exc

    def get(self, name: str, where: str = "zoo.json") -> T:
        """The plug-in registered as `name`; ZooError listing the known names when there is none."""
        if name not in self.items and not self.entry_points_loaded:
            self._load_entry_points()
        if name not in self.items:
            raise ZooError(f"{where}: unknown {self.what} '{name}' (known: {', '.join(self.names())})")
        return self.items[name]

    def names(self) -> list[str]:
        """Every registered name (installed plug-ins included), sorted."""
        if not self.entry_points_loaded:
            self._load_entry_points()
        return sorted(self.items)

"""Where an output may be written: never onto, around or inside an input, never over a stranger's folder.

Why: outputs replace what is at their path (atomically, so completely). `zoo import SRC --out SRC`
replaced the source folder, `export --out ZOO/zoo.json` left the zoo unopenable, a non-empty
`--out` folder was deleted without a word, and a zoo named "../../x" wrote its export outside the
cache. Every writer asks here first, before anything is written, so the rule lives in one place.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Optional

from flexmerge_core.errors import InvalidArgumentError


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def check_apart(outputs: Iterable, inputs: Iterable, option: str = "--out") -> None:
    """Refuse when an output path is, contains or lies inside an input path (symlinks resolved, so an
    alias of an input is that input)."""
    wanted = [(Path(o), Path(o).resolve()) for o in outputs]
    for given in inputs:
        if given is None:
            continue
        source = Path(given).resolve()
        for out, resolved in wanted:
            if _overlaps(resolved, source):
                raise InvalidArgumentError(f"{option} {out}: overlaps the input {given} (an output replaces what is "
                                           f"at its path); choose a path outside the inputs")


def check_replaceable(folder, is_ours: Callable[[Path], bool], force: bool, option: str = "--out") -> None:
    """An existing folder is replaced only when it is empty, when `is_ours(folder)` says this tool wrote
    it, or with `force`: a user's folder of other files is never deleted by accident."""
    folder = Path(folder)
    if force or not folder.is_dir() or is_ours(folder):
        return
    if next(folder.iterdir(), None) is not None:
        raise InvalidArgumentError(f"{option} {folder}: folder exists, is not empty and was not written by "
                                   f"FlexMerge; choose another folder, or pass --force to replace it")


def child_path(folder, name: str, suffix: str = "", what: Optional[str] = None) -> Path:
    """`folder/name+suffix`, refusing any name that would leave `folder` (separators, '..', absolute)."""
    folder = Path(folder)
    path = folder / f"{name}{suffix}"
    if path.parent != folder or name in ("", ".", "..") or "\\" in name or "\x00" in name:
        raise InvalidArgumentError(f"{what or 'name'} {name!r} cannot be used in a file name inside {folder}")
    return path

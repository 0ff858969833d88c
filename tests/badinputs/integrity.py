"""Is every file under a final name complete? Used after each SIGKILL by the kill and concurrency tests.

Final names are the ones readers open: exports and their recipes (compared byte for byte with a
reference run: exports are deterministic), plan/eval JSON entries (their embedded checksum) and merged
group entries (the SHA-256 of their tensors). Temporary names (`.name.*.tmp`, hidden) are allowed to
hold anything: no reader ever opens them.
"""
from __future__ import annotations

import os
from pathlib import Path

from flexmerge_core.cache import read_checked_json
from flexmerge_core.deployment.group_cache import GroupResultCache


def is_temporary(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _files(root: Path) -> list[Path]:
    """Every file under root; tolerant of folders renamed or removed meanwhile by a running writer."""
    return [Path(folder) / name for folder, _, names in os.walk(root) for name in names]


def temporary_files(root: Path) -> list[Path]:
    return [p for p in _files(root) if is_temporary(p, root)]


def final_files(root: Path) -> list[Path]:
    return sorted(p for p in _files(root) if not is_temporary(p, root))


def incomplete_cache_entries(cache: Path) -> list[str]:
    """Visible cache entries that a reader would reject (the cache would rebuild them, but they must
    never be visible in the first place)."""
    bad = []
    for path in final_files(cache):
        if path.suffix == ".json":
            ok = read_checked_json(path) is not None
        elif path.suffix == ".safetensors":
            ok = GroupResultCache(path.parent).load(path.stem) is not None
        elif path.suffix == ".lock":
            ok = path.parent.name == "claims" and path.stat().st_size == 0   # job claims hold no data
        else:
            ok = False
        if not ok:
            bad.append(str(path))
    return bad


def differing_outputs(reference: dict[str, bytes], folder: Path) -> list[str]:
    """Output files that exist under their final name but differ from the reference run's bytes."""
    bad = []
    for name, expected in reference.items():
        path = Path(folder) / name
        if path.exists() and path.read_bytes() != expected:
            bad.append(str(path))
    return bad


def differing_folder(reference: Path, folder: Path) -> list[str]:
    """A folder published under its final name must hold exactly the reference's files and bytes."""
    if not Path(folder).exists():
        return []
    want = {p.relative_to(reference): p.read_bytes() for p in final_files(reference)}
    have = {p.relative_to(folder): p for p in final_files(folder)}
    if set(want) != set(have):
        return [f"{folder}: files {sorted(map(str, set(want) ^ set(have)))} differ from the reference"]
    return [str(have[name]) for name, data in want.items() if have[name].read_bytes() != data]

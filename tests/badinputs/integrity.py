"""Is every file under a final name complete? Used after each SIGKILL by the kill and concurrency tests.

Final names are the ones readers open: exports and their recipes (compared byte for byte with a
reference run: exports are deterministic), plan/eval JSON entries (their embedded checksum) and merged
group entries (the SHA-256 of their tensors). Temporary names (`.name.*.tmp`, hidden) are allowed to
hold anything: no reader ever opens them.
"""
from __future__ import annotations

from pathlib import Path

from flexmerge_core.cache import read_checked_json
from flexmerge_core.group_cache import GroupResultCache


def is_temporary(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def temporary_files(root: Path) -> list[Path]:
    return [p for p in Path(root).rglob("*") if p.is_file() and is_temporary(p, root)]


def final_files(root: Path) -> list[Path]:
    return sorted(p for p in Path(root).rglob("*") if p.is_file() and not is_temporary(p, root))


def incomplete_cache_entries(cache: Path) -> list[str]:
    """Visible cache entries that a reader would reject (the cache would rebuild them, but they must
    never be visible in the first place)."""
    bad = []
    for path in final_files(cache):
        if path.suffix == ".json":
            ok = read_checked_json(path) is not None
        elif path.suffix == ".safetensors":
            ok = GroupResultCache(path.parent).load(path.stem) is not None
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

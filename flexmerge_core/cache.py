"""On-disk cache and crash-safe file writing.

Why: every artifact (demo zoo, plans, merged groups, evaluation results, exports) must either be
complete under its final name or absent, so a killed process never leaves something that looks valid.
Writes go to a temporary name in the same folder and are renamed into place (atomic on POSIX).
Cache entries are keyed by content hashes of everything that determines them, and each entry carries
its key and a checksum: a corrupt entry, or a valid one found under another key's name (files
swapped or copied on disk), is a miss that is rebuilt, never trusted.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from flexmerge_core.errors import CacheError

REPO_ROOT = Path(__file__).resolve().parent.parent


CACHE_ENV = "FLEXMERGE_CACHE"


def cache_root() -> Path:
    """The cache folder: $FLEXMERGE_CACHE if set, else <repo>/cache. Set but empty is refused: it would
    mean the current folder, and the cache would spill into whatever folder the user stands in."""
    value = os.environ.get(CACHE_ENV)
    if value is None:
        return REPO_ROOT / "cache"
    if not value.strip():
        raise CacheError(f"{CACHE_ENV} is set but empty; unset it (cache in {REPO_ROOT / 'cache'}) or name a folder")
    return Path(value)


def content_hash(*parts: Any) -> str:
    """A stable hex digest of JSON-serialisable parts (dict keys sorted)."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp/mkdtemp create private (0600/0700) temporaries; what is published gets the modes an ordinary
# open()/mkdir() would give, so exports and zoos can be shared like any other file.
_FILE_MODE = 0o666 & ~_umask()
_DIR_MODE = 0o777 & ~_umask()


STALE_TEMPORARY_SECONDS = 3600.0
_swept_folders: set[Path] = set()


def _sweep_stale_temporaries(folder: Path) -> None:
    """Delete temporaries that a killed writer left behind (hidden `.NAME.*.tmp`, over an hour old).

    Why the age: a temporary that young may belong to a writer still running in another process.
    Done once per folder per process, so the hot write path does not list folders again and again.
    """
    if folder in _swept_folders:
        return
    _swept_folders.add(folder)
    cutoff = time.time() - STALE_TEMPORARY_SECONDS
    for leftover in folder.glob(".*.tmp"):
        try:
            if leftover.stat().st_mtime < cutoff:
                shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        except OSError:
            pass  # another process swept it first, or it is not ours to delete: harmless either way


def _ensure_dir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheError(f"cannot create folder {folder}: {exc.strerror}") from exc
    _sweep_stale_temporaries(folder)


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call write(tmp_path) on a temp file beside `path`, fsync it, then rename it to `path`."""
    atomic_write_all({Path(path): write})
    return Path(path)


def atomic_write_all(writes: dict[Path, Callable[[Path], None]]) -> None:
    """Several files published together, all or none: each is written (write(tmp_path)) and fsynced
    under a temporary name beside its final path; only then are they renamed into place, in order,
    and when anything fails those already renamed are removed again (an export is never its model
    without its recipe or head)."""
    staged: list[tuple[Path, Path]] = []
    published: list[Path] = []
    target = None
    try:
        for path, write in writes.items():
            target = path = Path(path)
            _ensure_dir(path.parent)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            staged.append((Path(tmp), path))
            write(Path(tmp))
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.chmod(tmp, _FILE_MODE)
        for tmp, path in staged:
            target = path
            os.replace(tmp, path)
            published.append(path)
    except BaseException as exc:
        for path in published:
            path.unlink(missing_ok=True)
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise CacheError(f"cannot write {target}: {exc.strerror or exc}") from exc
        raise


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def _checksum(key: str | None, payload: Any) -> str:
    body = json.dumps(payload if key is None else {"key": key, "payload": payload}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def atomic_write_json(path: Path, payload: Any, key: str | None = None) -> Path:
    """Write JSON with the key it is stored under and a checksum of both (checked by read_checked_json)."""
    wrapped = {"sha256": _checksum(key, payload), "payload": payload}
    if key is not None:
        wrapped["key"] = key
    return atomic_write_bytes(path, json.dumps(wrapped, sort_keys=True).encode())


def read_checked_json(path: Path, key: str | None = None) -> Any | None:
    """The payload written by atomic_write_json, or None when missing, corrupt, tampered with, or (when
    `key` is given) written for another key."""
    try:
        wrapped = json.loads(Path(path).read_text())
        payload, stored_key = wrapped["payload"], wrapped.get("key")
        if (key is not None and stored_key != key) or _checksum(stored_key, payload) != wrapped["sha256"]:
            return None
        return payload
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None


def atomic_directory(final: Path, build: Callable[[Path], None]) -> Path:
    """Build a whole folder under a temporary name beside `final`, then rename it into place.

    An existing `final` is replaced. A killed build leaves only a hidden temp folder, never `final`.
    """
    final = Path(final)
    _ensure_dir(final.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        build(tmp)
        os.chmod(tmp, _DIR_MODE)
        _publish_folder(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CacheError(f"cannot write {final}: {exc.strerror or exc}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _publish_folder(tmp: Path, final: Path) -> None:
    """Rename `tmp` to `final`; a non-empty `final` (there before, or just published by a concurrent
    process: no exists() check, so no check-then-act race) is swapped out first, then removed."""
    try:
        os.replace(tmp, final)
        return
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
    os.replace(final, old / final.name)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


class JsonCache:
    """A folder of checksummed JSON entries: get_or_compute(key, compute) -> payload."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def get(self, key: str) -> Any | None:
        return read_checked_json(self.path(key), key)

    def put(self, key: str, payload: Any) -> None:
        atomic_write_json(self.path(key), payload, key)

    def get_or_compute(self, key: str, compute: Callable[[], Any]) -> Any:
        found = self.get(key)
        if found is not None:
            return found
        value = compute()
        self.put(key, value)
        return value


def tensors_digest(tensors: dict) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of `tensors` in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        if t.numel():
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _entry_digest(tensors: dict, metadata: dict) -> str:
    return hashlib.sha256((tensors_digest(tensors) + json.dumps(metadata, sort_keys=True)).encode()).hexdigest()


def write_tensor_entry(path: Path, key: str, tensors: dict, metadata: dict | None = None) -> Path:
    """A safetensors cache entry carrying its key and a SHA-256 of its tensors and metadata."""
    from safetensors.torch import save_file

    meta = {**(metadata or {}), "key": key}
    meta["sha256"] = _entry_digest(tensors, meta)
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def read_tensor_entry(path: Path, key: str) -> tuple[dict, dict] | None:
    """(tensors, metadata) of an entry written by write_tensor_entry for `key`; None when missing, damaged,
    altered or written for another key (the key is checked before any tensor is read)."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
        if meta.get("key") != key:
            return None
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return None
    digest = meta.pop("sha256", None)
    return (tensors, meta) if digest == _entry_digest(tensors, meta) else None

"""On-disk cache and crash-safe file writing.

Why: every artifact (demo zoo, plans, merged groups, evaluation results, exports) must either be
complete under its final name or absent, so a killed process never leaves something that looks valid.
Writes go to a temporary name in the same folder and are renamed into place (atomic on POSIX).
Cache entries are keyed by content hashes of everything that determines them, and each JSON entry
carries a checksum of its payload so a corrupt entry is detected and rebuilt, never trusted.
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


def cache_root() -> Path:
    """The cache folder: $FLEXMERGE_CACHE if set, else <repo>/cache."""
    return Path(os.environ.get("FLEXMERGE_CACHE", REPO_ROOT / "cache"))


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
    path = Path(path)
    _ensure_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, _FILE_MODE)
        os.replace(tmp_path, path)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise CacheError(f"cannot write {path}: {exc.strerror or exc}") from exc
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_json(path: Path, payload: Any) -> Path:
    """Write JSON with an embedded checksum of the payload (checked by read_checked_json)."""
    body = json.dumps(payload, sort_keys=True)
    wrapped = {"sha256": hashlib.sha256(body.encode()).hexdigest(), "payload": payload}
    return atomic_write_bytes(path, json.dumps(wrapped, sort_keys=True).encode())


def read_checked_json(path: Path) -> Any | None:
    """The payload written by atomic_write_json, or None when missing, corrupt or tampered with."""
    try:
        wrapped = json.loads(Path(path).read_text())
        payload = wrapped["payload"]
        body = json.dumps(payload, sort_keys=True)
        if hashlib.sha256(body.encode()).hexdigest() != wrapped["sha256"]:
            return None
        return payload
    except (OSError, ValueError, KeyError, TypeError):
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
        return read_checked_json(self.path(key))

    def put(self, key: str, payload: Any) -> None:
        atomic_write_json(self.path(key), payload)

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

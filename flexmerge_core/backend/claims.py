"""Cross-process claims on jobs: two processes sharing a cache folder never run the same job at once.

Why a lock file per job key under <cache>/claims (fcntl.flock): the lock belongs to the open file, so
the operating system releases it the moment its holder exits or is killed; there is no stale claim to
detect, no timeout to tune and no process id to check. A second process waits on the claim, then finds
the result the first one stored and does not compute it again. Machines that share the cache over a
network file system get the same guarantee where that file system supports flock (NFSv4 does).
The lock files are empty and may be deleted whenever no sweep is running.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from typing import Iterator

from flexmerge_core.cache import cache_root
from flexmerge_core.errors import CacheError


@contextlib.contextmanager
def claim(key: str) -> Iterator[None]:
    """Hold the claim on job `key` (blocking while another process or thread holds it)."""
    folder = cache_root() / "claims"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = os.open(folder / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise CacheError(f"cannot create the job claim {folder / key}.lock: {exc.strerror}") from exc
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)   # closing the file releases the lock

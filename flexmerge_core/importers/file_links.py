"""Putting a user's file into a zoo folder without rewriting it: a hard link, else a copy.

Why: HuggingFace checkpoints are already safetensors (what a zoo holds), often gigabytes each; a hard
link costs nothing and keeps the zoo self-contained (its manifest names files inside it, and deleting
the source or the zoo leaves the other intact). Links only work within one filesystem (and some
filesystems refuse them), so any OSError falls back to a byte copy. A link shares the file with its
source: rewriting the source in place changes the zoo too, which the zoo's fingerprint (size, mtime)
notices, so no stale cache is ever used.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path


def link_or_copy(source: Path, target: Path) -> str:
    """Hard-link `source` (symlinks resolved, as in the HF cache) at `target`, else copy; returns "link"/"copy"."""
    source = Path(source).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
        return "link"
    except OSError:
        shutil.copyfile(source, target)
        return "copy"

"""Finding models and datasets named by HuggingFace id in the local HuggingFace cache, never downloading.

Why our own lookup: a zoo spec names `openai/clip-vit-base-patch32`; people have those files already
(the hub cache, or a folder they cloned), and an import must never reach the network. The cache layout
is `<hub>/models--owner--name/snapshots/<revision>/`, `refs/<branch>` holding the revision a branch
points at; `<hub>` is `HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub` (as the
hub library resolves it). `owner/name@rev` picks a branch, tag or revision; without it `refs/main`
does, or the only snapshot there is.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from flexmerge_core.errors import ZooError


def hub_cache() -> Path:
    """The HuggingFace hub cache folder this process would use."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "huggingface" / "hub"


def _snapshot(repo_dir: Path, revision: Optional[str]) -> Optional[Path]:
    snapshots = repo_dir / "snapshots"
    if not snapshots.is_dir():
        return None
    wanted = revision or "main"
    ref = repo_dir / "refs" / wanted
    if ref.is_file():
        return snapshots / ref.read_text().strip()
    if revision is not None:
        return snapshots / revision
    found = [p for p in snapshots.iterdir() if p.is_dir()]
    return found[0] if len(found) == 1 else None


def resolve_local(where: str, value: str, base: Path, kind: str = "model") -> Path:
    """A folder or file for `value`: a path (relative to `base`) when it exists, else an id in the hub cache.

    kind: "model" or "dataset" (the cache's `models--` / `datasets--` folders)."""
    if not isinstance(value, str) or not value.strip():
        raise ZooError(f"{where}: expected a path or a HuggingFace id, got {value!r}")
    path = (base / Path(value).expanduser())
    if path.exists():
        return path.resolve()
    repo, _, revision = value.partition("@")
    if repo.count("/") == 1 and not repo.startswith((".", "/")):
        repo_dir = hub_cache() / f"{kind}s--{repo.replace('/', '--')}"
        snapshot = _snapshot(repo_dir, revision or None)
        if snapshot is not None and snapshot.is_dir():
            return snapshot
        looked = f"{path} and {repo_dir}"
    else:
        looked = str(path)
    raise ZooError(f"{where}: '{value}' is not on disk (looked in {looked}); imports never download: "
                   f"fetch it first (e.g. `huggingface-cli download {repo}` for a hub id) or give a local path")

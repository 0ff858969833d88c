"""Where a demo zoo lives and how a build replaces it: recipe check, atomic publication, the report.

Why shared: both demo builders (vision, text) keep their zoo under cache/ with the recipe hash in its
manifest; a zoo is reused only when it opens, was built by the same recipe and carries its report
(written last), and a build appears complete or not at all.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from flexmerge_core.errors import FlexMergeError
from flexmerge_core.zoo.manifest import MANIFEST_NAME


def is_built(folder: Path, recipe_hash: str) -> bool:
    """True when `folder` holds a complete demo zoo (it opens, has a report) built by this recipe."""
    from flexmerge_core.zoo.loader import open_zoo

    try:
        recipe = open_zoo(folder).recipe
    except FlexMergeError:
        return False
    return recipe.get("hash") == recipe_hash and "report" in recipe


def publish(tmp: Path, staged: Path) -> None:
    """Move the files of the staged zoo up into the atomic_directory temp folder."""
    for entry in staged.iterdir():
        os.replace(entry, tmp / entry.name)
    staged.rmdir()


def update_manifest(folder: Path, recipe: dict | None = None, finetuned: dict[str, float] | None = None) -> None:
    """Merge `recipe` into the manifest's recipe and set tasks' `finetuned_accuracy` (by task name)."""
    path = folder / MANIFEST_NAME
    doc = json.loads(path.read_text())
    doc["recipe"] = {**doc.get("recipe", {}), **(recipe or {})}
    for task in doc["tasks"]:
        if finetuned and task["name"] in finetuned:
            task["finetuned_accuracy"] = float(finetuned[task["name"]])
    path.write_text(json.dumps(doc, indent=2) + "\n")

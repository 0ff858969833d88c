"""The one orchestration path: zoo -> blocks -> plan -> merger -> curve / export.

Why one place: the command line, the dashboard's facade (studio.py) and the benchmarks all need the
same chain of steps, wired the same way (memory guard before loading, cached plans, the shared group
merger); when each wired it itself they drifted apart. Embedded demo names ("demo") are resolved here,
above the zoo format, so the zoo loader never builds anything.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

from flexmerge_core.errors import InvalidArgumentError
from flexmerge_core.zoo import Zoo, open_zoo

Progress = Optional[Callable[[int, int, str], None]]
DEMO_ZOOS = ("demo",)


def resolve_zoo(name_or_path, progress: Progress = None) -> Zoo:
    """Open a zoo folder, or an embedded demo by name (built offline on first use, with progress)."""
    if isinstance(name_or_path, str) and name_or_path == "demo":
        from flexmerge_core.demo.vision import ensure_demo_zoo

        return open_zoo(ensure_demo_zoo(progress=progress))
    return open_zoo(name_or_path)


def reproduce_export(recipe_file, out, progress=None) -> dict:
    """Re-create an export from its recipe JSON; refuses when the zoo's files changed since."""
    from flexmerge_core.algorithms import get_algorithm
    from flexmerge_core.deployment.export import RECIPE_FORMAT, export
    from flexmerge_core.planning.blocks import build_blocks
    from flexmerge_core.planning.plan_cache import cached_plan

    recipe_file = Path(recipe_file)
    try:
        recipe = json.loads(recipe_file.read_text())
        if recipe.get("format") != RECIPE_FORMAT:
            raise ValueError(f"format {recipe.get('format')!r}")
        zoo = resolve_zoo(recipe["zoo_path"])
        if recipe["tasks"] != zoo.task_names:
            zoo = zoo.subset(recipe["tasks"])
        algorithm = get_algorithm(recipe["algorithm"], **recipe["hyperparameters"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidArgumentError(f"{recipe_file}: not a FlexMerge export recipe ({exc})") from exc
    if zoo.fingerprint != recipe["zoo_fingerprint"]:
        raise InvalidArgumentError(f"{recipe_file}: zoo {recipe['zoo_path']} changed since the export "
                                   f"(fingerprint {zoo.fingerprint} != {recipe['zoo_fingerprint']})")
    spec = build_blocks(zoo.param_names, zoo.param_shapes, granularity=recipe["granularity"])
    plan = cached_plan(zoo, spec, algorithm, linkage=recipe["linkage"], order=recipe["order"], seed=recipe["seed"],
                       progress=progress)
    return export(zoo, spec, plan, algorithm, recipe["budget"], out, task=recipe["task"], zoo_path=recipe["zoo_path"])

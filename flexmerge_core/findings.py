"""The paper's five findings, reproduced on an open zoo: the plans and curves each one needs, judged
by evaluation/verdicts.py.

Why here (the pipeline's stage): a finding compares plans (algorithms, baselines, merge orders,
linkages), so it builds several Pipelines; every curve goes through the same incremental, cached
machinery as the CLI and the app, so a second run (or the app after the CLI) evaluates nothing.
The default algorithm's curve is evaluated once on every budget any finding needs and shared.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

from flexmerge_core.deployment.group_bases import GroupBases
from flexmerge_core.deployment.prepared_rows import PreparedRows
from flexmerge_core.errors import InvalidArgumentError
from flexmerge_core.evaluation.paired import ALPHA
from flexmerge_core.evaluation.verdicts import gain_finding, rank_finding, versus_finding
from flexmerge_core.pipeline import DEFAULT_ALGORITHM, Pipeline, PlanSettings
from flexmerge_core.planning.baselines import CHANNEL_ALGORITHMS
from flexmerge_core.zoo import Zoo

Progress = Optional[Callable[[int, int, str], None]]
DEFAULT_ALGORITHMS = ("ta", "ties", "emr")   # the baseline, its trimmed form, a mask method
GRID_STEP = 0.5                              # rankings every half model, as on the Compare page
BASELINE_LABELS = {"channel-merging": "Channel Merging", "whole-model": "whole-model clustering"}
OTHER_ORDERS = ("left-to-right", "right-to-left", "random")
OTHER_LINKAGES = ("max", "avg")


def _grid(num_tasks: int) -> list[float]:
    steps = int(round((num_tasks - 1) / GRID_STEP))
    return [1.0 + GRID_STEP * i for i in range(steps + 1)]


def check_options(algorithms: Sequence[str], algorithm: str, alpha: float) -> list[str]:
    """The distinct algorithm names, after checking every option (before a zoo is opened or built)."""
    names = list(dict.fromkeys(algorithms))
    if len(names) < 2:
        raise InvalidArgumentError(f"findings compare at least two algorithms, got {names}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise InvalidArgumentError(f"alpha must be a number in (0, 1), got {alpha!r}")
    if algorithm not in CHANNEL_ALGORITHMS:
        raise InvalidArgumentError(f"the findings' algorithm must be one of {', '.join(CHANNEL_ALGORITHMS)} "
                                   f"(Channel Merging merges with those), got {algorithm!r}")
    for name in [algorithm] + names:
        PlanSettings(name).make_algorithm()   # an unknown name is an InvalidArgumentError naming it
    return names


def reproduce_findings(zoo: Zoo, algorithms: Sequence[str] = DEFAULT_ALGORITHMS, algorithm: str = DEFAULT_ALGORITHM,
                       alpha: float = ALPHA, progress: Progress = None) -> dict:
    """Every finding on `zoo` (all its tasks, default plan settings): (a) the gain from 1x to 2x with
    `algorithm`; (b) rank changes among `algorithms` every 0.5x from 1x to Mx; (c) FlexMerge with
    `algorithm` vs Channel Merging and whole-model clustering, (d) greedy vs the other merge orders,
    (e) min vs max and average linkage, each at the integer sizes 1..M."""
    names = check_options(algorithms, algorithm, alpha)
    if len(zoo.task_names) < 2:
        raise InvalidArgumentError(f"zoo '{zoo.name}' has {len(zoo.task_names)} task: nothing to merge")
    integers = [float(k) for k in range(1, len(zoo.task_names) + 1)]
    grid = _grid(len(zoo.task_names))
    plans: list[tuple[tuple[str, str], PlanSettings, list[float]]] = [
        (("algorithm", algorithm), PlanSettings(algorithm), sorted(set(grid) | set(integers) | {1.0, 2.0}))]
    plans += [(("algorithm", name), PlanSettings(name), grid) for name in names if name != algorithm]
    plans += [(("baseline", kind), PlanSettings(algorithm, granularity="parameter", baseline=kind), integers)
              for kind in BASELINE_LABELS]
    plans += [(("order", order), PlanSettings(algorithm, order=order), integers) for order in OTHER_ORDERS]
    plans += [(("linkage", linkage), PlanSettings(algorithm, linkage=linkage), integers) for linkage in OTHER_LINKAGES]
    curves, rows, bases = {}, PreparedRows(), GroupBases()   # one zoo: every plan's merger shares rows and bases
    for i, (key, settings, budgets) in enumerate(plans):
        step = None if progress is None else (
            lambda done, total, message, head=f"plan {i + 1}/{len(plans)} ({' '.join(key)})":
            progress(done, total, f"{head}: {message}"))
        pipeline = Pipeline(zoo, settings, progress=step, deploy_size="all", rows=rows, bases=bases)
        curves[key] = pipeline.curve(budgets, progress=step)
    main = curves[("algorithm", algorithm)]
    findings = [
        gain_finding(main, algorithm, 1.0, 2.0, alpha),
        rank_finding({name: curves[("algorithm", name)] for name in names}, grid, alpha),
        versus_finding("vs_baselines", "FlexMerge vs Channel Merging and whole-model clustering",
                       "At equal size FlexMerge is at least as accurate as Channel Merging and whole-model clustering.",
                       f"FlexMerge ({algorithm})", main,
                       {label: curves[("baseline", kind)] for kind, label in BASELINE_LABELS.items()}, integers, alpha),
        versus_finding("merge_order", "Greedy merge order vs fixed and random orders",
                       "Merging the most similar block groups first (greedy) beats fixed and random orders.",
                       "greedy", main, {o: curves[("order", o)] for o in OTHER_ORDERS}, integers, alpha),
        versus_finding("linkage", "Min linkage vs max and average linkage",
                       "Min linkage (a group's similarity is its least similar pair) beats max and average linkage.",
                       "min", main, {lk: curves[("linkage", lk)] for lk in OTHER_LINKAGES}, integers, alpha),
    ]
    return {"zoo": zoo.name, "tasks": list(zoo.task_names), "algorithm": algorithm, "algorithms": names,
            "alpha": alpha, "confidence": 0.95, "metric": main.rows[0]["metric"],
            "higher_is_better": main.rows[0]["higher_is_better"], "finetuned": main.finetuned, "findings": findings}

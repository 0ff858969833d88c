"""Sweeps: every (algorithm or baseline, size) cell of a zoo evaluated as jobs, gathered into one tidy table.

Why jobs per cell: once the plans exist, the cells are independent, so they spread over worker processes
or a Ray cluster; each cell's job key hashes the evaluation cache keys of its tasks (the same hashes the
serial curve uses), so a cell known to any earlier run (CLI curve, app, sweep) is not evaluated again.
Why parts: each finished cell is written at once as a small checksummed JSON file under `<out>.parts/`,
so a sweep that is killed and run again redoes only the missing cells; the table is assembled from the
parts and published atomically, then the parts are removed.
Order of work: plans first (the cells need them), then the all-separate cell (every task's fine-tuned
score, which every other cell reads as its reference), then the rest.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from flexmerge_core.backend.executors import Executor, InlineExecutor
from flexmerge_core.backend.jobs import Job, Outcome
from flexmerge_core.cache import atomic_write, atomic_write_json, content_hash, read_checked_json
from flexmerge_core.errors import ZooError
from flexmerge_core.pipeline import Pipeline, PlanSettings, Progress, resolve_zoo

COLUMNS = ["algorithm", "hyperparameters", "baseline", "size_budget", "size", "task", "metric", "value", "n"]
CELL_FORMAT = "flexmerge-cell/1"
_slot: dict = {}   # the last Pipeline this process built for a job: consecutive jobs mostly share one


def _pipeline(zoo_path: str, fingerprint: str, settings: PlanSettings) -> Pipeline:
    """The worker's Pipeline for these settings, built once and replaced (not accumulated) when they change."""
    if _slot.get("key") != (zoo_path, fingerprint, settings):
        _slot.clear()
        zoo = resolve_zoo(zoo_path)
        if zoo.fingerprint != fingerprint:
            raise ZooError(f"{zoo_path}: the zoo's files changed while the sweep ran (fingerprint "
                           f"{zoo.fingerprint} != {fingerprint}); run the sweep again")
        _slot.update(key=(zoo_path, fingerprint, settings), pipeline=Pipeline(zoo, settings))
    return _slot["pipeline"]


def plan_sizes(zoo_path: str, fingerprint: str, settings: PlanSettings) -> dict:
    """Job: build (and cache) the plan of `settings`."""
    return {"sizes": _pipeline(zoo_path, fingerprint, settings).plan.achievable_sizes()}


def evaluate_cell(zoo_path: str, fingerprint: str, settings: PlanSettings, budget: float) -> dict:
    """Job: every task's score at one size (through the cached curve machinery)."""
    row = _pipeline(zoo_path, fingerprint, settings).curve([budget]).rows[0]
    return {"tasks": [{"task": task, "metric": row["metric"][task], "value": value, "n": row["n"][task]}
                      for task, value in row["accuracy"].items()]}


def plan_job(zoo_path: str, zoo, settings: PlanSettings) -> Job:
    """The job that builds a plan, keyed by the plan cache's own key."""
    from flexmerge_core.planning.blocks import build_blocks
    from flexmerge_core.planning.plan_cache import baseline_cache_key, plan_cache_key

    fingerprint = zoo.fingerprint
    zoo = zoo.subset(list(settings.tasks)) if settings.tasks else zoo
    spec = build_blocks(zoo.param_names, zoo.param_shapes, settings.block_granularity())
    algorithm = settings.make_algorithm()
    if settings.baseline is None:
        plan_key = plan_cache_key(zoo, spec, algorithm, settings.linkage, settings.order, settings.seed)
    else:
        plan_key = baseline_cache_key(zoo, spec, algorithm, settings.baseline, settings.linkage, settings.seed)
    return Job(content_hash("job:plan", plan_key), plan_sizes, (zoo_path, fingerprint, settings),
               label=f"plan {settings_label(settings)}")


def cell_job(zoo_path: str, fingerprint: str, pipeline: Pipeline, budget: float) -> Job:
    """The job of one cell, keyed by its tasks' evaluation cache keys (equal keys: equal scores)."""
    from flexmerge_core.evaluation.curve import partition_eval_keys

    zoo = pipeline.zoo
    keys = partition_eval_keys(zoo, pipeline.spec, pipeline.algorithm, pipeline.plan.partition_at(budget),
                               range(len(zoo.task_names)))
    return Job(content_hash("job:cell", CELL_FORMAT, list(keys.values())), evaluate_cell,
               (zoo_path, fingerprint, pipeline.settings, float(budget)),
               label=f"cell {settings_label(pipeline.settings)} @{budget:g}", gpu=True)


def settings_label(settings: PlanSettings) -> str:
    return settings.algorithm + (f"/{settings.baseline}" if settings.baseline else "")


def sweep_settings(algorithms: Sequence[str], baselines: Sequence[str] = (), tasks: Sequence[str] = ()) -> list:
    """FlexMerge's plan for every algorithm, then each baseline with every algorithm."""
    tasks = tuple(tasks)
    return ([PlanSettings(algorithm=a, tasks=tasks) for a in algorithms]
            + [PlanSettings(algorithm=a, tasks=tasks, baseline=b) for b in baselines for a in algorithms])


@dataclass
class Cell:
    pipeline: Pipeline
    budget: float
    size: float
    all_separate: bool
    job: Job
    part: Optional[Path]
    rows: Optional[list] = None


@dataclass
class SweepResult:
    table: object                    # pandas.DataFrame with COLUMNS
    stats: dict = field(default_factory=dict)


def _cell_rows(cell: Cell, result: dict) -> list[dict]:
    settings, algorithm = cell.pipeline.settings, cell.pipeline.algorithm
    return [{"algorithm": settings.algorithm, "hyperparameters": json.dumps(algorithm.hyperparameters, sort_keys=True),
             "baseline": settings.baseline, "size_budget": cell.budget, "size": cell.size, "task": entry["task"],
             "metric": entry["metric"], "value": entry["value"], "n": entry["n"]} for entry in result["tasks"]]


def _part_path(parts: Optional[Path], fingerprint: str, settings: PlanSettings, budget: float) -> Optional[Path]:
    if parts is None:
        return None
    return parts / f"{content_hash(CELL_FORMAT, fingerprint, dataclasses.astuple(settings), budget)}.json"


class _Tracker:
    """Runs waves of jobs on the executor, counting what was computed and where, and reporting progress."""

    def __init__(self, executor: Executor, total: int, progress: Progress, on_outcome):
        self.executor, self.total, self.progress, self.on_outcome = executor, total, progress, on_outcome
        self.done = 0
        self.computed: set[str] = set()
        self.nodes: set[str] = set()

    def run(self, items: list, job_of: Callable, finish: Callable) -> None:
        """Submit job_of(item) for every item; call finish(item, outcome) as each completes."""
        pending: dict[Future, list] = {}
        for item in items:
            pending.setdefault(self.executor.submit(job_of(item)), []).append(item)
        while pending:
            finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for future in finished:
                outcome: Outcome = future.result()   # a failed job ends the sweep with its error
                if outcome.computed and outcome.key not in self.computed:
                    self.computed.add(outcome.key)
                    self.nodes.add(outcome.node)
                if self.on_outcome:
                    self.on_outcome(outcome)
                for item in pending.pop(future):
                    finish(item, outcome)
                    self.step(getattr(item, "job", None))

    def step(self, job: Optional[Job] = None) -> None:
        self.done += 1
        if self.progress:
            self.progress(self.done, self.total, job.label if job else "")


def run_sweep(zoo, algorithms: Sequence[str], sizes="all", baselines: Sequence[str] = (), tasks: Sequence[str] = (),
              executor: Optional[Executor] = None, out=None, progress: Progress = None,
              on_outcome: Optional[Callable[[Outcome], None]] = None) -> SweepResult:
    """Evaluate every cell; the table (COLUMNS) is written to `out` (parquet, atomically) when given.

    zoo: a Zoo, a zoo folder or 'demo'; workers open it by its resolved path, which every node must see.
    executor: default InlineExecutor (this process). on_outcome(outcome) is called as each job finishes.
    """
    from flexmerge_core.evaluation.curve import requested_budgets

    zoo = resolve_zoo(zoo) if isinstance(zoo, (str, Path)) else zoo
    zoo_path, fingerprint = str(Path(zoo.root).resolve()), zoo.fingerprint
    executor = executor or InlineExecutor()
    settings_list = sweep_settings(algorithms, baselines, tasks)
    for settings in settings_list:
        settings.make_algorithm()   # unknown names and options fail before any work
    parts = Path(f"{out}.parts") if out is not None else None
    tracker = _Tracker(executor, len(settings_list), progress, on_outcome)
    tracker.run(settings_list, lambda s: plan_job(zoo_path, zoo, s), lambda item, outcome: None)

    cells: list[Cell] = []
    for settings in settings_list:
        pipeline = Pipeline(zoo, settings)   # the plan comes from the cache the plan job filled
        for budget in sorted(requested_budgets(pipeline.plan, sizes)):
            partition = pipeline.plan.partition_at(budget)
            part = _part_path(parts, fingerprint, settings, float(budget))
            cells.append(Cell(pipeline, float(budget), partition.size, partition.num_events == 0,
                              cell_job(zoo_path, fingerprint, pipeline, budget), part))
    tracker.total += len(cells)
    resumed = 0
    for cell in cells:
        found = read_checked_json(cell.part) if cell.part is not None else None
        if found is not None:
            cell.rows, resumed = found, resumed + 1
            tracker.step(cell.job)

    def finish(cell: Cell, outcome: Outcome) -> None:
        cell.rows = _cell_rows(cell, outcome.result)
        if cell.part is not None:
            atomic_write_json(cell.part, cell.rows)

    missing = [c for c in cells if c.rows is None]
    tracker.run([c for c in missing if c.all_separate], lambda c: c.job, finish)
    tracker.run([c for c in missing if not c.all_separate], lambda c: c.job, finish)
    table = _table([row for cell in cells for row in cell.rows])
    if out is not None:
        atomic_write(Path(out), lambda tmp: table.to_parquet(tmp, index=False))
        shutil.rmtree(parts, ignore_errors=True)
    stats = {"cells": len(cells), "resumed": resumed, "jobs_computed": len(tracker.computed),
             "executor": executor.name, "workers": executor.workers, "nodes": sorted(tracker.nodes)}
    return SweepResult(table, stats)


def _table(rows: list[dict]):
    import pandas as pd

    table = pd.DataFrame(rows, columns=COLUMNS)
    return table.astype({"size_budget": "float64", "size": "float64", "value": "float64", "n": "int64"})

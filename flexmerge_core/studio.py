"""A thin facade over the engine for interactive front ends (the Streamlit dashboard).

Why: a dashboard asks the same questions again and again (the partition, accuracies and charts at a
size, for one set of plan settings) and must answer known ones instantly. This module drives the
engine through the one orchestration path (pipeline.Pipeline: plans, merger, curves, exports; baselines
too) and memoises what it answers per settings in memory (the engine's on-disk cache keeps results
across restarts).
It adds no math and imports no UI library; long work reports through `progress(done, total, msg)`.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from flexmerge_core.algorithms import ALGORITHM_NAMES, HyperParam, get_algorithm
from flexmerge_core.cache import cache_root, content_hash
from flexmerge_core.deployment.footprint import megabytes
from flexmerge_core.deployment.group_bases import GroupBases
from flexmerge_core.deployment.prepared_rows import PreparedRows
from flexmerge_core.errors import InvalidArgumentError
from flexmerge_core.outputs import child_path
from flexmerge_core.evaluation.paired import ALPHA
from flexmerge_core.pipeline import DEFAULT_ALGORITHM, Pipeline, PlanSettings, finetuned_scores, resolve_zoo
from flexmerge_core.planning.blocks import DEFAULT_GRANULARITY, PRESETS, build_blocks
from flexmerge_core.planning.plan import MergePlan, Partition
from flexmerge_core.zoo import Zoo
from flexmerge_core.zoo.summary import source_format

Progress = Callable[[int, int, str], None]
# the presets in the dashboard's order, default first (custom rules need a rules file)
GRANULARITIES = (DEFAULT_GRANULARITY,) + tuple(g for g in PRESETS if g != DEFAULT_GRANULARITY)
PlanChoice = PlanSettings   # the dashboard's name for the settings of one plan


def open_studio_zoo(spec: str, progress: Optional[Progress] = None) -> Zoo:
    """Open a zoo folder, or "demo" (built offline on first use, with progress)."""
    return resolve_zoo(spec, progress)


def algorithm_names() -> tuple[str, ...]:
    return tuple(ALGORITHM_NAMES)


def algorithm_options(name: str) -> tuple[HyperParam, ...]:
    """The declared hyperparameters (with paper defaults) of one algorithm."""
    return tuple(type(get_algorithm(name)).params)


@dataclass(frozen=True)
class ZooSummary:
    name: str
    root: str
    tasks: list[str]
    metrics: dict[str, str]              # task -> its task kind's metric name
    merged_params: int
    num_blocks: int
    model_megabytes: float
    source: Optional[str] = None         # the format the zoo came from (zoo/summary.py source_format)
    architecture: str = ""


@dataclass(frozen=True)
class PartitionView:
    """What the size slider shows: budget asked vs size achieved, groups per block, megabytes."""

    budget: float
    size: float
    budget_met: bool
    num_events: int
    cluster_counts: list[int]
    megabytes: float
    partition: Partition = field(repr=False, compare=False)


def model_bytes(zoo: Zoo) -> int:
    """Bytes of one model's merged parameters at their stored dtypes (heads excluded)."""
    total = 0
    for name in zoo.param_names:
        numel = int(np.prod(zoo.param_shapes[name], dtype=np.int64))
        total += numel * zoo.param_dtypes[name].itemsize
    return total


def summarize_zoo(zoo: Zoo, granularity: str = DEFAULT_GRANULARITY) -> ZooSummary:
    spec = build_blocks(zoo.param_names, zoo.param_shapes, granularity=granularity)
    return ZooSummary(name=zoo.name, root=str(zoo.root), tasks=list(zoo.task_names),
                      merged_params=int(spec.total_params),
                      metrics={name: zoo.task_kind(t).metric for t, name in enumerate(zoo.task_names)},
                      num_blocks=len(spec.blocks), model_megabytes=model_bytes(zoo) / 1e6,
                      source=source_format(zoo.recipe), architecture=zoo.manifest.architecture_kind)


class Explorer:
    """One plan (zoo subset + algorithm + granularity/linkage/order) and everything derived from it."""

    def __init__(self, zoo: Zoo, choice: PlanChoice, progress: Optional[Progress] = None, rows=None, bases=None):
        self.choice = choice
        self.pipeline = Pipeline(zoo, choice, progress=progress, rows=rows, bases=bases)
        self.zoo, self.algorithm, self.spec = self.pipeline.zoo, self.pipeline.algorithm, self.pipeline.spec
        self.plan: MergePlan = self.pipeline.plan    # a baseline's ClusteringPlan when choice.baseline is set
        self.plan.achievable_sizes()   # the app needs the whole plan: built here, where pages report its errors
        self.footprint = self.pipeline.footprint()     # exact bytes of any partition, at the zoo's dtypes
        self._counts: Optional[dict[str, int]] = None  # held-out examples per task (interval widths)
        self._lock = threading.RLock()
        self._rows: dict[int, dict] = {}            # num_events -> curve row
        self._scores: dict[int, dict] = {}          # num_events -> {task: TaskScore} (paired tests)
        self._similarities: Optional[np.ndarray] = None
        self._finetuned: Optional[dict[str, float]] = None

    @property
    def task_names(self) -> list[str]:
        return list(self.zoo.task_names)

    @property
    def block_names(self) -> list[str]:
        return list(self.plan.blocks)

    def grid(self, step: float = 0.5) -> list[float]:
        """Budgets for an overview curve: the smallest achievable size, then every `step` up to M."""
        low, high = self.plan.min_size, self.plan.max_size
        budgets = [low] + [k * step for k in range(int(np.ceil(low / step)), int(high / step) + 1) if k * step > low]
        return budgets if budgets[-1] == high else budgets + [high]

    def partition(self, budget: float) -> PartitionView:
        part = self.plan.partition_at(budget)
        return PartitionView(budget=float(budget), size=part.size, budget_met=part.budget_met,
                             num_events=part.num_events, cluster_counts=[len(g) for g in part.groups],
                             megabytes=megabytes(self.footprint.partition_bytes(part)), partition=part)

    def budget_for_megabytes(self, mb: float) -> float:
        """The size budget (model units) of the largest deployment of at most `mb` MB."""
        return self.pipeline.budget_for_megabytes(mb)

    def recommendation(self, rows: list[dict]) -> Optional[dict]:
        """The knee of these curve rows (where more size stops buying much accuracy, or normalised score
        for other metrics; None if there is none), with its `bytes`, `megabytes` and the 95% interval of its average accuracy (`ci_low`,
        `ci_high`, `n`: held-out examples per task)."""
        from flexmerge_core.evaluation.intervals import example_counts, with_interval
        from flexmerge_core.evaluation.recommend import knee

        # other metrics (errors: lower is better) bend the other way: their knee is on normalised scores
        key = "avg_accuracy" if all(m == "accuracy" for r in rows for m in r.get("metric", {}).values()) \
            else "avg_normalized_accuracy"
        proxies = [{**r, "avg_accuracy": r[key]} for r in rows]
        picked = knee(proxies)
        if picked is None:
            return None
        row = rows[next(i for i, p in enumerate(proxies) if p is picked)]
        with self._lock:
            if self._counts is None and "n" not in row:
                self._counts = example_counts(self.zoo)
        return with_interval(self.pipeline.with_bytes([row])[0], self._counts)

    def groups_by_step(self) -> np.ndarray:
        """[B, E+1]: groups of each block after the first e merge events (the merge-order heatmap)."""
        counts = np.full((len(self.plan.blocks), len(self.plan.events) + 1), self.plan.num_tasks, dtype=int)
        for event in self.plan.events:
            counts[event.block, event.step + 1:] -= 1
        return counts

    def similarity(self, block_index: int) -> np.ndarray:
        """The M x M cosine similarity matrix the plan was built from, for one block."""
        from flexmerge_core.planning.similarity import block_similarities

        with self._lock:
            if self._similarities is None:
                self._similarities = block_similarities(self.zoo, self.spec, self.algorithm)
        return self._similarities[block_index]

    def recipe(self, budget: float) -> dict:
        """What a deployment at this budget is made of (the engine's recipe, also written on export)."""
        from flexmerge_core.deployment.deploy import deployment_recipe

        part = self.plan.partition_at(budget)
        return deployment_recipe(self.zoo, self.spec, self.plan, self.algorithm, part.budget, part.size)

    def stored_megabytes(self, budget: float, dtype: Optional[str] = None) -> float:
        """MB of the merged-parameter tensors the deployment at `budget` stores in `dtype` (None: the zoo's)."""
        return megabytes(self.pipeline.footprint(dtype).budget_bytes(self.plan, budget))

    def export_file(self, budget: float, task: Optional[str] = None, zoo_spec: Optional[str] = None,
                    dtype: Optional[str] = None) -> Path:
        """Write the deployment at `budget` (or one task's standalone model, in `dtype`) with its recipe
        beside it, under <cache>/exports/<key>/; an export that is already there is reused."""
        from flexmerge_core.deployment.export import recipe_path
        from flexmerge_core.resources import check_memory

        part = self.plan.partition_at(budget)
        check_memory(self.zoo, budget, self.spec)
        key = content_hash("export", self.zoo.fingerprint, self.task_names, repr(self.choice), part.num_events, task,
                           *([dtype] if dtype else []))   # no dtype: the key exports had before dtypes existed
        name = (f"{self.zoo.name}-{self.algorithm.name}-{part.size:.3f}x" + (f"-{task}" if task else "")
                + (f"-{dtype}" if dtype else ""))
        out = child_path(cache_root() / "exports" / key, name, ".safetensors", what="export named after the zoo")
        with self._lock:
            if not (out.exists() and recipe_path(out).exists()):
                self.pipeline.export(budget, out, task=task, zoo_path=zoo_spec, dtype=dtype)
        return out

    def known(self, budget: float) -> bool:
        """Whether the accuracies at this budget are already computed (instant)."""
        return self.plan.partition_at(budget).num_events in self._rows

    def curve(self, budgets: Sequence[float], progress: Optional[Progress] = None) -> list[dict]:
        """Curve rows (docs/ARCHITECTURE.md's JSON) at these budgets; each distinct partition is evaluated once."""
        from flexmerge_core.resources import check_memory

        with self._lock:
            wanted = {}
            for budget in budgets:
                wanted.setdefault(self.plan.partition_at(budget).num_events, float(budget))
            missing = [b for e, b in wanted.items() if e not in self._rows]
            if missing:
                check_memory(self.zoo, "all", self.spec)   # a curve starts from all M models kept
                result = self.pipeline.curve(missing, progress=progress)
                self._finetuned = result.finetuned
                for row in result.rows:
                    events = self.plan.partition_at(row["size_budget"]).num_events
                    self._rows[events], self._scores[events] = row, result.scores[row["size_budget"]]
            return [{**self._rows[self.plan.partition_at(b).num_events], "size_budget": float(b)} for b in budgets]

    def example_scores(self, budget: float, progress: Optional[Progress] = None) -> dict:
        """{task: TaskScore}: the per-example scores of the deployment at `budget` (for paired tests)."""
        with self._lock:
            self.curve([budget], progress=progress)
            return self._scores[self.plan.partition_at(budget).num_events]

    def merger(self):
        """The plan's memoised group merger (shared by curves and exports; on-disk group cache)."""
        return self.pipeline.merger()

    def finetuned(self, progress: Optional[Progress] = None) -> dict[str, float]:
        """Each task's fine-tuned score, measured through the engine (cached), for the reference lines."""
        if self._finetuned is not None:   # known: answered without waiting for an evaluation holding the lock
            return self._finetuned
        with self._lock:
            if self._finetuned is None:
                self._finetuned = finetuned_scores(self.zoo, progress=progress)
            return self._finetuned

    def known_row(self, budget: float) -> Optional[dict]:
        """The curve row at this budget if it is computed, else None; never waits for a running evaluation
        (front ends draw what is known while the rest is evaluated in the background)."""
        row = self._rows.get(self.plan.partition_at(budget).num_events)
        return None if row is None else {**row, "size_budget": float(budget)}

    def row_at(self, budget: float, progress: Optional[Progress] = None) -> dict:
        return self.curve([budget], progress=progress)[0]

    def known_rows(self) -> list[dict]:
        """Every curve row computed so far, by size."""
        return sorted(self._rows.values(), key=lambda r: r["size"])


class Studio:
    """One opened zoo and the explorers built on it, memoised by their settings."""

    def __init__(self, zoo: Zoo):
        self.zoo = zoo
        self.rows = PreparedRows()   # every explorer's merger shares the zoo's preprocessed rows (Compare)
        self.bases = GroupBases()    # and its groups' bases (ta and consensus_ta: each group's mean once)
        self._explorers: dict[PlanChoice, Explorer] = {}
        self._finetuned: Optional[dict[str, float]] = None
        self._findings: dict[tuple[str, ...], dict] = {}
        self._lock = threading.RLock()

    def summary(self, granularity: str = DEFAULT_GRANULARITY) -> ZooSummary:
        return summarize_zoo(self.zoo, granularity)

    def explorer(self, choice: PlanChoice, progress: Optional[Progress] = None) -> Explorer:
        unknown = sorted(set(choice.tasks) - set(self.zoo.task_names))
        if unknown:
            raise InvalidArgumentError(f"unknown task(s) {', '.join(unknown)} in zoo {self.zoo.name}")
        with self._lock:
            if choice not in self._explorers:
                self._explorers[choice] = Explorer(self.zoo, choice, progress, rows=self.rows, bases=self.bases)
            return self._explorers[choice]

    def finetuned(self, progress: Optional[Progress] = None) -> dict[str, float]:
        """Each task's fine-tuned score on its held-out data, measured through the engine (cached on disk)."""
        with self._lock:
            if self._finetuned is None:
                self._finetuned = finetuned_scores(self.zoo, progress=progress)
            return self._finetuned

    def rank_at(self, choices: Mapping[str, PlanChoice], budget: float, alpha: float = ALPHA,
                progress: Optional[Progress] = None) -> list[list[str]]:
        """The labels of `choices` in rank groups at `budget`, best first: paired tests on the same
        held-out examples (paired.rank), so labels whose difference is not significant share a rank."""
        from flexmerge_core.evaluation.paired import rank

        return rank({label: self.explorer(choice, progress).example_scores(budget, progress)
                     for label, choice in choices.items()}, alpha)

    def findings(self, algorithms: Sequence[str], progress: Optional[Progress] = None) -> dict:
        """The paper's findings on this zoo (findings.reproduce_findings), memoised per algorithm list."""
        from flexmerge_core.findings import reproduce_findings

        key = tuple(algorithms)
        with self._lock:
            known = self._findings.get(key)
        if known is None:   # minutes when cold: computed outside the lock, so other pages stay responsive
            known = reproduce_findings(self.zoo, key, progress=progress)
            with self._lock:
                self._findings[key] = known
        return known

    def baseline_curve(self, kind: str, algorithm: str, progress: Optional[Progress] = None) -> list[dict]:
        """Curve rows of a baseline ("channel-merging" or "whole-model") at integer sizes 1..M (k groups),
        through the same incremental, cached curve machinery as the plan (parameter granularity)."""
        explorer = self.explorer(PlanChoice(algorithm=algorithm, granularity="parameter", baseline=kind), progress)
        return explorer.curve([float(k) for k in range(1, len(self.zoo.task_names) + 1)], progress=progress)

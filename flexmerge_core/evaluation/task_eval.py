"""The metric of one task's model on its held-out data, with reusable stage inputs and cache keys.

Why a per-task evaluator: along a curve the same task is evaluated many times with models that
differ in one block. The evaluator keeps the inputs of selected stages (see forward.py) for the
parameters it last ran; the next call restarts from the deepest kept stage at or before the first
stage whose parameters changed. What is kept is bounded by a byte budget: stage inputs are
[N, tokens, width] each, and when not all fit, evenly spaced stages are kept.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np
import torch

from flexmerge_core.cache import JsonCache, cache_root, content_hash
from flexmerge_core.deployment.deploy import FINETUNED, Deployment
from flexmerge_core.errors import InvalidArgumentError
from flexmerge_core.evaluation.forward import StagedEncoder
from flexmerge_core.evaluation.scores import TaskScore
from flexmerge_core.tasks import HeldOut, TaskKind

EVAL_VERSION = "eval/2"   # bump when the forward, a metric or the cache entry's format changes


def heldout_of(zoo, task_id: int) -> HeldOut:
    held = zoo.heldout_set(task_id)
    if held is None or held.head is None:
        missing = "held-out data" if held is None else "head"
        raise InvalidArgumentError(f"task '{zoo.task_names[task_id]}' has no {missing}: it cannot be evaluated")
    return held


def default_activation_budget(device: torch.device) -> int:
    """Bytes of stage inputs to keep in total: a quarter of free device (or host) memory, at most 4 GiB."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    else:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            free = 1 << 30
    return int(min(free // 4, 4 << 30))


def choose_stages(stage_bytes: Sequence[int], budget: int) -> list[int]:
    """Stages (>= 1) whose inputs to keep within `budget` bytes: all when they fit, else evenly spaced."""
    candidates = list(range(1, len(stage_bytes)))
    if sum(stage_bytes[s] for s in candidates) <= budget:
        return candidates
    per_stage = max(stage_bytes[1:], default=0) or 1
    count = min(len(candidates), budget // per_stage)
    if count <= 0:
        return []
    if count >= len(candidates):
        return candidates
    picks = np.linspace(0, len(candidates) - 1, num=count + 2)[1:-1]
    return sorted({candidates[int(round(i))] for i in picks})


class TaskEvaluator:
    """The task kind's metric of one task for a given state dict; stage inputs reused across calls."""

    def __init__(self, runner: StagedEncoder, kind: TaskKind, held: HeldOut, batch_size: int = 256,
                 budget_bytes: int = 0):
        self.runner, self.kind, self.total = runner, kind, len(held.targets)
        self.batches = [held.inputs[i:i + batch_size] for i in range(0, len(held.inputs), batch_size)]
        self.target_batches = [held.targets[i:i + batch_size].to(runner.device)
                               for i in range(0, len(held.targets), batch_size)]
        self.head = {k: v.to(runner.device, torch.float32) if isinstance(v, torch.Tensor) else v
                     for k, v in held.head.items()}
        self.budget_bytes = budget_bytes
        self.record: list[int] = []
        self._kept: list[dict[int, torch.Tensor]] = [{} for _ in self.batches]
        self._signature: Optional[list] = None
        self.stages_run = 0

    @property
    def kept_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for kept in self._kept for t in kept.values())

    def _plan_recording(self, stage_params: list[dict]) -> None:
        """Measure one image's stage inputs, then pick the stages that fit the budget."""
        probe = self.batches[0][:1].to(self.runner.device)
        _, kept = self.runner.features(stage_params, probe, record=range(self.runner.num_stages))
        per_image = [kept[s].numel() * kept[s].element_size() for s in range(self.runner.num_stages)]
        total = sum(len(b) for b in self.batches)
        self.record = choose_stages([p * total for p in per_image], self.budget_bytes)

    def _start_stage(self, signature: Optional[list]) -> int:
        if signature is None or self._signature is None:
            return 0
        changed = [s for s, (a, b) in enumerate(zip(signature, self._signature)) if a != b]
        first = changed[0] if changed else self.runner.num_stages
        return max([s for s in self.record if s <= first], default=0)

    def evaluate(self, state: dict[str, torch.Tensor], signature: Optional[list] = None) -> TaskScore:
        """The kind's per-example scores and metric value for the task's model `state`.

        `signature[s]` identifies the parameters of stage s (equal => same tensors); with it, the
        kept stage inputs of the previous call are reused. Without it nothing is kept.
        """
        stage_params = self.runner.split(state)
        if signature is not None and self._signature is None and self.budget_bytes > 0:
            self._plan_recording(stage_params)
        start = self._start_stage(signature)
        record = [s for s in self.record if s > start] if signature is not None else []
        scores = []
        for i, batch in enumerate(self.batches):
            x = self._kept[i][start] if start > 0 else batch.to(self.runner.device)
            features, kept = self.runner.features(stage_params, x, start=start, record=record)
            self._kept[i] = {s: t for s, t in self._kept[i].items() if s <= start} | kept
            scores.append(self.kind.score(features, self.target_batches[i], self.head).to("cpu", torch.float32))
        self.stages_run += self.runner.num_stages - start
        self._signature = signature
        scores = torch.cat(scores)
        return TaskScore(self.kind.metric, self.kind.value(scores), self.total, self.kind.higher_is_better, scores)


def eval_cache() -> JsonCache:
    return JsonCache(cache_root() / "eval")


def eval_key(zoo, task_id: int, merged_blocks: list, algorithm_key: Optional[str], source_fingerprint: str) -> str:
    """Hash of what a task's metric depends on: data, head and kind (zoo), the tensors' source zoo,
    and which blocks are merged with which members by which algorithm (fine-tuned blocks are
    the checkpoint's own tensors, whatever the algorithm)."""
    return content_hash(EVAL_VERSION, zoo.fingerprint, source_fingerprint, zoo.task_names[task_id],
                        zoo.head_input, zoo.task_kind(task_id).name, algorithm_key if merged_blocks else None,
                        merged_blocks)


def normalized_value(value: float, finetuned: float, higher_is_better: bool) -> float:
    """Merged relative to fine-tuned, where 1 is parity and higher is better for every metric:
    value / finetuned when higher is better, finetuned / value when lower is (an error of twice the
    fine-tuned model's scores 0.5). A zero denominator counts as 1e-12."""
    return value / max(finetuned, 1e-12) if higher_is_better else finetuned / max(value, 1e-12)


def summarize(scores: dict[str, TaskScore], finetuned: dict[str, float]) -> dict:
    """Per-task values and what curve rows and EvalResult report about them: the average of the tasks'
    metric values (`avg_accuracy`, whatever the metrics), normalised values and their average, and per
    task the metric's name, the number of examples and its direction."""
    values = {t: s.value for t, s in scores.items()}
    normalized = {t: normalized_value(s.value, finetuned[t], s.higher_is_better) for t, s in scores.items()}
    n = max(len(scores), 1)
    return {"accuracy": values, "avg_accuracy": sum(values.values()) / n,
            "avg_normalized_accuracy": sum(normalized.values()) / n, "normalized": normalized,
            "metric": {t: s.metric for t, s in scores.items()}, "n": {t: s.n for t, s in scores.items()},
            "higher_is_better": {t: s.higher_is_better for t, s in scores.items()}}


def task_ids_of(zoo, tasks) -> list[int]:
    """Task ids from names or ids (None = all), in zoo order, each once."""
    if tasks is None:
        return list(range(len(zoo.task_names)))
    ids = []
    for task in tasks:
        if isinstance(task, str):
            if task not in zoo.task_names:
                raise InvalidArgumentError(f"unknown task '{task}' (zoo '{zoo.name}' has {', '.join(zoo.task_names)})")
            task = zoo.task_names.index(task)
        if isinstance(task, bool) or not isinstance(task, int) or not 0 <= task < len(zoo.task_names):
            raise InvalidArgumentError(f"task id {task!r} out of range (zoo has {len(zoo.task_names)} tasks)")
        ids.append(task)
    if not ids:
        raise InvalidArgumentError("no tasks selected for evaluation")
    return sorted(set(ids))


class ScoreBook:
    """Per-task scores by cache key: memory first, then the disk cache (TaskScore.to_json entries).

    Counts what it actually evaluated (`evaluated`), so callers and tests can tell cached from computed.
    """

    def __init__(self, use_cache: bool = True):
        self.disk = eval_cache() if use_cache else None
        self.memory: dict[str, TaskScore] = {}
        self.evaluated = 0

    def known(self, key: str) -> Optional[TaskScore]:
        if key not in self.memory and self.disk is not None:
            found = self.disk.get(key)
            score = TaskScore.from_json(found) if isinstance(found, dict) else None
            if score is not None:
                self.memory[key] = score
        return self.memory.get(key)

    def record(self, key: str, score: TaskScore) -> TaskScore:
        self.evaluated += 1
        if self.disk is not None:
            self.disk.put(key, score.to_json())
        self.memory[key] = score
        return score


class Evaluators:
    """One encoder and one TaskEvaluator per task, built on first use (the encoder costs memory)."""

    def __init__(self, zoo, device=None, batch_size: int = 256, activation_budget: int = 0):
        self.zoo, self.device, self.batch_size, self.activation_budget = zoo, device, batch_size, activation_budget
        self._runner: Optional[StagedEncoder] = None
        self._tasks: dict[int, TaskEvaluator] = {}

    @property
    def runner(self) -> StagedEncoder:
        if self._runner is None:
            self._runner = StagedEncoder(self.zoo.build_encoder(), self.device, self.zoo.architecture)
        return self._runner

    def task(self, task_id: int, share: int = 1) -> TaskEvaluator:
        if task_id not in self._tasks:
            self._tasks[task_id] = TaskEvaluator(
                self.runner, self.zoo.task_kind(task_id), heldout_of(self.zoo, task_id), self.batch_size,
                self.activation_budget // max(share, 1))
        return self._tasks[task_id]

    @property
    def kept_bytes(self) -> int:
        return sum(e.kept_bytes for e in self._tasks.values())

    @property
    def stages_run(self) -> int:
        return sum(e.stages_run for e in self._tasks.values())


def merged_blocks(deployment: Deployment, task_id: int) -> list:
    """[(block params, members)] of the blocks where the task does not run its own fine-tuned tensors."""
    out = []
    for params, entries, routing in zip(deployment.block_params, deployment.entries, deployment.routing):
        entry = entries[routing[task_id]]
        if entry.kind != FINETUNED:
            out.append([list(params), list(entry.members)])
    return out


def deployment_eval_key(zoo, deployment: Deployment, task_id: int) -> str:
    source = deployment.recipe.get("zoo_fingerprint", zoo.fingerprint)
    return eval_key(zoo, task_id, merged_blocks(deployment, task_id), deployment.algorithm.key, source)

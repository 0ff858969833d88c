"""Held-out evaluation of deployments and of the individual fine-tuned models (ALGORITHMS.md section 6).

The metric of task k (its task kind's: accuracy for image classification) = its assembled model + its
own head on its own held-out data, the mean of per-example scores. Results are
cached per task on disk (task_eval.eval_key: everything the number depends on), so re-opening
the same deployment, or a curve that passes through it, evaluates nothing twice.
`accuracy_curve` (curve.py) is re-exported here, as INTERFACES.md names it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from flexmerge_core.deployment.deploy import Deployment
from flexmerge_core.errors import InvalidArgumentError
from flexmerge_core.evaluation.curve import accuracy_curve
from flexmerge_core.evaluation.task_eval import (Evaluators, ScoreBook, deployment_eval_key, eval_key, summarize,
                                                 task_ids_of)

Progress = Optional[Callable[[int, int, str], None]]


@dataclass
class EvalResult:
    """Names as in the curve rows (curve.curve_row): `accuracy` holds each task's metric value, whatever it is."""

    accuracy: dict[str, float]           # per task, this deployment
    finetuned: dict[str, float]          # per task, the individual fine-tuned model
    normalized: dict[str, float]         # task_eval.normalized_value: 1 = parity, higher is better
    avg_accuracy: float
    avg_normalized_accuracy: float
    reconstruction_seconds: dict[str, float]   # mask methods: time to rebuild each task's model
    metric: dict[str, str]               # per task, its metric's name
    n: dict[str, int]                    # per task, held-out examples
    higher_is_better: dict[str, bool]    # per task, the metric's direction


def finetuned_state(zoo, task_id: int) -> dict[str, torch.Tensor]:
    return {n: zoo.task_tensor(task_id, n) for n in list(zoo.param_names) + list(zoo.unmerged_names)}


def finetuned_accuracies(zoo, tasks=None, device=None, progress: Progress = None, book: Optional[ScoreBook] = None,
                         evaluators: Optional[Evaluators] = None) -> dict[str, float]:
    """Metric value of each individual fine-tuned model (cached like any deployment's)."""
    book = book or ScoreBook()
    evaluators = evaluators or Evaluators(zoo, device)
    ids = task_ids_of(zoo, tasks)
    out = {}
    for i, t in enumerate(ids):
        key = eval_key(zoo, t, [], None, zoo.fingerprint)
        score = book.known(key) or book.record(key, evaluators.task(t).evaluate(finetuned_state(zoo, t)))
        out[zoo.task_names[t]] = score.value
        if progress:
            progress(i + 1, len(ids), f"fine-tuned {zoo.task_names[t]}")
    return out


def evaluate_deployment(zoo, deployment: Deployment, tasks=None, device=None, progress: Progress = None,
                        batch_size: int = 256, use_cache: bool = True) -> EvalResult:
    """Per-task, average and normalised metric values of `deployment` on `zoo`'s held-out data."""
    if list(deployment.task_names) != list(zoo.task_names):
        raise InvalidArgumentError(f"deployment tasks {deployment.task_names} differ from zoo '{zoo.name}' "
                                   f"tasks {zoo.task_names}")
    book, evaluators = ScoreBook(use_cache), Evaluators(zoo, device, batch_size)
    ids = task_ids_of(zoo, tasks)
    scores, seconds = {}, {}
    for i, t in enumerate(ids):
        name = zoo.task_names[t]
        key = deployment_eval_key(zoo, deployment, t)
        score = book.known(key)
        if score is None:
            score = book.record(key, evaluators.task(t).evaluate(deployment.encoder_state_dict(t)))
        elif deployment.storage == "mask" and t not in deployment.reconstruction_seconds:
            deployment.task_state_dict(t)   # cached score, but the reconstruction time is still reported
        scores[name] = score
        if t in deployment.reconstruction_seconds:
            seconds[name] = deployment.reconstruction_seconds[t]
        if progress:
            progress(i + 1, len(ids) * 2, f"task {name}")
    finetuned = finetuned_accuracies(zoo, ids, book=book, evaluators=evaluators,
                                     progress=(lambda d, n, m: progress(len(ids) + d, 2 * n, m)) if progress else None)
    summary = summarize(scores, finetuned)
    return EvalResult(accuracy=summary["accuracy"], finetuned=finetuned, normalized=summary["normalized"],
                      avg_accuracy=summary["avg_accuracy"],
                      avg_normalized_accuracy=summary["avg_normalized_accuracy"], reconstruction_seconds=seconds,
                      metric=summary["metric"], n=summary["n"], higher_is_better=summary["higher_is_better"])

__all__ = ["EvalResult", "evaluate_deployment", "finetuned_accuracies", "accuracy_curve", "ScoreBook",
           "Evaluators", "task_ids_of"]

"""A plain-data summary of a zoo (for `zoo info`, the app's overview and reports).

Why separate: the CLI and the dashboard show the same facts; computing them in one place keeps
the two consistent, and the result is JSON-ready.
"""
from __future__ import annotations

import math

from flexmerge_core.zoo.loader import Zoo


def source_format(recipe: dict) -> str | None:
    """Which format the zoo came from (`recipe.source.format`: hf_clip, task_vectors_pickle,
    open_clip_research, demo); demo zoos built before the key existed are recognised by their recipe name."""
    source = recipe.get("source")
    if isinstance(source, dict) and isinstance(source.get("format"), str):
        return source["format"]
    return "demo" if recipe.get("name") == "flexmerge-demo" else None


def zoo_summary(zoo: Zoo, blocks: dict[str, int]) -> dict:
    """Tasks (kind, metric), merged parameter counts, `blocks` (block count per granularity preset, from the
    planning stage: `pipeline.describe_zoo` fills it in), fine-tuned values, the recipe's report."""
    tasks = [{"name": t.name, "finetuned_accuracy": t.finetuned_accuracy,
              "num_classes": None if t.classes is None else len(t.classes),
              "has_head": t.head is not None, "has_heldout_data": t.data is not None,
              "kind": t.kind, "metric": zoo.task_kind(i).metric}
             for i, t in enumerate(zoo.manifest.tasks)]
    report = zoo.recipe.get("report") if isinstance(zoo.recipe.get("report"), dict) else {}
    return {
        "name": zoo.name, "root": str(zoo.root), "fingerprint": zoo.fingerprint,
        "architecture": zoo.manifest.architecture_kind, "head_input": zoo.head_input,
        "source": source_format(zoo.recipe),
        "num_tasks": len(tasks), "tasks": tasks,
        "merged_tensors": len(zoo.param_names), "merged_params": sum(math.prod(zoo.param_shapes[n]) for n in zoo.param_names),
        "unmerged_tensors": list(zoo.unmerged_names),
        "blocks": dict(blocks),
        "finetuned_accuracy": zoo.finetuned_accuracy, "report": report,
    }


def summary_lines(summary: dict) -> list[str]:
    """The human-readable form of zoo_summary."""
    lines = [f"zoo {summary['name']} ({summary['architecture']}, from {summary['source'] or 'an unrecorded source'}) "
             f"at {summary['root']}",
             f"fingerprint {summary['fingerprint']}",
             f"merged parameters: {summary['merged_params']:,} in {summary['merged_tensors']} tensors"
             + (f" ({len(summary['unmerged_tensors'])} tensors kept per task)" if summary["unmerged_tensors"] else ""),
             "blocks: " + ", ".join(f"{g} {n}" for g, n in summary["blocks"].items()),
             f"tasks ({summary['num_tasks']}):"]
    for task in summary["tasks"]:
        acc = "n/a" if task["finetuned_accuracy"] is None else f"{task['finetuned_accuracy']:.4f}"
        classes = "" if task["num_classes"] is None else f", {task['num_classes']} classes"
        lines.append(f"  {task['name']}: fine-tuned {task['metric']} {acc}{classes}")
    if summary["report"]:
        lines.append("report:")
        lines += [f"  {key}: {_format_value(value)}" for key, value in summary["report"].items()]
    return lines


def _format_value(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)

"""The headline numbers every demo zoo reports (`recipe.report`, printed by `zoo info`).

Why shared: each embedded demo (vision, text) must show the same phenomenon, measured the same way:
fine-tuned vs Task Arithmetic at 1x and 2x on the greedy plan (component blocks, min linkage), and
the mean block cosine within a family of tasks vs across families, with four goals:
fine-tuned >= 85%, 1x gap >= 10 points, 2x gap <= half the 1x gap, cosine ratio >= 3.
"""
from __future__ import annotations

import numpy as np


def family_cosines(sims: np.ndarray, families: list[str]) -> tuple[float | None, float | None]:
    """Mean block cosine over task pairs of the same family, and over pairs of different families
    (a plain mean over the blocks of each pair, then over the pairs)."""
    pairs = [(i, j) for i in range(len(families)) for j in range(i + 1, len(families))]
    within = [sims[:, i, j].mean() for i, j in pairs if families[i] == families[j]]
    across = [sims[:, i, j].mean() for i, j in pairs if families[i] != families[j]]
    return (float(np.mean(within)) if within else None), (float(np.mean(across)) if across else None)


def merge_report(zoo, families: list[str]) -> dict:
    """Fine-tuned vs Task Arithmetic at 1x and 2x on the greedy plan (component blocks), and the
    within/across-family block cosines; `targets_met` says how many of the four goals hold."""
    from flexmerge_core.algorithms import get_algorithm
    from flexmerge_core.deployment.deploy import build_deployment
    from flexmerge_core.evaluation.evaluate import evaluate_deployment
    from flexmerge_core.planning.blocks import build_blocks
    from flexmerge_core.planning.plan import plan_from_similarities
    from flexmerge_core.planning.similarity import block_similarities

    finetuned = float(np.mean(list(zoo.finetuned_accuracy.values())))
    spec = build_blocks(zoo.param_names, zoo.param_shapes, granularity="component")
    algorithm = get_algorithm("ta")
    sims = block_similarities(zoo, spec, algorithm)
    plan = plan_from_similarities(sims, [b.numel for b in spec.blocks], algorithm.storage,
                                  blocks=[b.name for b in spec.blocks])
    within, across = family_cosines(sims, families)
    report = {"finetuned_avg_accuracy": round(finetuned, 4)}
    for size in (1.0, 2.0):
        result = evaluate_deployment(zoo, build_deployment(zoo, plan, algorithm, size, spec=spec), use_cache=False)
        report[f"ta_{size:g}x_avg_accuracy"] = round(float(result.avg_accuracy), 4)
    report["ta_1x_gap"] = round(finetuned - report["ta_1x_avg_accuracy"], 4)
    report["ta_2x_gap"] = round(finetuned - report["ta_2x_avg_accuracy"], 4)
    report["within_family_cosine"] = None if within is None else round(within, 4)
    report["across_family_cosine"] = None if across is None else round(across, 4)
    report["cosine_ratio"] = round(within / across, 2) if within is not None and across else None
    report["targets_met"] = targets_met(report)
    return report


def targets_met(report: dict) -> str:
    """How many of the demo's goals hold, naming the missed ones: '4/4' or '3/4 (missed: 1x gap >= 0.10)'."""
    ratio = report["cosine_ratio"]
    checks = {"fine-tuned >= 0.85": report["finetuned_avg_accuracy"] >= 0.85,
              "1x gap >= 0.10": report["ta_1x_gap"] >= 0.10,
              "2x gap <= 1x gap / 2": report["ta_2x_gap"] <= report["ta_1x_gap"] / 2,
              "cosine ratio >= 3": ratio is not None and ratio >= 3}
    missed = [name for name, ok in checks.items() if not ok]
    return f"{len(checks) - len(missed)}/{len(checks)}" + (f" (missed: {', '.join(missed)})" if missed else "")

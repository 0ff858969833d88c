"""Accuracy-size curves: incremental == from scratch, warm caches do no work, CLI `curve`."""
import json

import pytest
import torch

from deploy_zoos import TINY_VIT, evaluable_zoo, plan_for, reference_logits
from flexmerge_core.cli import main
from flexmerge_core.deployment.footprint import parse_sizes
from flexmerge_core.evaluation.curve import accuracy_curve, compute_curve, spec_for_plan
from flexmerge_core.deployment.deploy import build_deployment
from flexmerge_core.errors import BudgetError
from flexmerge_core.evaluation.evaluate import evaluate_deployment
from flexmerge_core.deployment.group_cache import GroupResultCache
from flexmerge_core.evaluation.task_eval import TaskEvaluator

pytestmark = pytest.mark.usefixtures("one_thread", "private_cache")


@pytest.fixture(scope="module")
def zoo_bundle(tmp_path_factory):
    return evaluable_zoo(tmp_path_factory.mktemp("zoo") / "tiny", num_tasks=3)


def test_incremental_curve_equals_every_size_from_scratch_with_less_work(zoo_bundle):
    zoo, *_ = zoo_bundle
    spec, algo, plan = plan_for(zoo, "ta")
    fast = compute_curve(zoo, plan, algo, "all", spec=spec, use_cache=False, activation_budget=1 << 30)
    slow = compute_curve(zoo, plan, algo, "all", spec=spec, use_cache=False, incremental=False)
    assert fast.rows == slow.rows and fast.finetuned == slow.finetuned
    assert [r["size"] for r in fast.rows] == sorted(plan.achievable_sizes())
    assert fast.stats["stages_run"] < 0.75 * slow.stats["stages_run"]
    assert fast.stats["evaluated"] < slow.stats["evaluated"]
    assert fast.stats["activation_bytes"] > 0
    top = fast.rows[-1]
    assert top["size"] == 3.0 and top["accuracy"] == fast.finetuned and top["avg_normalized_accuracy"] == 1.0
    assert fast.rows[0]["avg_accuracy"] < top["avg_accuracy"]


def test_rows_at_requested_budgets_match_a_standalone_evaluation(zoo_bundle):
    zoo, *_ = zoo_bundle
    spec, algo, plan = plan_for(zoo, "ta")
    budgets = [2.0, 1.0, 1.37, 3.0]
    rows = accuracy_curve(zoo, plan, algo, budgets)              # the block spec is inferred from the plan
    assert [r["size_budget"] for r in rows] == budgets
    for row, budget in zip(rows, budgets):
        result = evaluate_deployment(zoo, build_deployment(zoo, plan, algo, budget, spec=spec), use_cache=False)
        assert row["size"] == plan.partition_at(budget).size
        assert row["accuracy"] == result.accuracy
        assert row["avg_accuracy"] == pytest.approx(result.avg_accuracy)
        assert row["avg_normalized_accuracy"] == pytest.approx(result.avg_normalized_accuracy)
    assert spec_for_plan(zoo, plan).blocks == spec.blocks


def test_rows_carry_the_interval_of_their_average_and_the_per_example_scores_behind_it(zoo_bundle):
    from flexmerge_core.evaluation.intervals import example_counts, with_interval
    from flexmerge_core.evaluation.statistics import average_interval

    zoo, _, _, heads = zoo_bundle
    spec, algo, plan = plan_for(zoo, "ta")
    budgets = [1.0, 2.0, 3.0]
    result = compute_curve(zoo, plan, algo, budgets, spec=spec, use_cache=False)
    assert sorted(result.scores) == budgets
    for row in result.rows:
        deployment = build_deployment(zoo, plan, algo, row["size_budget"], spec=spec)
        per_task = []
        for t, name in enumerate(zoo.task_names):
            images, labels = zoo.heldout(t)
            logits = reference_logits(TINY_VIT, deployment.encoder_state_dict(t), heads[name], images)
            correct = logits.argmax(-1) == labels
            score = result.scores[row["size_budget"]][name]
            assert torch.equal(score.scores, correct.float()) and score.n == len(labels)
            per_task.append((int(correct.sum()) / len(labels), len(labels)))
        assert (row["ci_low"], row["ci_high"]) == pytest.approx(average_interval(per_task), abs=1e-12)
        plain = {k: v for k, v in row.items() if k not in ("ci_low", "ci_high", "n")}
        again = with_interval(plain, example_counts(zoo))
        assert (again["ci_low"], again["ci_high"]) == pytest.approx((row["ci_low"], row["ci_high"]), abs=1e-12)
        assert row["ci_low"] < row["avg_accuracy"] < row["ci_high"]


def test_second_cli_curve_run_with_a_warm_cache_merges_and_evaluates_nothing(zoo_bundle, monkeypatch, capsys):
    zoo, *_ = zoo_bundle
    argv = ["curve", "--zoo", str(zoo.root), "--algorithm", "ties", "--sizes", "all", "--json"]
    assert main(argv) == 0
    cold = json.loads(capsys.readouterr().out)
    spec, algo, plan = plan_for(zoo, "ties")
    assert len(cold["rows"]) == len(plan.achievable_sizes())

    def forbidden(*args, **kwargs):
        raise AssertionError("no merging or evaluation expected with a warm cache")

    monkeypatch.setattr(type(algo), "merge", forbidden)
    monkeypatch.setattr(TaskEvaluator, "evaluate", forbidden)
    monkeypatch.setattr(GroupResultCache, "load", forbidden)
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out) == cold
    warm = compute_curve(zoo, plan, algo, "all", spec=spec)
    assert warm.stats["evaluated"] == 0 and warm.rows == cold["rows"]


def test_merged_groups_come_back_from_disk_and_corrupt_files_are_rebuilt(zoo_bundle, private_cache, monkeypatch):
    zoo, *_ = zoo_bundle
    spec, algo, plan = plan_for(zoo, "ta")
    deployment = build_deployment(zoo, plan, algo, 1.0, spec=spec)
    cache = GroupResultCache()
    from flexmerge_core.deployment.merge import GroupMerger

    first = GroupMerger(zoo, spec, algo, cache=cache).result(0, (0, 1, 2))
    files = sorted((private_cache / "groups").glob("*.safetensors"))
    assert len(files) == 1 and cache.stores == 1
    again = GroupMerger(zoo, spec, algo, cache=cache).result(0, (0, 1, 2))
    assert cache.loads == 1 and all(torch.equal(first.unified[n], again.unified[n]) for n in first.unified)
    data = bytearray(files[0].read_bytes())
    data[-3] ^= 0xFF                                           # flip bits in the tensor data
    files[0].write_bytes(bytes(data))
    assert cache.load(files[0].stem) is None
    rebuilt = GroupMerger(zoo, spec, algo, cache=cache).result(0, (0, 1, 2))
    assert cache.stores == 2 and all(torch.equal(first.unified[n], rebuilt.unified[n]) for n in first.unified)
    assert all(torch.equal(deployment.entries[0][0].tensors[n],
                           (zoo.pretrained_tensor(n) + first.unified[n])) for n in spec.blocks[0].params)


def test_parse_sizes():
    assert parse_sizes("all") == "all" and parse_sizes("1,1.5, 2") == [1.0, 1.5, 2.0]
    for bad in ("1,x", "0", "-1", "nan", "inf", ""):
        with pytest.raises(BudgetError):
            parse_sizes(bad)


def test_cli_curve_json_document_and_one_line_errors(zoo_bundle, capsys):
    zoo, *_ = zoo_bundle
    assert main(["curve", "--zoo", str(zoo.root), "--algorithm", "ta", "--sizes", "1,3", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {"rows", "finetuned"} and set(doc["finetuned"]) == set(zoo.task_names)
    assert [set(r) for r in doc["rows"]] == [{"size_budget", "size", "avg_accuracy", "avg_normalized_accuracy",
                                             "accuracy", "metric", "n", "higher_is_better", "ci_low", "ci_high"}] * 2
    assert doc["rows"][0]["metric"] == {t: "accuracy" for t in zoo.task_names}
    assert doc["rows"][0]["higher_is_better"] == {t: True for t in zoo.task_names}
    assert doc["rows"][0]["n"] == {t: len(zoo.heldout(i)[1]) for i, t in enumerate(zoo.task_names)}
    assert doc["rows"][1]["accuracy"] == doc["finetuned"]
    for argv in (["--sizes", "1,abc"], ["--tasks", "task0,nope"], ["--algorithm", "nope"]):
        args = ["curve", "--zoo", str(zoo.root), "--algorithm", "ta", *argv]
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err

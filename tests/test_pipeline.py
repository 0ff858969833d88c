"""The one orchestration path: plans and baselines through the same cached, incremental curve machinery."""
import json

import pytest

from deploy_zoos import evaluable_zoo
from flexmerge_core.cli import main
from flexmerge_core.deployment.deploy import GroupStore, deployment_from_partition
from flexmerge_core.deployment.merge import GroupMerger
from flexmerge_core.errors import InvalidArgumentError
from flexmerge_core.evaluation.evaluate import evaluate_deployment
from flexmerge_core.pipeline import Pipeline, PlanSettings
from flexmerge_core.planning.baselines import baseline_plan
from flexmerge_core.zoo import open_zoo


@pytest.fixture
def zoo_path(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEXMERGE_CACHE", str(tmp_path / "cache"))
    zoo, *_ = evaluable_zoo(tmp_path / "zoo", num_tasks=4, seed=3)
    return zoo.root


@pytest.mark.parametrize("kind", ["channel-merging", "whole-model"])
def test_baseline_curve_equals_evaluating_each_partition_from_scratch(zoo_path, kind):
    zoo = open_zoo(zoo_path)
    pipeline = Pipeline(zoo, PlanSettings(algorithm="ta", granularity="parameter", baseline=kind))
    rows = pipeline.curve([1.0, 2.0, 3.0, 4.0], use_cache=False).rows

    reference_plan = baseline_plan(kind, zoo, pipeline.spec, pipeline.algorithm)
    store = GroupStore(zoo, pipeline.spec, pipeline.algorithm, GroupMerger(zoo, pipeline.spec, pipeline.algorithm))
    for k, row in zip(range(1, 5), rows):
        part = reference_plan.partition_at(float(k))
        deployment = deployment_from_partition(zoo, pipeline.spec, pipeline.algorithm, part, store, {})
        expected = evaluate_deployment(zoo, deployment, use_cache=False)
        assert row["size"] == part.size == float(k)
        assert row["accuracy"] == expected.accuracy


def test_warm_baseline_curve_reads_no_tensor_and_evaluates_nothing(zoo_path):
    settings = PlanSettings(algorithm="ta", baseline="channel-merging")
    cold = Pipeline(open_zoo(zoo_path), settings).curve("all")
    assert cold.stats["evaluated"] > 0

    zoo = open_zoo(zoo_path)
    opened = zoo.tensors_read             # the held-out labels, checked against the heads at open
    warm = Pipeline(zoo, settings).curve("all")
    assert warm.rows == cold.rows
    assert warm.stats["evaluated"] == 0
    assert zoo.tensors_read == opened     # no Gram pass (cached clustering), no merge, no forward


def test_cli_curve_with_a_baseline(zoo_path, capsys):
    argv = ["curve", "--zoo", str(zoo_path), "--algorithm", "ta", "--baseline", "whole-model", "--json"]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert [r["size"] for r in first["rows"]] == [1.0, 2.0, 3.0, 4.0]
    assert first["rows"][-1]["accuracy"] == first["finetuned"]   # k = M keeps every fine-tuned model
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out) == first


def test_channel_merging_refuses_a_coarser_granularity(zoo_path, capsys):
    with pytest.raises(InvalidArgumentError, match="granularity must be 'parameter'"):
        PlanSettings(baseline="channel-merging", granularity="layer").block_granularity()
    argv = ["curve", "--zoo", str(zoo_path), "--algorithm", "ta", "--baseline", "channel-merging",
            "--granularity", "layer"]
    assert main(argv) == 2
    assert "granularity must be 'parameter'" in capsys.readouterr().err


def test_cli_plan_and_facade_build_the_same_plan(zoo_path, capsys):
    from flexmerge_core.studio import Studio

    assert main(["plan", "--zoo", str(zoo_path), "--algorithm", "ties", "--json"]) == 0
    events = json.loads(capsys.readouterr().out)["events"]
    explorer = Studio(open_zoo(zoo_path)).explorer(PlanSettings(algorithm="ties"))
    assert explorer.plan.to_json()["events"] == events

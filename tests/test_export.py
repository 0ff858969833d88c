"""Export: whole deployments round-trip exactly, `--task` loads strictly, recipes reproduce bytes."""
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from deploy_zoos import evaluable_zoo, plan_for
from flexmerge_core.cli import main
from flexmerge_core.deployment.deploy import build_deployment
from flexmerge_core.errors import ZooError
from flexmerge_core.evaluation.evaluate import evaluate_deployment
from flexmerge_core.deployment.export import export, head_path, load_deployment, recipe_path, save_deployment
from flexmerge_core.pipeline import reproduce_export

pytestmark = pytest.mark.usefixtures("one_thread", "private_cache")


@pytest.fixture(scope="module")
def zoo_bundle(tmp_path_factory):
    return evaluable_zoo(tmp_path_factory.mktemp("zoo") / "tiny", num_tasks=4)


@pytest.mark.parametrize("algorithm,budget", [("ta", 1.7), ("emr", 2.2)])
def test_exported_deployment_reloads_to_identical_tensors_and_accuracies(zoo_bundle, tmp_path, algorithm, budget):
    zoo, *_ = zoo_bundle
    spec, algo, plan = plan_for(zoo, algorithm)
    deployment = build_deployment(zoo, plan, algo, budget, spec=spec)
    out = save_deployment(deployment, tmp_path / "d.safetensors")
    loaded = load_deployment(out)
    assert loaded.routing == deployment.routing and loaded.recipe == deployment.recipe
    assert loaded.size == deployment.size and loaded.stored_bytes == deployment.stored_bytes
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    recipe = json.loads(meta["flexmerge"])["recipe"]
    assert recipe["zoo_fingerprint"] == zoo.fingerprint and recipe["algorithm"] == algorithm
    assert {"hyperparameters", "granularity", "linkage", "order", "budget", "size"} <= set(recipe)
    for t in range(len(zoo.task_names)):
        a, b = deployment.encoder_state_dict(t), loaded.encoder_state_dict(t)
        assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
        assert all(torch.equal(deployment.heads[t][k], loaded.heads[t][k]) for k in ("weight", "bias"))
    assert (evaluate_deployment(zoo, loaded, use_cache=False).accuracy
            == evaluate_deployment(zoo, deployment, use_cache=False).accuracy)
    # the file holds each stored tensor once: its merged-parameter bytes are the deployment's
    tensors = load_file(str(out))
    stored = sum(v.numel() * v.element_size() for k, v in tensors.items() if not k.startswith("tasks/"))
    assert stored == deployment.stored_bytes


def test_task_export_loads_strictly_into_a_fresh_encoder(zoo_bundle, tmp_path):
    zoo, *_ = zoo_bundle
    spec, algo, plan = plan_for(zoo, "ta")
    out = tmp_path / "task2.safetensors"
    export(zoo, spec, plan, algo, 1.5, out, task="task2")
    state = load_file(str(out))
    fresh = zoo.build_encoder()
    fresh.load_state_dict(state, strict=True)
    expected = build_deployment(zoo, plan, algo, 1.5, spec=spec).encoder_state_dict(2)
    assert all(torch.equal(fresh.state_dict()[n], expected[n]) for n in expected)
    head = load_file(str(head_path(out)))
    assert torch.equal(head["weight"], zoo.head(2)["weight"])
    recipe = json.loads(recipe_path(out).read_text())
    assert recipe["task"] == "task2" and recipe["budget"] == 1.5


def test_recipe_reproduces_the_export_byte_for_byte(zoo_bundle, tmp_path):
    zoo, *_ = zoo_bundle
    first = tmp_path / "a.safetensors"
    assert main(["export", "--zoo", str(zoo.root), "--algorithm", "ties", "--size", "2", "--out", str(first)]) == 0
    second = tmp_path / "b.safetensors"
    reproduce_export(recipe_path(first), second)
    assert first.read_bytes() == second.read_bytes()
    assert recipe_path(first).read_bytes() == recipe_path(second).read_bytes()


def test_bad_export_requests_fail_with_one_line(zoo_bundle, tmp_path, capsys):
    zoo, *_ = zoo_bundle
    base = ["export", "--zoo", str(zoo.root), "--algorithm", "ta", "--out", str(tmp_path / "x.safetensors")]
    for extra in (["--size", "abc"], ["--size", "1,2"], ["--size", "-1"], ["--size", "2", "--task", "nope"]):
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err
    assert not (tmp_path / "x.safetensors").exists()
    garbage = tmp_path / "g.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(ZooError, match="g.safetensors"):
        load_deployment(garbage)

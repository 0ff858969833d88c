"""Evaluation: the staged functional forward, per-task accuracy against a textbook forward, caching."""
import json

import pytest
import torch

from deploy_zoos import TINY_VIT, evaluable_zoo, plan_for, reference_logits
from flexmerge_core.architectures.registry import get_architecture
from flexmerge_core.deployment.deploy import build_deployment
from flexmerge_core.errors import InvalidArgumentError
from flexmerge_core.evaluation.evaluate import evaluate_deployment, finetuned_accuracies
from flexmerge_core.evaluation.forward import StagedEncoder
from flexmerge_core.evaluation.task_eval import TaskEvaluator, choose_stages

pytestmark = pytest.mark.usefixtures("one_thread", "private_cache")


@pytest.fixture(scope="module")
def zoo_bundle(tmp_path_factory):
    return evaluable_zoo(tmp_path_factory.mktemp("zoo") / "tiny")


def _random_vit(seed):
    from open_clip.transformer import VisionTransformer

    torch.manual_seed(seed)
    return VisionTransformer(**TINY_VIT).eval()


def test_staged_forward_matches_the_module_and_resumes_from_any_stage():
    encoder, other = _random_vit(0), _random_vit(1)
    runner = StagedEncoder(encoder, device="cpu", adapter=get_architecture("open_clip_vit"))
    layers = TINY_VIT["layers"]
    assert runner.num_stages == 2 * layers + 2          # stem, attention and MLP half per block, pool
    assert runner.stage_of("conv1.weight") == 0 and runner.stage_of("proj") == 2 * layers + 1
    assert runner.stage_of("transformer.resblocks.1.attn.in_proj_weight") == 3
    assert runner.stage_of("transformer.resblocks.1.ln_2.bias") == 4
    images = torch.randn(6, 3, 8, 8)
    state = other.state_dict()
    with torch.no_grad():
        expected = other(images)
    params = runner.split(state)
    full, kept = runner.features(params, images, record=range(runner.num_stages))
    torch.testing.assert_close(full, expected, rtol=1e-5, atol=1e-6)
    for start in range(1, runner.num_stages):
        resumed, _ = runner.features(params, kept[start], start=start)
        torch.testing.assert_close(resumed, full, rtol=0, atol=0)
    with torch.no_grad():   # the runner's own module keeps its weights: nothing was swapped for good
        torch.testing.assert_close(encoder(images), _random_vit(0)(images))


def test_deployment_accuracy_equals_a_textbook_forward_per_task(zoo_bundle):
    zoo, states, pretrained, heads = zoo_bundle
    spec, algo, plan = plan_for(zoo, "ta")
    deployment = build_deployment(zoo, plan, algo, 1.5, spec=spec)
    result = evaluate_deployment(zoo, deployment, use_cache=False)
    for t, name in enumerate(zoo.task_names):
        images, labels = zoo.heldout(t)
        logits = reference_logits(TINY_VIT, deployment.encoder_state_dict(t), heads[name], images)
        assert result.accuracy[name] == int((logits.argmax(-1) == labels).sum()) / len(labels)
        assert result.normalized[name] == result.accuracy[name] / result.finetuned[name]
    assert result.avg_accuracy == pytest.approx(sum(result.accuracy.values()) / len(zoo.task_names))
    assert result.avg_normalized_accuracy == pytest.approx(sum(result.normalized.values()) / len(zoo.task_names))
    assert result.avg_accuracy < sum(result.finetuned.values()) / len(zoo.task_names)   # merging costs accuracy


def test_normalized_head_input_and_unmerged_parameters_are_honoured(tmp_path):
    zoo, states, _, heads = evaluable_zoo(tmp_path / "z", num_tasks=3, head_input="normalized", unmerged=["^proj$"])
    assert "proj" not in zoo.param_names
    spec, algo, plan = plan_for(zoo, "ta")
    deployment = build_deployment(zoo, plan, algo, 1.0, spec=spec)
    result = evaluate_deployment(zoo, deployment, use_cache=False)
    for t, name in enumerate(zoo.task_names):
        state = deployment.encoder_state_dict(t)
        assert torch.equal(state["proj"], states[name]["proj"])        # each task keeps its own projection
        images, labels = zoo.heldout(t)
        logits = reference_logits(TINY_VIT, state, heads[name], images, normalized=True)
        assert result.accuracy[name] == int((logits.argmax(-1) == labels).sum()) / len(labels)
    finetuned = finetuned_accuracies(zoo)
    for t, name in enumerate(zoo.task_names):
        images, labels = zoo.heldout(t)
        logits = reference_logits(TINY_VIT, states[name], heads[name], images, normalized=True)
        assert finetuned[name] == int((logits.argmax(-1) == labels).sum()) / len(labels)


def test_results_are_cached_and_a_corrupt_entry_is_recomputed(zoo_bundle, private_cache, monkeypatch):
    zoo, *_ = zoo_bundle
    spec, algo, plan = plan_for(zoo, "ta")
    deployment = build_deployment(zoo, plan, algo, 2.0, spec=spec)
    first = evaluate_deployment(zoo, deployment)
    entries = sorted((private_cache / "eval").glob("*.json"))
    assert len(entries) == 2 * len(zoo.task_names)          # deployment + fine-tuned, per task
    calls = []
    original = TaskEvaluator.evaluate
    monkeypatch.setattr(TaskEvaluator, "evaluate",
                        lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    assert evaluate_deployment(zoo, deployment) == first and calls == []
    doc = json.loads(entries[0].read_text())
    doc["payload"]["value"] += 0.25                         # tampered: checksum no longer matches
    entries[0].write_text(json.dumps(doc))
    assert evaluate_deployment(zoo, deployment) == first and calls == [1]


def test_evaluator_reuses_kept_stage_inputs_only_before_the_first_change(zoo_bundle):
    zoo, states, pretrained, heads = zoo_bundle
    runner = StagedEncoder(zoo.build_encoder(), device="cpu", adapter=zoo.architecture)
    held, kind = zoo.heldout_set(0), zoo.task_kind(0)
    images = held.inputs

    outcome = lambda score: (score.value, score.n, score.scores.tolist())
    fresh = lambda state: outcome(TaskEvaluator(runner, kind, held, 16).evaluate(state))
    evaluator = TaskEvaluator(runner, kind, held, batch_size=16, budget_bytes=1 << 30)
    same = lambda state, signature: outcome(evaluator.evaluate(state, signature)) == fresh(state)
    a, b = states["task0"], dict(states["task0"])
    b.update({n: pretrained[n] for n in pretrained if n.startswith(("transformer.resblocks.1.", "ln_post", "proj"))})
    signature_a = ["stem", "0a", "0m", "1a", "1m", "post"]
    assert same(a, signature_a)
    assert evaluator.stages_run == 6
    assert same(b, ["stem", "0a", "0m", "1a*", "1m*", "post*"])
    assert evaluator.stages_run == 6 + 3                    # restarted at the first changed stage
    assert same(a, signature_a)
    assert evaluator.kept_bytes == 5 * len(images) * 5 * TINY_VIT["width"] * 4   # inputs of stages 1..5


def test_choose_stages_keeps_all_that_fit_else_evenly_spaced():
    assert choose_stages([0, 10, 10, 10, 10], 40) == [1, 2, 3, 4]
    assert choose_stages([0, 10, 10, 10, 10], 25) == [2, 3]
    assert choose_stages([0, 10, 10, 10, 10], 5) == []


def test_unknown_tasks_and_mismatched_zoos_are_refused(zoo_bundle, tmp_path):
    zoo, *_ = zoo_bundle
    spec, algo, plan = plan_for(zoo, "ta")
    deployment = build_deployment(zoo, plan, algo, 2.0, spec=spec)
    with pytest.raises(InvalidArgumentError, match="unknown task 'nope'"):
        evaluate_deployment(zoo, deployment, tasks=["nope"])
    with pytest.raises(InvalidArgumentError, match="differ from zoo"):
        evaluate_deployment(zoo.subset(["task0", "task1"]), deployment)

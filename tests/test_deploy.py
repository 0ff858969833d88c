"""Deployments: unique stored tensors, routing, shared views, mask reconstruction, size in bytes."""
import numpy as np
import pytest
import torch

from deploy_zoos import evaluable_zoo, plan_for, reference_logits
from flexmerge_core.deployment.deploy import FINETUNED, MASKED, MERGED, build_deployment, pack_mask, unpack_mask
from flexmerge_core.errors import InvalidArgumentError
from flexmerge_core.evaluation.evaluate import evaluate_deployment

pytestmark = pytest.mark.usefixtures("one_thread", "private_cache")


@pytest.fixture(scope="module")
def zoo_bundle(tmp_path_factory):
    return evaluable_zoo(tmp_path_factory.mktemp("zoo") / "tiny")


def test_size_m_is_the_fine_tuned_models_bit_for_bit_with_their_exact_accuracy(zoo_bundle):
    zoo, states, _, heads = zoo_bundle
    spec, algo, plan = plan_for(zoo, "ta")
    deployment = build_deployment(zoo, plan, algo, plan.max_size, spec=spec)
    assert deployment.size == plan.max_size and deployment.recipe["budget_met"]
    result = evaluate_deployment(zoo, deployment, use_cache=False)
    for t, name in enumerate(zoo.task_names):
        state = deployment.encoder_state_dict(t)
        assert all(torch.equal(state[n], states[name][n]) for n in states[name])
        images, labels = zoo.heldout(t)
        logits = reference_logits(zoo.manifest.architecture_config, states[name], heads[name], images)
        expected = int((logits.argmax(-1) == labels).sum()) / len(labels)
        assert result.accuracy[name] == expected == result.finetuned[name]
        assert result.normalized[name] == 1.0


def test_task_models_are_views_of_the_single_stored_copy(zoo_bundle):
    zoo, states, pretrained, _ = zoo_bundle
    spec, algo, plan = plan_for(zoo, "ta")
    budget = plan.achievable_sizes()[len(plan.events) // 2]
    deployment = build_deployment(zoo, plan, algo, budget, spec=spec)
    merged_seen = 0
    for b, block in enumerate(spec.blocks):
        ptrs = {}
        for t in range(len(zoo.task_names)):
            entry = deployment.entries[b][deployment.routing[b][t]]
            assert t in entry.members
            view = deployment.task_state_dict(t)
            for n in block.params:
                assert view[n].untyped_storage().data_ptr() == entry.tensors[n].untyped_storage().data_ptr()
                ptrs.setdefault(entry.members, view[n].untyped_storage().data_ptr())
            if entry.kind == MERGED:
                merged_seen += 1
                names = [zoo.task_names[m] for m in entry.members]
                for n in block.params:   # TA reference: pretrained + 1.5 * mean of the members' task vectors
                    mean = torch.stack([states[m][n] - pretrained[n] for m in names]).mean(0)
                    torch.testing.assert_close(entry.tensors[n], pretrained[n] + 1.5 * mean, rtol=1e-5, atol=1e-6)
            else:
                assert entry.kind == FINETUNED and all(
                    torch.equal(entry.tensors[n], states[zoo.task_names[t]][n]) for n in block.params)
        assert len(set(ptrs.values())) == len(ptrs) == len(deployment.entries[b])   # each stored once
    assert merged_seen > 0


@pytest.mark.parametrize("algorithm", ["ta", "ties"])
def test_stored_bytes_equal_size_in_model_units_for_standard_algorithms(zoo_bundle, algorithm):
    zoo, *_ = zoo_bundle
    spec, algo, plan = plan_for(zoo, algorithm)
    for budget in (plan.max_size, 2.5, 1.6, 1.0):
        deployment = build_deployment(zoo, plan, algo, budget, spec=spec)
        part = plan.partition_at(budget)
        assert deployment.size == part.size
        assert deployment.stored_params == round(part.size * plan.model_params)
        assert deployment.stored_bytes == deployment.stored_params * 4     # fp32, no rounding at all


@pytest.mark.parametrize("algorithm", ["consensus", "emr"])
def test_mask_deployment_reconstructs_on_demand_and_counts_masks_as_bits(zoo_bundle, algorithm):
    zoo, states, pretrained, _ = zoo_bundle
    spec, algo, plan = plan_for(zoo, algorithm)
    deployment = build_deployment(zoo, plan, algo, 1.0, spec=spec)    # below reach: fully merged
    M, P = len(zoo.task_names), plan.model_params
    assert deployment.size == pytest.approx(2 + M / 32) and deployment.size == plan.min_size
    # bytes: 4 per parameter, 1 bit per mask entry rounded up per (member, tensor) row, 4 per scale
    masked = [e for block in deployment.entries for e in block if e.kind == MASKED]
    exact_bytes = deployment.size * P * 4
    slack = sum(len(e.members) * len(e.tensors) for e in masked)
    slack += sum(4 * len(e.members) for e in masked if e.scales is not None)
    assert exact_bytes <= deployment.stored_bytes <= exact_bytes + slack
    for t, name in enumerate(zoo.task_names):
        state = deployment.task_state_dict(t)
        for b, block in enumerate(spec.blocks):
            vectors = zoo.task_vectors(list(block.params))
            members = tuple(range(M))
            reference = algo.reconstruct(algo.merge(algo.preprocess_block(vectors, tasks=members), members), t)
            for n in block.params:
                torch.testing.assert_close(state[n], pretrained[n] + reference[n], rtol=1e-6, atol=1e-6)
        assert deployment.reconstruction_seconds[t] > 0


def test_pack_unpack_masks_round_trip_for_odd_sizes():
    gen = torch.Generator().manual_seed(0)
    for shape in [(3,), (5, 7), (2, 3, 3)]:
        mask = torch.rand((4, *shape), generator=gen) > 0.5
        packed = pack_mask(mask)
        assert packed.dtype == torch.uint8 and packed.shape == (4, (int(np.prod(shape)) + 7) // 8)
        assert torch.equal(unpack_mask(packed, shape), mask)


def test_build_deployment_needs_the_block_spec(zoo_bundle):
    zoo, *_ = zoo_bundle
    spec, algo, plan = plan_for(zoo, "ta")
    with pytest.raises(InvalidArgumentError, match="block spec"):
        build_deployment(zoo, plan, algo, 2.0)
    other, _, _ = plan_for(zoo, "ta", granularity="layer")
    with pytest.raises(InvalidArgumentError, match="granularity 'layer'"):
        build_deployment(zoo, plan, algo, 2.0, spec=other)

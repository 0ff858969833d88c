"""Group bases shared between algorithms: ta, avg and consensus_ta scale one mean per group, consensus at any
lam one disjoint mean; the results are exactly those computed alone, and keys differ where bases would."""
from __future__ import annotations

import functools
import itertools
from collections import Counter

import pytest
import torch

from algorithm_cases import FakeSpec, FakeZoo, alone, group_rows, same
from flexmerge_core.algorithms import get_algorithm
from flexmerge_core.algorithms.registry import REGISTRY
from flexmerge_core.deployment.group_bases import GroupBases
from flexmerge_core.deployment.merge import GroupMerger
from flexmerge_core.deployment.prepared_rows import PreparedRows
from flexmerge_core.errors import InvalidArgumentError

SHAPES = {"a.weight": (6, 5), "a.bias": (6,), "b.weight": (4, 7)}
TASKS = 6
MERGED = [g for k in range(3, TASKS + 1) for g in itertools.combinations(range(TASKS), k)]  # merged by every algorithm


def random_zoo(seed: int) -> FakeZoo:
    """Gaussian task vectors (not exactly summable: a basis computed another way would round differently)."""
    gen = torch.Generator().manual_seed(seed)
    vectors = {n: torch.randn((TASKS, *s), generator=gen) for n, s in SHAPES.items()}
    vectors["a.weight"][:, 0] = 0.0   # exact zeros: the sign election's fallback and empty disjoint means
    return FakeZoo(TASKS, SHAPES, vectors=vectors)


@pytest.fixture
def basis_calls(monkeypatch) -> Counter:
    """Counts every call of every algorithm's basis function, wherever it runs (the store or a merge);
    the wrappers keep the functions' names, so basis keys do not change."""
    calls = Counter()
    for cls in REGISTRY.values():
        if "basis" in vars(cls):
            function = vars(cls)["basis"].__func__

            @functools.wraps(function)
            def counted(block, function=function):
                calls[function.__name__] += 1
                return function(block)
            monkeypatch.setattr(cls, "basis", staticmethod(counted))
    return calls


def spectrum(zoo, spec, names, bases, rows):
    """Every merged group of every block with each algorithm in turn: {(algorithm, block, members): result},
    the algorithm as (name, sorted option pairs)."""
    out = {}
    for name, options in names:
        merger = GroupMerger(zoo, spec, get_algorithm(name, **options), device="cpu", rows=rows, bases=bases)
        for b, members in itertools.product(range(len(spec.blocks)), MERGED):
            out[((name, tuple(sorted(options.items()))), b, members)] = merger.result(b, members)
    return out


def made(algorithm):
    """A fresh algorithm from spectrum's (name, option pairs)."""
    name, options = algorithm
    return get_algorithm(name, **dict(options))


def all_alone(zoo, spec, shared) -> bool:
    """Every result of `shared` is exactly its group merged by a fresh algorithm alone."""
    return all(same(result, alone(zoo, made(algorithm), spec.blocks[b].params, members))
               for (algorithm, b, members), result in shared.items())


def distinct_bases(shared) -> int:
    return len({(b, members, made(algorithm).basis_key) for algorithm, b, members in shared})


def test_consensus_ta_and_avg_scale_the_means_ta_computed(basis_calls):
    zoo, spec = random_zoo(1), FakeSpec(SHAPES, [("a.weight", "a.bias"), ("b.weight",)])
    bases, groups = GroupBases(), len(spec.blocks) * len(MERGED)
    spectrum(zoo, spec, [("ta", {})], bases, PreparedRows())
    assert basis_calls == {"group_mean": groups} and bases.computed == groups
    spectrum(zoo, spec, [("consensus_ta", {}), ("avg", {}), ("ta", {"lam": 0.3})], bases, PreparedRows())
    assert basis_calls == {"group_mean": groups} and bases.computed == groups   # not one mean more
    spectrum(zoo, spec, [("consensus", {}), ("consensus", {"lam": 0.5})], bases, PreparedRows())
    assert basis_calls == {"group_mean": groups, "disjoint_mean": groups} and bases.computed == 2 * groups
    basis_calls.clear()
    spectrum(zoo, spec, [("ta", {}), ("consensus_ta", {})], None, PreparedRows())   # not shared: each its own
    assert basis_calls == {"group_mean": 2 * groups}


SHARING = [[("ta", {}), ("consensus_ta", {}), ("avg", {}), ("ta", {"lam": 0.3})],
         [("consensus_ta", {"lam": 0.7}), ("ta", {"lam": 0.7}), ("avg", {})],
         [("avg", {}), ("consensus_ta", {})],
         [("consensus", {}), ("consensus", {"lam": 0.4, "mask_lambda": 0.3})],
         [("ties", {"keep": 0.5}), ("ties", {"keep": 0.5, "lam": 2.0}), ("consensus", {})],
         [("dare_ta", {"p": 0.5}), ("dare_ta", {"p": 0.5, "lam": 0.9}), ("ta", {})],
         [("dare_ties", {"p": 0.5}), ("dare_ties", {"p": 0.5, "lam": 0.6}), ("dare_ta", {"p": 0.5})]]


@pytest.mark.parametrize("names", SHARING, ids=lambda names: "-".join(n for n, _ in names))
def test_shared_bases_give_exactly_each_group_merged_alone(names):
    zoo, spec = random_zoo(2), FakeSpec(SHAPES)
    bases = GroupBases()
    shared = spectrum(zoo, spec, names, bases, PreparedRows())
    assert bases.computed == distinct_bases(shared) < len(shared)
    assert all_alone(zoo, spec, shared)
    # a handed basis is read, never changed: what the store holds is still each group's basis
    for algorithm, b, members in shared:
        algorithm = made(algorithm)
        rows = group_rows(zoo, algorithm, spec.blocks[b].params, members)
        held = bases.basis(zoo, spec.blocks[b], members, algorithm, "cpu", rows)
        assert all(torch.equal(held[n], v) for n, v in algorithm.group_basis(rows).items())
    assert bases.computed == distinct_bases(shared)   # every one was held


def test_a_result_built_on_a_held_basis_is_its_own_tensor():
    zoo, spec = random_zoo(3), FakeSpec(SHAPES)
    bases = GroupBases()
    GroupMerger(zoo, spec, get_algorithm("ta"), device="cpu", bases=bases).result(0, (0, 1, 2))
    got = GroupMerger(zoo, spec, get_algorithm("avg"), device="cpu", bases=bases).result(0, (0, 1, 2))
    expected = zoo.vectors["a.weight"][:3].mean(dim=0)
    got.unified["a.weight"].add_(1.0)   # a caller changing its result (tensorwise adds theta_pre in place)
    unscaled = get_algorithm("consensus_ta", lam=1.0)
    again = GroupMerger(zoo, spec, unscaled, device="cpu", bases=bases).result(0, (0, 1, 2))
    assert torch.equal(again.unified["a.weight"], expected) and bases.computed == 1


def test_basis_keys_name_the_function_and_the_rows_never_the_scale():
    key = lambda name, **o: get_algorithm(name, **o).basis_key  # noqa: E731
    mean = {key("ta"), key("ta", lam=0.3), key("avg"), key("consensus_ta"),
            key("consensus_ta", lam=2.0, mask_lambda=0.1)}
    assert len(mean) == 1
    assert key("consensus") == key("consensus", lam=0.2, mask_lambda=0.9) not in mean
    assert key("ties") == key("ties", lam=3.0, similarity_on="original") != key("consensus")   # trimmed rows
    assert key("ties") != key("ties", keep=0.5) and key("ties", keep=1.0) != key("consensus")
    assert key("dare_ta") == key("dare_ta", lam=0.5) not in mean | {key("dare_ta", p=0.5), key("dare_ta", seed=1)}
    assert key("dare_ties") not in {key("ties"), key("dare_ta"), key("dare_ties", keep=0.3)}
    assert key("pcb") is key("tsv") is key("emr") is None


def test_different_rows_never_meet_one_basis(basis_calls):
    zoo, spec = random_zoo(4), FakeSpec(SHAPES)
    bases = GroupBases()
    shared = spectrum(zoo, spec, [("ta", {}), ("dare_ta", {"p": 0.5}), ("ties", {"keep": 0.5}), ("consensus", {}),
                                  ("emr", {})], bases, PreparedRows())
    groups = len(spec.blocks) * len(MERGED)
    assert bases.computed == 4 * groups and len(bases.lru) == 4 * groups   # emr stores nothing
    assert basis_calls == {"group_mean": 2 * groups, "disjoint_mean": 2 * groups}
    assert all_alone(zoo, spec, shared)


def test_a_tiny_byte_budget_evicts_and_changes_nothing():
    zoo, spec = random_zoo(5), FakeSpec(SHAPES)
    one_basis = 4 * 6 * 5                                       # a.weight's basis in float32
    bases = GroupBases(budget=2 * one_basis)
    names = [("ta", {}), ("consensus_ta", {}), ("consensus", {}), ("consensus_ta", {"lam": 0.5})]
    shared = spectrum(zoo, spec, names, bases, PreparedRows())
    assert 0 < bases.lru.peak <= 2 * one_basis and bases.lru.evictions > 0
    assert bases.computed > distinct_bases(shared)   # evicted ones were computed again
    assert all_alone(zoo, spec, shared)
    assert len(GroupBases(budget=0).lru) == 0


def test_singletons_and_pairs_of_mask_methods_take_no_basis():
    zoo, spec = random_zoo(6), FakeSpec(SHAPES)
    bases = GroupBases()
    for members in [(1,), (2, 4)]:
        GroupMerger(zoo, spec, get_algorithm("consensus_ta"), device="cpu", bases=bases).result(0, members)
    GroupMerger(zoo, spec, get_algorithm("ta"), device="cpu", bases=bases).result(0, (3,))
    assert bases.computed == 0


def test_an_algorithm_without_a_basis_refuses_one():
    block = {"w": torch.randn(3, 4)}
    with pytest.raises(InvalidArgumentError, match="no basis"):
        get_algorithm("emr").merge(block, (0, 1, 2), basis={"w": torch.zeros(4)})


def test_a_subclass_with_its_own_merge_shares_nothing():
    from flexmerge_core.algorithms.base import MergeResult
    from flexmerge_core.algorithms.ta import TaskArithmetic

    class Summed(TaskArithmetic):
        name = "summed"

        def _merge(self, block, members):
            return MergeResult(unified={n: t.sum(dim=0) for n, t in block.items()})

    assert Summed().basis_key is None and get_algorithm("ta").basis_key is not None
    zoo, spec = random_zoo(7), FakeSpec(SHAPES)
    bases = GroupBases()
    GroupMerger(zoo, spec, get_algorithm("ta"), device="cpu", bases=bases).result(2, (0, 1, 2))
    got = GroupMerger(zoo, spec, Summed(), device="cpu", bases=bases).result(2, (0, 1, 2))
    assert torch.equal(got.unified["b.weight"], zoo.vectors["b.weight"][:3].sum(dim=0)) and bases.computed == 1


def test_pipelines_of_one_zoo_share_bases(tmp_path, monkeypatch, basis_calls):
    from deploy_zoos import evaluable_zoo
    from flexmerge_core.pipeline import Pipeline, PlanSettings

    monkeypatch.setenv("FLEXMERGE_CACHE", str(tmp_path / "cache"))
    zoo, *_ = evaluable_zoo(tmp_path / "zoo", num_tasks=4, seed=1)
    rows, bases = PreparedRows(), GroupBases()
    groups = {}
    for name in ("ta", "consensus_ta"):
        pipeline = Pipeline(zoo, PlanSettings(name), rows=rows, bases=bases)
        merger = pipeline.merger()
        assert merger.bases is bases
        merged = {(e.block, tuple(sorted(e.group_a + e.group_b))) for e in pipeline.plan.events}
        groups[name] = {(b, m) for b, m in merged if len(m) >= 3}
        for b, members in groups[name]:
            merger.result(b, members)
    assert groups["consensus_ta"] and groups["consensus_ta"] <= groups["ta"]
    assert basis_calls == {"group_mean": len(groups["ta"])} == {"group_mean": bases.computed}


def test_a_bumped_results_version_changes_the_key_and_version_zero_keeps_the_old_one():
    """Disk caches of merged groups are keyed by algorithm.key: results of older code are never served."""
    from flexmerge_core.cache import content_hash

    ta = get_algorithm("ta", lam=0.7)
    assert ta.key == content_hash("algorithm", "ta", {"lam": 0.7})   # unchanged algorithms keep their caches
    bumped = get_algorithm("ta", lam=0.7)
    bumped.results_version = 1
    assert bumped.key != ta.key and get_algorithm("tsv").results_version >= 1

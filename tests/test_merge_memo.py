"""GroupMerger: each (block, group, algorithm) result is computed once; preprocessing sees the whole zoo."""
from __future__ import annotations

import pytest
import torch

from algorithm_cases import FakeSpec, FakeZoo
from flexmerge_core.algorithms import ALGORITHM_NAMES, get_algorithm
from flexmerge_core.algorithms.base import flatten_rows as flat
from flexmerge_core.deployment.merge import GroupMerger


SHAPES = {"a.weight": (4, 3), "a.bias": (4,), "b.weight": (3, 3)}


def make(algorithm, num_tasks=5):
    zoo = FakeZoo(num_tasks, SHAPES)
    return zoo, GroupMerger(zoo, FakeSpec(SHAPES), algorithm, device="cpu")


def test_results_are_memoised_per_block_and_group():
    algo = get_algorithm("ta")
    calls = []
    original = algo.merge
    algo.merge = lambda block, members: calls.append(tuple(members)) or original(block, members)
    zoo, merger = make(algo)
    first = merger.result(0, (1, 3))
    assert merger.result(0, [3, 1]) is first
    assert merger.result(1, (1, 3)) is not first
    assert calls == [(1, 3), (1, 3)]
    expected = 1.5 * (zoo.vectors["a.weight"][1] + zoo.vectors["a.weight"][3]) / 2
    assert torch.equal(first.unified["a.weight"], expected)


def test_singletons_keep_raw_vectors_without_preparing():
    zoo, merger = make(get_algorithm("ties"))
    res = merger.result(2, (4,))
    assert torch.equal(merger.algorithm.reconstruct(res, 4)["b.weight"], zoo.vectors["b.weight"][4])
    assert all(tasks is not None for _, tasks in zoo.loads)  # no whole-zoo pass for a singleton


def test_preprocessing_is_prepared_once_over_the_whole_zoo():
    zoo, merger = make(get_algorithm("ties", keep=0.3))
    merger.result(0, (0, 2))
    whole_passes = [names for names, tasks in zoo.loads if tasks is None]
    merger.result(2, (1, 2, 4))
    assert [names for names, tasks in zoo.loads if tasks is None] == whole_passes  # prepared once
    assert len(whole_passes) % len(SHAPES) == 0 and whole_passes[:3] == [(n,) for n in SHAPES]
    reference = get_algorithm("ties", keep=0.3)
    trimmed = reference.preprocess(zoo.vectors)
    expected = reference.merge({"b.weight": trimmed["b.weight"][[1, 2, 4]]}, (1, 2, 4))
    assert torch.equal(merger.result(2, (1, 2, 4)).unified["b.weight"], expected.unified["b.weight"])
    assert torch.equal(flat(trimmed), flat(reference.preprocess_block(zoo.vectors)))


def test_different_hyperparameters_do_not_share_results():
    zoo = FakeZoo(4, SHAPES)
    spec = FakeSpec(SHAPES)
    a = GroupMerger(zoo, spec, get_algorithm("ta", lam=1.0), device="cpu").result(0, (0, 1))
    b = GroupMerger(zoo, spec, get_algorithm("ta", lam=2.0), device="cpu").result(0, (0, 1))
    assert torch.equal(2 * a.unified["a.weight"], b.unified["a.weight"])


class DictCache:
    def __init__(self):
        self.entries = {}

    def load(self, key):
        return self.entries.get(key)

    def store(self, key, result):
        self.entries[key] = result


def test_cache_hook_is_consulted_behind_the_memo():
    zoo, cache = FakeZoo(4, SHAPES), DictCache()
    first = GroupMerger(zoo, FakeSpec(SHAPES), get_algorithm("avg"), cache=cache, device="cpu")
    res = first.result(1, (0, 2, 3))
    assert list(cache.entries.values()) == [res]
    second = GroupMerger(zoo, FakeSpec(SHAPES), get_algorithm("avg"), cache=cache, device="cpu")
    loads = len(zoo.loads)
    assert second.result(1, (0, 2, 3)) is res and len(zoo.loads) == loads
    assert first.cache_key(1, (0, 2, 3)) != first.cache_key(1, (0, 2))


@pytest.mark.parametrize("name", ALGORITHM_NAMES)
def test_all_separate_reconstructs_every_finetuned_vector_exactly(name):
    zoo, merger = make(get_algorithm(name), num_tasks=4)
    for b, names in enumerate(SHAPES):
        for task in range(4):
            rebuilt = merger.algorithm.reconstruct(merger.result(b, (task,)), task)
            assert torch.equal(rebuilt[names], zoo.vectors[names][task])
    if merger.algorithm.storage == "mask":  # pairs are stored as their originals too
        pair = merger.result(0, (1, 3))
        assert torch.equal(merger.algorithm.reconstruct(pair, 3)["a.weight"], zoo.vectors["a.weight"][3])


def test_byte_budget_lru_matches_a_plain_list_reference():
    """Random gets and puts against the textbook rule: the least recently used goes first."""
    import random

    from flexmerge_core.byte_budget_lru import ByteBudgetLRU

    rng = random.Random(0)
    memo, reference, budget = ByteBudgetLRU(100), [], 100        # reference: [(key, bytes)], oldest first
    for _ in range(2000):
        key = rng.randrange(12)
        if rng.random() < 0.5:
            hit = next((item for item in reference if item[0] == key), None)
            assert (memo.get(key) is not None) == (hit is not None)
            if hit:
                reference.remove(hit)
                reference.append(hit)
        else:
            size = rng.choice([5, 20, 40, 101])
            memo.put(key, ("value", key), size)
            reference = [item for item in reference if item[0] != key]
            if size <= budget:
                while sum(b for _, b in reference) + size > budget:
                    reference.pop(0)
                reference.append((key, size))
        assert list(memo._items) == [k for k, _ in reference]
        assert memo.bytes == sum(b for _, b in reference) <= budget
    assert memo.evictions > 0 and memo.peak <= budget


def test_memo_budget_from_the_environment(monkeypatch):
    from flexmerge_core.deployment.memo import MEMO_ENV, default_memo_bytes
    from flexmerge_core.errors import InvalidArgumentError

    monkeypatch.setenv(MEMO_ENV, "3K")
    assert default_memo_bytes() == 3072
    monkeypatch.setenv(MEMO_ENV, "lots")
    with pytest.raises(InvalidArgumentError, match=MEMO_ENV):
        default_memo_bytes()


def test_a_tiny_memo_gives_the_same_curve_and_stays_within_its_budget(tmp_path, monkeypatch):
    from deploy_zoos import evaluable_zoo, plan_for
    from flexmerge_core.deployment.group_cache import GroupResultCache
    from flexmerge_core.evaluation.curve import compute_curve

    monkeypatch.setenv("FLEXMERGE_CACHE", str(tmp_path / "cache"))
    zoo, *_ = evaluable_zoo(tmp_path / "zoo", num_tasks=4, seed=1)
    spec, algorithm, plan = plan_for(zoo, "ties")
    roomy = GroupMerger(zoo, spec, algorithm, device="cpu")
    reference = compute_curve(zoo, plan, algorithm, "all", merger=roomy, use_cache=False).rows
    budget = 8 * 1024
    tiny = GroupMerger(zoo, spec, algorithm, cache=GroupResultCache(), device="cpu", memo_bytes=budget)
    assert compute_curve(zoo, plan, algorithm, "all", merger=tiny, use_cache=False).rows == reference
    assert roomy.memo.evictions == 0 and roomy.memo.peak > budget          # the budget does bind here
    assert 0 < tiny.memo.peak <= budget and tiny.memo.evictions > 0
    part = plan.partition_at(2.0)
    merged = [(b, g) for b, groups in enumerate(part.groups) for g in groups if len(g) > 1]
    for b, group in merged:                                                  # evicted groups come back from disk
        assert all(torch.equal(tiny.result(b, group).unified[n], t) for n, t in roomy.result(b, group).unified.items())
    assert tiny.cache.loads > 0 and tiny.memo.peak <= budget

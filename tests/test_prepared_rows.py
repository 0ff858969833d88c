"""The row cache: each task's (preprocessed) rows of a block computed once, shared by groups, sizes and
algorithms with the same preprocessing, never stale, within its byte budget."""
from __future__ import annotations

import itertools
import os
from collections import Counter

import pytest
import torch

from algorithm_cases import FakeSpec, FakeZoo, alone, same
from flexmerge_core.algorithms import ALGORITHM_NAMES, get_algorithm
from flexmerge_core.deployment.merge import GroupMerger
from flexmerge_core.deployment.prepared_rows import PreparedRows
from flexmerge_core.reused_buffer import ReusedBuffer

SHAPES = {"a.weight": (4, 3), "a.bias": (4,), "b.weight": (3, 3)}
TASKS = 5
ALL_GROUPS = [g for k in range(1, TASKS + 1) for g in itertools.combinations(range(TASKS), k)]


@pytest.mark.parametrize("name", ["ties", "dare_ties", "consensus", "consensus_ta", "tsv", "pcb"])
def test_shared_rows_give_exactly_each_group_computed_alone(name):
    zoo, spec = FakeZoo(TASKS, SHAPES, seed=3), FakeSpec(SHAPES, [("a.weight", "a.bias"), ("b.weight",)])
    options = {"keep": 0.4} if "ties" in name else {}
    merger = GroupMerger(zoo, spec, get_algorithm(name, **options), device="cpu", memo=False, rows=PreparedRows())
    reference = get_algorithm(name, **options)
    for b, block in enumerate(spec.blocks):
        for members in ALL_GROUPS:
            assert same(merger.result(b, members), alone(zoo, reference, block.params, members)), (b, members)


@pytest.mark.parametrize("name", ALGORITHM_NAMES)
def test_rows_stacked_in_one_reused_buffer_give_every_result_unchanged(name):
    """A run of groups stacked in one buffer (as GroupStore's): each result is the group's alone, and stays so
    after every later merge has overwritten the buffer."""
    zoo, spec = FakeZoo(TASKS, SHAPES, seed=8), FakeSpec(SHAPES, [("a.weight", "a.bias"), ("b.weight",)])
    merger = GroupMerger(zoo, spec, get_algorithm(name), device="cpu", memo=False, rows=PreparedRows())
    stacks = ReusedBuffer()
    results = {(b, g): merger.result(b, g, stacks=stacks) for b in range(len(spec.blocks)) for g in ALL_GROUPS}
    reference = get_algorithm(name)
    for (b, members), got in results.items():
        assert same(got, alone(zoo, reference, spec.blocks[b].params, members)), (b, members)


def test_a_merge_that_returns_a_view_of_its_input_is_copied_out_of_the_stacks():
    from flexmerge_core.algorithms.base import MergeResult
    from flexmerge_core.algorithms.ta import TaskArithmetic

    class FirstRow(TaskArithmetic):
        name = "first_row"

        def _merge(self, block, members):
            return MergeResult(unified={n: t[0] for n, t in block.items()})   # views of the stacked rows

    zoo, spec = FakeZoo(TASKS, SHAPES, seed=9), FakeSpec(SHAPES)
    merger = GroupMerger(zoo, spec, FirstRow(), device="cpu", memo=False, rows=PreparedRows())
    stacks = ReusedBuffer()
    first = merger.result(0, (1, 2), stacks=stacks)
    merger.result(0, (3, 4), stacks=stacks)
    assert torch.equal(first.unified["a.weight"], zoo.vectors["a.weight"][1])
    assert not stacks.holds(first.unified["a.weight"])


@pytest.mark.parametrize("name", ["ties", "dare_ties", "tsv"])
def test_preprocessing_runs_once_per_block_and_task_across_a_whole_curve(tmp_path, monkeypatch, name):
    from deploy_zoos import evaluable_zoo, plan_for
    from flexmerge_core.evaluation.curve import compute_curve

    monkeypatch.setenv("FLEXMERGE_CACHE", str(tmp_path / "cache"))
    zoo, *_ = evaluable_zoo(tmp_path / "zoo", num_tasks=4, seed=2)
    spec, algorithm, plan = plan_for(zoo, name)
    calls = Counter()
    original = algorithm.preprocess_block

    def counted(block, tasks=None):
        for t in tasks:
            calls[(tuple(block), t)] += 1
        return original(block, tasks)

    algorithm.preprocess_block = counted
    prepares = []
    algorithm.prepare = lambda stream: prepares.append(stream)
    merger = GroupMerger(zoo, spec, algorithm, device="cpu")
    compute_curve(zoo, plan, algorithm, "all", merger=merger, use_cache=False)
    assert prepares == []                                       # the plan's global pass on this zoo is reused
    merged_blocks = {b for b, groups in enumerate(plan.partition_at(plan.min_size).groups)
                     if any(len(g) > 1 for g in groups)}
    assert merged_blocks and set(calls.values()) == {1}
    assert set(calls) == {(tuple(spec.blocks[b].params), t) for b in merged_blocks for t in range(4)}
    # without the row cache every merged group preprocessed its members again
    without = sum(len(g) for b in merged_blocks for g in {tuple(sorted(e.group_a + e.group_b))
                                                          for e in plan.events if e.block == b})
    assert sum(calls.values()) < without


def test_algorithms_with_the_same_preprocessing_share_rows():
    zoo, spec = FakeZoo(TASKS, SHAPES, seed=4), FakeSpec(SHAPES)
    rows = PreparedRows()
    first = GroupMerger(zoo, spec, get_algorithm("ta"), device="cpu", rows=rows)
    first.result(0, (0, 2, 3))
    assert rows.loaded == TASKS and len(zoo.loads) == 1           # the whole block on first touch
    for name in ("consensus_ta", "avg", "emr", "consensus", "pcb"):
        other = GroupMerger(zoo, spec, get_algorithm(name), device="cpu", rows=rows)
        group_loads = [tasks for _, tasks in zoo.loads if tasks is not None]
        assert same(other.result(0, (1, 2, 4)), alone(zoo, get_algorithm(name), ("a.weight",), (1, 2, 4)))
        assert [tasks for _, tasks in zoo.loads if tasks is not None] == group_loads   # pcb's prepare: tasks=None
    preprocessed = rows.preprocessed
    ties = GroupMerger(zoo, spec, get_algorithm("ties", keep=0.5), device="cpu", rows=rows)
    got = ties.result(0, (0, 1))              # trimmed rows are not the raw ones: the held raw rows are trimmed
    assert same(got, alone(zoo, get_algorithm("ties", keep=0.5), ("a.weight",), (0, 1)))
    assert rows.loaded == TASKS and rows.preprocessed == preprocessed + TASKS


def test_dare_ties_trims_the_rows_dare_ta_dropped():
    zoo, spec = FakeZoo(TASKS, SHAPES, seed=5), FakeSpec(SHAPES)
    rows = PreparedRows()
    GroupMerger(zoo, spec, get_algorithm("dare_ta", p=0.5, seed=7), device="cpu", rows=rows).result(2, (0, 4))
    algorithm = get_algorithm("dare_ties", p=0.5, seed=7, keep=0.5)
    drops = []
    original = algorithm._input_vectors
    algorithm._input_vectors = lambda block, tasks: drops.append(tasks) or original(block, tasks)
    got = GroupMerger(zoo, spec, algorithm, device="cpu", rows=rows).result(2, (0, 1, 4))
    assert drops == []  # prepare lists kept entries (dare.kept_rows), the merge trims dare_ta's held rows
    assert rows.loaded == TASKS
    assert same(got, alone(zoo, get_algorithm("dare_ties", p=0.5, seed=7, keep=0.5), ("b.weight",), (0, 1, 4)))
    other_seed = GroupMerger(zoo, spec, get_algorithm("dare_ties", p=0.5, seed=8), device="cpu", rows=rows)
    other_seed.result(2, (0, 1, 4))
    assert rows.loaded == 2 * TASKS


def test_preprocessing_keys_name_what_rows_depend_on():
    key = lambda name, **o: get_algorithm(name, **o).preprocessing_key  # noqa: E731
    raw = {key(n) for n in ("avg", "ta", "consensus", "consensus_ta", "emr")}
    assert len(raw) == 1 and key("ta", lam=0.3) in raw
    assert key("pcb") == key("pcb", keep=0.2, lam=0.5) not in raw | {key("pcb", clamp_quantile=1e-3)}  # its clamp bounds
    assert get_algorithm("pcb").input_key in raw                 # finished from held raw rows, not read again
    assert key("tsv") == key("tsv", alpha=0.5) not in raw     # its rows carry each task's factorisation
    assert key("ties") == key("ties", lam=2.0, similarity_on="original") != key("ties", keep=0.2)
    assert key("ties") not in raw and key("dare_ta") not in raw | {key("ties")}
    assert key("dare_ta", p=0.5) != key("dare_ta") != key("dare_ta", seed=1)
    assert get_algorithm("dare_ties", keep=0.3).input_key == get_algorithm("dare_ta").input_key == key("dare_ta")
    assert key("dare_ties") != key("ties") and key("dare_ties") != key("dare_ta")


def test_an_unnamed_preprocessing_override_is_shared_with_nobody():
    from flexmerge_core.algorithms.ta import TaskArithmetic

    class Doubled(TaskArithmetic):
        name = "doubled"

        def preprocess_block(self, block, tasks=None):
            return {f"{n}/twice": 2 * t for n, t in block.items()}    # not parameter names

    algorithm = Doubled()
    assert algorithm.preprocessing_key not in {get_algorithm("ta").preprocessing_key, Doubled(lam=1.0).preprocessing_key}
    zoo, spec = FakeZoo(TASKS, SHAPES, seed=6), FakeSpec(SHAPES)
    rows = PreparedRows()
    GroupMerger(zoo, spec, get_algorithm("ta"), device="cpu", rows=rows).result(1, (0, 1))
    got = GroupMerger(zoo, spec, algorithm, device="cpu", rows=rows).result(1, (0, 1, 3))
    assert torch.equal(got.unified["a.bias/twice"], 1.5 * 2 * zoo.vectors["a.bias"][[0, 1, 3]].mean(dim=0))


def test_a_rewritten_checkpoint_never_gets_stale_rows(tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file

    from deploy_zoos import evaluable_zoo, plan_for
    from flexmerge_core.zoo import open_zoo

    monkeypatch.setenv("FLEXMERGE_CACHE", str(tmp_path / "cache"))
    zoo, *_ = evaluable_zoo(tmp_path / "zoo", num_tasks=3, seed=3)
    spec, algorithm, _ = plan_for(zoo, "ties")
    rows = PreparedRows()
    before = GroupMerger(zoo, spec, algorithm, device="cpu", rows=rows).result(0, (0, 1, 2))
    path = zoo.root / zoo.manifest.tasks[1].checkpoint
    stat = path.stat()
    save_file({k: v + 0.5 for k, v in load_file(path).items()}, str(path))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    changed = open_zoo(zoo.root)
    assert changed.fingerprint != zoo.fingerprint
    after = GroupMerger(changed, spec, algorithm, device="cpu", rows=rows).result(0, (0, 1, 2))   # prepared again
    fresh = GroupMerger(changed, spec, get_algorithm("ties"), device="cpu", memo=False).result(0, (0, 1, 2))
    assert same(after, fresh) and not same(after, before)


def test_the_byte_budget_is_respected_and_results_do_not_change():
    zoo, spec = FakeZoo(TASKS, SHAPES, seed=7), FakeSpec(SHAPES)
    one_row = 4 * 4 * 3                                         # a task's a.weight row in float32
    rows = PreparedRows(budget=3 * one_row)
    merger = GroupMerger(zoo, spec, get_algorithm("ties", keep=0.5), device="cpu", memo=False, rows=rows)
    reference = get_algorithm("ties", keep=0.5)
    for members in ALL_GROUPS:
        assert same(merger.result(0, members), alone(zoo, reference, ("a.weight",), members))
    assert 0 < rows.lru.peak <= 3 * one_row and rows.lru.evictions > 0
    assert rows.loaded < sum(len(g) for g in ALL_GROUPS)       # what fits is still reused
    roomy = PreparedRows(budget=TASKS * one_row)
    GroupMerger(zoo, spec, get_algorithm("ta"), device="cpu", rows=roomy).result(0, (1, 2))
    assert roomy.loaded == TASKS and roomy.lru.bytes == TASKS * one_row   # the whole block fits: loaded at once


def test_tsv_rows_are_budgeted_with_their_factors():
    zoo, spec = FakeZoo(TASKS, SHAPES, seed=5), FakeSpec(SHAPES, [("a.weight", "a.bias")])
    algorithm = get_algorithm("tsv")
    each = algorithm.row_bytes([SHAPES["a.weight"], SHAPES["a.bias"]])
    assert each > 4 * (12 + 4)                                  # the factors beside the vectors
    rows = PreparedRows(budget=TASKS * each)
    merger = GroupMerger(zoo, spec, algorithm, device="cpu", memo=False, rows=rows)
    for members in ALL_GROUPS[TASKS:]:                          # every merged group of the block
        merger.result(0, members)
    assert rows.preprocessed == TASKS and rows.lru.bytes == TASKS * each   # each task factorised once
    short = PreparedRows(budget=TASKS * each - 1)               # the block no longer fits: members only
    GroupMerger(zoo, spec, algorithm, device="cpu", memo=False, rows=short).result(0, (1, 2))
    assert short.preprocessed == 2

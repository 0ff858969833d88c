"""The merge plan against a naive reference loop, plus budget semantics, orders and serialisation."""
import json
import math

import numpy as np
import pytest

from flexmerge_core.errors import BudgetError, InvalidArgumentError
from flexmerge_core.planning.plan import MergePlan, plan_from_similarities


def linkage_similarity(sim, a, b, linkage):
    """Textbook group similarity from the original pairwise matrix (avg: exactly rounded mean)."""
    cross = [sim[i][j] for i in a for j in b]
    if linkage == "min":
        return min(cross)
    if linkage == "max":
        return max(cross)
    return math.fsum(cross) / len(cross)


def naive_plan(num_blocks, num_tasks, group_similarity):
    """Each step, among all blocks, merge the globally most similar pair; ties -> earlier block ->
    smallest (min id a, min id b). Returns (block, group_a, group_b, similarity) per event."""
    groups = [[(t,) for t in range(num_tasks)] for _ in range(num_blocks)]
    events = []
    while any(len(g) > 1 for g in groups):
        best = None
        for b in range(num_blocks):
            current = sorted(groups[b])
            for x in range(len(current)):
                for y in range(x + 1, len(current)):
                    s = group_similarity(b, current[x], current[y])
                    if best is None or s > best[3]:
                        best = (b, current[x], current[y], s)
        b, a, c, _ = best
        groups[b].remove(a)
        groups[b].remove(c)
        groups[b].append(tuple(sorted(a + c)))
        events.append(best)
    return events


def random_sims(rng, num_blocks, num_tasks, quantised):
    x = rng.uniform(-1, 1, size=(num_blocks, num_tasks, num_tasks))
    if quantised:
        x = np.round(x * 4) / 4                     # few distinct values: many exact ties
    sims = np.triu(x, 1) + np.transpose(np.triu(x, 1), (0, 2, 1))
    for b in range(num_blocks):
        np.fill_diagonal(sims[b], 1.0)
    zero_blocks = rng.random(num_blocks) < 0.2      # all-zero task vectors: similarity 0 everywhere
    sims[zero_blocks] = 0.0
    return sims


def event_tuples(plan):
    return [(e.block, e.group_a, e.group_b, e.similarity) for e in plan.events]


@pytest.mark.parametrize("linkage", ["min", "max", "avg"])
def test_greedy_plan_equals_naive_loop_event_for_event(linkage):
    rng = np.random.default_rng({"min": 1, "max": 2, "avg": 3}[linkage])
    shapes = [(20, 12), (1, 12), (20, 2)] + [(int(rng.integers(1, 9)), int(rng.integers(2, 9))) for _ in range(25)]
    for case, (num_blocks, num_tasks) in enumerate(shapes):
        sims = random_sims(rng, num_blocks, num_tasks, quantised=case % 2 == 0)
        plan = plan_from_similarities(sims, [1] * num_blocks, linkage=linkage)
        lists = sims.tolist()
        expected = naive_plan(num_blocks, num_tasks,
                              lambda b, a, c: linkage_similarity(lists[b], a, c, linkage))
        assert event_tuples(plan) == expected, f"case {case}: {num_blocks} blocks x {num_tasks} tasks"
        assert [e.step for e in plan.events] == list(range(num_blocks * (num_tasks - 1)))


def test_uni_linkage_equals_naive_loop_with_merged_vectors():
    rng = np.random.default_rng(11)
    num_blocks, num_tasks = 6, 7
    vectors = rng.normal(size=(num_blocks, num_tasks, 5))
    vectors[2] = 0.0
    vectors[4, 3] = vectors[4, 5]                               # a tie inside a block

    def uni(b, a, c):                                           # merged vector = mean of the members
        u, v = vectors[b, list(a)].mean(0), vectors[b, list(c)].mean(0)
        return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v) + 1e-8))

    sims = np.zeros((num_blocks, num_tasks, num_tasks))
    plan = plan_from_similarities(sims, [3] * num_blocks, linkage="uni",
                                  group_similarity=lambda b: lambda a, c: uni(b, a, c))
    assert event_tuples(plan) == naive_plan(num_blocks, num_tasks, uni)


def test_uni_without_merged_vectors_is_refused():
    with pytest.raises(InvalidArgumentError, match="uni"):
        plan_from_similarities(np.zeros((1, 3, 3)), [1], linkage="uni")


def small_plan(storage="standard", order="greedy", seed=0, num_tasks=5):
    rng = np.random.default_rng(5)
    return plan_from_similarities(random_sims(rng, 4, num_tasks, quantised=False), [10, 3, 7, 1],
                                  storage=storage, order=order, seed=seed)


def shortest_prefix(plan, budget):
    sizes = [plan.max_size] + [e.size_after for e in plan.events]
    return next((k for k, s in enumerate(sizes) if s <= budget), len(plan.events))


@pytest.mark.parametrize("storage", ["standard", "mask"])
def test_partition_at_takes_the_shortest_prefix_within_budget(storage):
    plan = small_plan(storage)
    sizes = plan.achievable_sizes()
    assert sizes[0] == 5 and sizes == sorted(set(sizes), reverse=True)
    budgets = sizes + [s + 1e-9 for s in sizes] + [s - 1e-9 for s in sizes] + list(np.linspace(0.5, 6, 40))
    for budget in budgets:
        partition = plan.partition_at(budget)
        k = shortest_prefix(plan, budget)
        assert partition.num_events == k
        assert partition.size == (plan.events[k - 1].size_after if k else 5.0)
        assert partition.budget_met == (partition.size <= budget)
        assert all(len(g) == 5 for g in ([t for grp in block for t in grp] for block in partition.groups))


def test_partition_at_extremes():
    plan = small_plan()
    for budget in (5, 5.0, 7, 1e9):
        p = plan.partition_at(budget)
        assert p.num_events == 0 and p.size == 5 and p.budget_met
        assert p.groups == [[(t,) for t in range(5)]] * 4
    p = plan.partition_at(0.5)
    assert p.num_events == len(plan.events) and not p.budget_met and p.size == plan.min_size == 1.0
    assert p.groups == [[(0, 1, 2, 3, 4)]] * 4
    assert p.group_of(2, 3) == (0, 1, 2, 3, 4)


def test_mask_plan_cannot_go_below_two_plus_m_over_32():
    plan = small_plan("mask")
    assert plan.min_size == pytest.approx(2 + 5 / 32)
    p = plan.partition_at(1.5)
    assert not p.budget_met and p.size == plan.min_size


@pytest.mark.parametrize("budget", [float("nan"), 0, -1.0, "2", None, True, float("inf"), [2]])
def test_bad_budgets_raise(budget):
    with pytest.raises(BudgetError):
        small_plan().partition_at(budget)


def test_partition_groups_are_sorted_and_lookup_works():
    plan = small_plan()
    p = plan.partition_at(3.0)
    for block in p.groups:
        assert block == sorted(block) and all(g == tuple(sorted(g)) for g in block)
    assert p.group_of(0, p.groups[0][-1][0]) == p.groups[0][-1]
    with pytest.raises(InvalidArgumentError):
        p.group_of(0, 99)


@pytest.mark.parametrize("order", ["left-to-right", "right-to-left"])
def test_sequential_orders_finish_one_block_before_the_next(order):
    greedy, plan = small_plan(), small_plan(order=order)
    blocks = [e.block for e in plan.events]
    expected = [b for b in (range(4) if order == "left-to-right" else reversed(range(4))) for _ in range(4)]
    assert blocks == expected
    for b in range(4):   # within a block, the linkage decides, exactly as in the greedy plan
        assert [t for t in event_tuples(plan) if t[0] == b] == [t for t in event_tuples(greedy) if t[0] == b]


def test_random_order_is_seeded_and_valid():
    a, b, c = small_plan(order="random", seed=3), small_plan(order="random", seed=3), small_plan(order="random", seed=4)
    assert a.events == b.events
    assert event_tuples(a) != event_tuples(c)
    assert sorted(e.block for e in a.events) == sorted(e.block for e in small_plan().events)
    assert a.partition_at(0.1).groups == [[(0, 1, 2, 3, 4)]] * 4
    assert a.min_size == 1.0


def test_json_round_trip():
    plan = small_plan("mask", order="random", seed=2)
    again = MergePlan.from_json(json.loads(json.dumps(plan.to_json())))
    assert again == plan
    with pytest.raises(InvalidArgumentError):
        MergePlan.from_json({"format": "something else"})


@pytest.mark.parametrize("kwargs, match", [({"linkage": "single"}, "linkage"), ({"order": "zigzag"}, "order"),
                                           ({"seed": -1}, "seed"), ({"storage": "bits"}, "storage")])
def test_bad_options_raise(kwargs, match):
    with pytest.raises(InvalidArgumentError, match=match):
        plan_from_similarities(np.zeros((2, 3, 3)), [1, 1], **kwargs)


def test_non_finite_similarities_are_rejected():
    sims = np.zeros((1, 3, 3))
    sims[0, 1, 2] = np.nan
    with pytest.raises(InvalidArgumentError, match="NaN"):
        plan_from_similarities(sims, [1])

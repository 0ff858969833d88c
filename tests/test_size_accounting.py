"""Size in model units (ALGORITHMS.md section 1) against a brute-force count of stored parameters."""
from fractions import Fraction

import numpy as np
import pytest

from flexmerge_core.errors import InvalidArgumentError
from flexmerge_core.planning.plan import plan_from_similarities, size_of_partition


def stored_parameters(groups, numels, storage):
    """Enumerate every stored tensor of a deployment and add up its parameters (bits / 32 for masks)."""
    stored = Fraction(0)
    for block_groups, n in zip(groups, numels):
        pretrained_stored = False
        for group in block_groups:
            if storage == "standard" or len(group) <= 2:
                tensors = [n] if storage == "standard" else [n] * len(group)   # merged block / originals
            else:
                tensors = [n] + [Fraction(n, 32)] * len(group)                 # unified + one 1-bit mask each
                if not pretrained_stored:
                    tensors.append(n)                                           # pretrained block, once
                    pretrained_stored = True
            stored += sum(tensors, Fraction(0))
    return stored / sum(numels)


def random_partition(rng, num_tasks):
    labels = rng.integers(0, rng.integers(1, num_tasks + 1), size=num_tasks)
    groups = {}
    for task, label in enumerate(labels):
        groups.setdefault(int(label), []).append(task)
    return sorted(tuple(g) for g in groups.values())


def test_worked_example_from_algorithms_md():
    size = size_of_partition([[(0, 1, 2)], [(0,), (1,), (2,)]], [4, 2], "mask")
    assert size == pytest.approx((4 * (2 + 3 / 32) + 3 * 2) / 6)
    assert round(size, 3) == 2.396


@pytest.mark.parametrize("storage", ["standard", "mask"])
def test_size_of_partition_matches_brute_force(storage):
    rng = np.random.default_rng(7)
    for _ in range(300):
        num_tasks = int(rng.integers(1, 10))
        numels = [int(n) for n in rng.integers(1, 1000, size=int(rng.integers(1, 6)))]
        groups = [random_partition(rng, num_tasks) for _ in numels]
        assert size_of_partition(groups, numels, storage) == float(stored_parameters(groups, numels, storage))


@pytest.mark.parametrize("storage", ["standard", "mask"])
def test_event_sizes_match_brute_force_of_each_prefix(storage):
    rng = np.random.default_rng(3)
    numels = [5, 17, 2, 40]
    plan = plan_from_similarities(rng.uniform(-1, 1, size=(4, 6, 6)), numels, storage=storage)
    groups = [[(t,) for t in range(6)] for _ in numels]
    for event in plan.events:
        block = groups[event.block]
        block.remove(event.group_a)
        block.remove(event.group_b)
        block.append(tuple(sorted(event.group_a + event.group_b)))
        assert event.size_after == float(stored_parameters(groups, numels, storage))


def test_extremes_of_each_storage_rule():
    numels = [3, 9]
    num_tasks = 30
    separate = [[(t,) for t in range(num_tasks)] for _ in numels]
    merged = [[tuple(range(num_tasks))] for _ in numels]
    assert size_of_partition(separate, numels, "standard") == num_tasks
    assert size_of_partition(separate, numels, "mask") == num_tasks
    assert size_of_partition(merged, numels, "standard") == 1
    assert size_of_partition(merged, numels, "mask") == pytest.approx(2 + 30 / 32)


def test_bad_storage_or_shape_is_rejected():
    with pytest.raises(InvalidArgumentError, match="storage"):
        size_of_partition([[(0,)]], [1], "bits")
    with pytest.raises(InvalidArgumentError, match="blocks"):
        size_of_partition([[(0,)]], [1, 2], "standard")

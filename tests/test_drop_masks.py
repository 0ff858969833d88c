"""DARE's drop-mask store: the same bits as drawing directly, drawn once, within its byte budget."""
from __future__ import annotations

import pytest
import torch

from algorithm_cases import reference_dare
from flexmerge_core.algorithms import drop_masks, get_algorithm
from flexmerge_core.algorithms.dare import drop_and_rescale
from flexmerge_core.algorithms.drop_masks import DropMaskStore
from flexmerge_core.errors import InvalidArgumentError

SHAPES = {"w": (5, 13), "b": (7,), "k": (3, 3, 2, 5), "one": (1,)}   # 65, 7, 90, 1 entries: odd


@pytest.fixture
def draws(monkeypatch):
    """Counts the generators drop_masks constructs (one per mask drawn)."""
    made = []
    real = drop_masks.drop_generator
    monkeypatch.setattr(drop_masks, "drop_generator", lambda *key: made.append(key) or real(*key))
    return made


def block(dtype, rows=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn((rows,) + s, generator=gen, dtype=dtype) for n, s in SHAPES.items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("p, seed", [(0.0, 0), (0.3, 1), (0.5, 7), (0.9, 2 ** 40)])
def test_stored_masks_give_the_direct_draws(dtype, p, seed, draws):
    store = DropMaskStore(budget=1 << 20)
    x, tasks = block(dtype, seed=seed % 97), [4, 0, 9]
    expected = reference_dare(x, tasks, p, seed)
    for _ in range(2):   # drawn, then unpacked from the store
        got = drop_and_rescale(x, tasks, p, seed, masks=store)
        for n in x:
            assert got[n].dtype == dtype and torch.equal(got[n], expected[n])
    assert len(draws) == len(SHAPES) * len(tasks) == len(store)


def test_a_second_pass_draws_nothing_and_other_keys_draw_anew(draws):
    store = DropMaskStore(budget=1 << 20)
    x = block(torch.float32)
    drop_and_rescale(x, None, 0.9, 3, masks=store)
    first = len(draws)
    drop_and_rescale(x, None, 0.9, 3, masks=store)
    drop_and_rescale({n: t[1:2] for n, t in x.items()}, [1], 0.9, 3, masks=store)
    assert first == len(SHAPES) * 3 and len(draws) == first
    drop_and_rescale(x, None, 0.8, 3, masks=store)     # another p, another seed: other masks
    drop_and_rescale(x, None, 0.9, 4, masks=store)
    assert len(draws) == 3 * first


def test_the_store_stays_within_its_budget_and_evicted_masks_are_the_same(draws):
    packed = sum(-(-torch.Size(s).numel() // 8) for s in SHAPES.values())   # 9 + 1 + 12 + 1 bytes a task
    store = DropMaskStore(budget=2 * packed)                                  # room for two tasks of four
    x = block(torch.float64, rows=4)
    expected = reference_dare(x, [0, 1, 2, 3], 0.6, 5)

    def read(task):
        got = drop_and_rescale({n: t[task:task + 1] for n, t in x.items()}, [task], 0.6, 5, masks=store)
        assert all(torch.equal(got[n][0], expected[n][task]) for n in x)
        assert store.nbytes <= 2 * packed

    for _ in range(2):
        for task in range(4):
            read(task)
    assert len(draws) == 2 * 4 * len(SHAPES) and store.nbytes == 2 * packed   # every read drew
    read(3)
    read(2)
    assert len(draws) == 2 * 4 * len(SHAPES)   # the two most recent tasks are kept
    read(0)
    assert len(draws) == 2 * 4 * len(SHAPES) + len(SHAPES)


def test_a_mask_larger_than_the_budget_is_drawn_but_not_kept(draws):
    store = DropMaskStore(budget=8)
    mask = store.drop_mask(1, 2, "w", 0.5, (100,))
    assert torch.equal(mask, drop_masks.draw_drop_mask(1, 2, "w", 0.5, (100,)))
    assert len(store) == 0 and store.nbytes == 0


def test_the_budget_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(drop_masks.BUDGET_ENV, "3M")
    assert drop_masks.default_budget() == 3 << 20
    monkeypatch.setenv(drop_masks.BUDGET_ENV, "0")
    assert drop_masks.default_budget() == 0
    monkeypatch.setenv(drop_masks.BUDGET_ENV, "lots")
    with pytest.raises(InvalidArgumentError, match=drop_masks.BUDGET_ENV):
        drop_masks.default_budget()
    monkeypatch.delenv(drop_masks.BUDGET_ENV)
    monkeypatch.setattr(drop_masks, "available_memory", lambda: 8 << 30)
    assert drop_masks.default_budget() == 1 << 30


def test_dare_draws_each_mask_once_per_process(monkeypatch, draws):
    monkeypatch.setattr(drop_masks, "_shared", None)
    monkeypatch.setenv(drop_masks.BUDGET_ENV, "1M")
    x = block(torch.float32)
    first = get_algorithm("dare_ta", p=0.5).preprocess_block(x)
    again = get_algorithm("dare_ta", p=0.5).preprocess_block(x)
    assert all(torch.equal(first[n], again[n]) for n in x)
    assert len(draws) == len(SHAPES) * 3 and drop_masks.shared_drop_masks().budget == 1 << 20


def test_prefetch_draws_each_missing_mask_once_on_threads_and_only_when_all_fit(draws, monkeypatch):
    monkeypatch.setattr(drop_masks, "DRAW_THREADS", 3)
    tasks, shape = [0, 1, 2, 5], (5, 13)            # 9 bytes a packed mask
    small = DropMaskStore(budget=4 * 9 - 1)
    small.prefetch(3, tasks, "w", 0.7, shape)
    assert draws == [] and len(small) == 0
    store = DropMaskStore(budget=1 << 20)
    store.drop_mask(3, 1, "w", 0.7, shape)           # one already stored: not drawn again
    store.prefetch(3, tasks, "w", 0.7, shape)
    assert len(draws) == 4 and len(store) == 4
    got = [store.drop_mask(3, task, "w", 0.7, shape) for task in tasks]
    assert len(draws) == 4
    assert all(torch.equal(mask, drop_masks.draw_drop_mask(3, task, "w", 0.7, shape)) for mask, task in zip(got, tasks))

"""Channel Merging and whole-model clustering: k-means against a vector-space reference, plans, sizes."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.cluster.hierarchy as hierarchy
import torch

from algorithm_cases import FakeSpec, FakeZoo
from flexmerge_core.algorithms import get_algorithm
from flexmerge_core.planning.baselines import _seeded_rng, channel_merging_plan, cosine_kmeans, whole_model_plan
from flexmerge_core.errors import InvalidArgumentError
from flexmerge_core.planning.plan import size_of_partition
from flexmerge_core.planning.similarity import cosine_from_gram


def reference_kmeans(vectors: np.ndarray, k: int, rng: np.random.Generator) -> list:
    """Cosine k-means on explicit unit vectors, with the documented seeding draws and repair rule."""
    m = len(vectors)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    units = vectors / (norms + 1e-8)
    chosen = [int(rng.integers(m))]
    while len(chosen) < k:
        dist2 = np.array([min(np.sum((units[i] - units[c]) ** 2) for c in chosen) for i in range(m)])
        dist2[chosen] = 0.0
        free = [t for t in range(m) if t not in chosen]
        weights = dist2[free] if dist2[free].sum() > 0 else np.ones(len(free))
        chosen.append(free[int(rng.choice(len(free), p=weights / weights.sum()))])
    centres = units[chosen].copy()
    for _ in range(100):
        cos = np.array([[u @ c / (np.linalg.norm(c) or 1.0) for c in centres] for u in units])
        labels = cos.argmax(axis=1)
        for j in range(k):
            if not (labels == j).any():
                counts = np.bincount(labels, minlength=k)
                own = np.array([cos[i, labels[i]] if counts[labels[i]] > 1 else np.inf for i in range(m)])
                labels[int(np.argmin(own))] = j
        new = np.array([units[labels == j].mean(axis=0) for j in range(k)])
        new = np.array([c / n if (n := np.linalg.norm(c)) > 0 else c for c in new])
        old = np.array([c / n if (n := np.linalg.norm(c)) > 0 else c for c in centres])
        centres = new
        if np.linalg.norm(new - old, axis=1).max() < 1e-4:
            break
    return sorted(tuple(np.flatnonzero(labels == j).tolist()) for j in range(k))


@pytest.mark.parametrize("seed", range(6))
def test_cosine_kmeans_matches_vector_space_reference(seed):
    gen = np.random.default_rng(seed)
    m = 4 + seed
    centres = gen.normal(size=(3, 20))
    vectors = centres[gen.integers(3, size=m)] + 0.6 * gen.normal(size=(m, 20))
    unit_gram = cosine_from_gram(torch.from_numpy(vectors @ vectors.T))
    for k in range(1, m + 1):
        got = cosine_kmeans(unit_gram, k, _seeded_rng("t", seed, k))
        assert got == reference_kmeans(vectors, k, _seeded_rng("t", seed, k))
        assert len(got) == k and sorted(t for g in got for t in g) == list(range(m))


def test_cosine_kmeans_finds_separated_directions_and_keeps_k_clusters_for_duplicates():
    base = np.eye(6)[:3] * 4.0
    vectors = np.concatenate([base[[0, 0, 1, 1, 2, 2]] + 0.01 * np.arange(36).reshape(6, 6) / 36, np.zeros((1, 6))])
    groups = cosine_kmeans(cosine_from_gram(torch.from_numpy(vectors @ vectors.T)), 3, _seeded_rng("sep"))
    label = {t: i for i, g in enumerate(groups) for t in g}
    assert label[0] == label[1] and label[2] == label[3] and label[4] == label[5]
    assert len({label[0], label[2], label[4]}) == 3
    same = np.ones((5, 4))
    for k in range(1, 6):
        assert len(cosine_kmeans(cosine_from_gram(torch.from_numpy(same @ same.T)), k, _seeded_rng("dup", k))) == k


SHAPES = {"a.weight": (4, 3), "a.bias": (4,), "b.weight": (3, 3)}


def clustered_zoo(num_tasks=6, seed=0):
    """Tasks 0-2 and 3-5 point in two different directions in every tensor."""
    gen = torch.Generator().manual_seed(seed)
    vectors = {}
    for name, shape in SHAPES.items():
        directions = torch.randn(2, *shape, generator=gen)
        noise = 0.2 * torch.randn(num_tasks, *shape, generator=gen)
        vectors[name] = directions[[0, 0, 0, 1, 1, 1][:num_tasks]] + noise
    return FakeZoo(num_tasks, SHAPES, vectors=vectors)


def test_channel_merging_plan_integer_sizes_and_partitions():
    zoo = clustered_zoo()
    plan = channel_merging_plan(zoo, FakeSpec(SHAPES), get_algorithm("ties"), seed=3)
    assert plan.achievable_sizes() == [6.0, 5.0, 4.0, 3.0, 2.0, 1.0]
    two = plan.partition_at(2.7)
    assert two.size == 2.0 and two.budget_met and two.num_events == 4
    assert all(groups == [(0, 1, 2), (3, 4, 5)] for groups in two.groups)
    assert plan.partition_at(100).groups == [[(t,) for t in range(6)]] * 3
    low = plan.partition_at(0.5)
    assert low.size == 1.0 and not low.budget_met
    for groups in plan.partition_at(3).groups:  # three clusters that never mix the two directions
        assert len(groups) == 3 and all(set(g) <= {0, 1, 2} or set(g) <= {3, 4, 5} for g in groups)


def test_channel_merging_validates_spec_and_algorithm():
    zoo = clustered_zoo()
    with pytest.raises(InvalidArgumentError, match="parameter"):
        channel_merging_plan(zoo, FakeSpec(SHAPES, groups=[("a.weight", "a.bias"), ("b.weight",)]),
                             get_algorithm("avg"))
    with pytest.raises(InvalidArgumentError, match="pcb"):
        channel_merging_plan(zoo, FakeSpec(SHAPES), get_algorithm("pcb"))


def test_channel_merging_is_seeded():
    gen = torch.Generator().manual_seed(1)
    zoo = FakeZoo(7, SHAPES, vectors={n: torch.randn(7, *s, generator=gen) for n, s in SHAPES.items()})
    first = channel_merging_plan(zoo, FakeSpec(SHAPES), get_algorithm("avg"), seed=5).partition_at(3)
    again = channel_merging_plan(zoo, FakeSpec(SHAPES), get_algorithm("avg"), seed=5).partition_at(3)
    assert first.groups == again.groups


@pytest.mark.parametrize("linkage, method", [("min", "complete"), ("max", "single"), ("avg", "average")])
def test_whole_model_clustering_matches_scipy(linkage, method):
    gen = torch.Generator().manual_seed(7)
    zoo = FakeZoo(7, SHAPES, vectors={n: torch.randn(7, *s, generator=gen) for n, s in SHAPES.items()})
    spec = FakeSpec(SHAPES, groups=[("a.weight", "a.bias"), ("b.weight",)])
    plan = whole_model_plan(zoo, spec, get_algorithm("ta"), linkage=linkage)
    whole = np.concatenate([zoo.vectors[n].reshape(7, -1).double().numpy() for n in SHAPES], axis=1)
    unit = whole / np.linalg.norm(whole, axis=1, keepdims=True)
    distance = np.clip(1 - unit @ unit.T, 0, None)
    np.fill_diagonal(distance, 0)
    tree = hierarchy.linkage(distance[np.triu_indices(7, 1)], method=method)
    for k in range(1, 8):
        labels = hierarchy.cut_tree(tree, n_clusters=k)[:, 0]
        expected = sorted(tuple(np.flatnonzero(labels == c).tolist()) for c in set(labels.tolist()))
        partition = plan.partition_at(k)
        assert partition.groups == [expected, expected] and partition.size == k


def test_whole_model_clustering_with_a_mask_algorithm_uses_mask_sizes():
    zoo = clustered_zoo()
    spec = FakeSpec(SHAPES)
    plan = whole_model_plan(zoo, spec, get_algorithm("emr"))
    numels = [b.numel for b in spec.blocks]
    assert plan.min_size == pytest.approx(2 + 6 / 32)
    for k in range(1, 7):
        assert plan.size_at(k) == size_of_partition(plan.groups_at(k), numels, "mask")
    assert plan.achievable_sizes()[0] == 6.0 and plan.achievable_sizes() == sorted(plan.achievable_sizes(), reverse=True)

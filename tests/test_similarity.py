"""Per-block cosine similarity against a textbook cosine computed in float64 numpy."""
import numpy as np
import pytest
import torch

from flexmerge_core.algorithms import get_algorithm
from flexmerge_core.planning.blocks import build_blocks
from flexmerge_core.planning.similarity import GRAM_CHUNK_COLUMNS, block_similarities, cosine_from_gram, gram_matrix
from plan_zoos import block_rows, random_zoo, textbook_cosine


def test_gram_cosine_matches_textbook_across_chunks_and_tensors():
    gen = torch.Generator().manual_seed(0)
    block = {"w": torch.randn(4, 3, GRAM_CHUNK_COLUMNS // 2 + 7, generator=gen),
             "b": torch.randn(4, 5, generator=gen)}
    block["w"][2] = 0.0
    block["b"][2] = 0.0                                   # task 2 has an all-zero block vector
    block["w"][3] = -block["w"][1]
    block["b"][3] = -block["b"][1]                        # task 3 is the exact opposite of task 1
    got = cosine_from_gram(gram_matrix(block, torch.device("cpu")))
    rows = torch.cat([t.reshape(4, -1) for t in block.values()], dim=1).double().numpy()
    np.testing.assert_allclose(got, textbook_cosine(rows), rtol=0, atol=1e-6)
    assert got[2].tolist() == [0.0] * 4 and got[1, 3] == pytest.approx(-1.0)


def test_block_similarities_from_a_zoo_match_textbook(tmp_path):
    zoo, states, pretrained = random_zoo(tmp_path / "zoo")
    spec = build_blocks(zoo.param_names, zoo.param_shapes, "component")
    calls = []
    sims = block_similarities(zoo, spec, progress=lambda done, total, msg: calls.append((done, total)))
    assert sims.shape == (len(spec.blocks), 4, 4) and sims.dtype == np.float64
    for b, block in enumerate(spec.blocks):
        np.testing.assert_allclose(sims[b], textbook_cosine(block_rows(states, pretrained, block.params)),
                                   rtol=0, atol=1e-6)
    assert np.all(sims[:, 1, :] == 0.0)
    assert calls == [(b + 1, len(spec.blocks)) for b in range(len(spec.blocks))]


def test_similarity_uses_the_algorithms_preprocessed_vectors(tmp_path):
    zoo, states, pretrained = random_zoo(tmp_path / "zoo", seed=1)
    spec = build_blocks(zoo.param_names, zoo.param_shapes, "layer")
    ties = get_algorithm("ties")
    sims = block_similarities(zoo, spec, algorithm=ties)
    whole = get_algorithm("ties").preprocess(
        {p: torch.stack([sd[p] - pretrained[p] for sd in states.values()]) for p in zoo.param_names})
    for b, block in enumerate(spec.blocks):
        rows = torch.cat([whole[p].reshape(4, -1) for p in block.params], dim=1).double().numpy()
        np.testing.assert_allclose(sims[b], textbook_cosine(rows), rtol=0, atol=1e-6)
    plain = block_similarities(zoo, spec)
    assert not np.allclose(sims, plain)      # trimming really changed what similarity sees

"""Registry, hyperparameter validation, avg / ta / ties / dare against check values and references."""
from __future__ import annotations

import pytest
import torch

from algorithm_cases import DEVICES, GROUP_SIZES, SHAPES, dyadic_block, reference_dare, reference_ties_merge
from flexmerge_core.algorithms import ALGORITHM_NAMES, get_algorithm
from flexmerge_core.algorithms.base import OwnedBlock, flatten_rows as flat, unflatten_row as unflat
from flexmerge_core.errors import InvalidArgumentError


# ---- registry and options -----------------------------------------------------------------------
def test_registry_names_and_defaults():
    assert set(ALGORITHM_NAMES) == {"avg", "ta", "ties", "dare_ta", "dare_ties", "pcb", "tsv", "consensus",
                                    "consensus_ta", "emr"}
    assert get_algorithm("pcb").hyperparameters == {"keep": 0.1, "lam": 1.0, "clamp_quantile": 1e-4}
    assert get_algorithm("consensus").hyperparameters == {"lam": 1.0, "mask_lambda": 0.6}
    assert get_algorithm("consensus_ta").hyperparameters == {"lam": 1.5, "mask_lambda": 0.6}
    assert get_algorithm("tsv").hyperparameters == {"alpha": 1.0} and get_algorithm("emr").hyperparameters == {}
    assert get_algorithm("ta").hyperparameters == {"lam": 1.5}
    assert get_algorithm("ties").hyperparameters == {"keep": 0.1, "lam": 1.0, "similarity_on": "trimmed"}
    assert get_algorithm("dare").name == "dare_ta"
    assert get_algorithm("dare_ties").hyperparameters["p"] == 0.9
    for name in ALGORITHM_NAMES:
        algo = get_algorithm(name)
        assert algo.name == name and algo.storage in ("standard", "mask")


@pytest.mark.parametrize("name, options, culprit", [
    ("nope", {}, "nope"),
    ("ta", {"lambda_": 1.0}, "lambda_"),
    ("ta", {"lam": -1.0}, "lam"),
    ("ta", {"lam": "big"}, "lam"),
    ("ta", {"lam": float("nan")}, "lam"),
    ("ties", {"keep": 0.0}, "keep"),
    ("ties", {"keep": 1.5}, "keep"),
    ("ties", {"similarity_on": "both"}, "similarity_on"),
    ("dare_ta", {"p": 1.0}, "p"),
    ("dare_ta", {"seed": 1.5}, "seed"),
    ("dare_ta", {"seed": True}, "seed"),
])
def test_bad_options_name_the_culprit(name, options, culprit):
    with pytest.raises(InvalidArgumentError, match=culprit):
        get_algorithm(name, **options)


def test_key_is_stable_and_depends_on_hyperparameters():
    assert get_algorithm("ties").key == get_algorithm("ties", keep=0.1).key
    assert get_algorithm("ties").key != get_algorithm("ties", keep=0.2).key
    assert get_algorithm("ta").key != get_algorithm("dare_ta", p=0.0).key
    assert len({get_algorithm(n).key for n in ALGORITHM_NAMES}) == len(ALGORITHM_NAMES)


# ---- check values of ALGORITHMS.md ------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_ties_check_values(device):
    ties = get_algorithm("ties")
    block = {"w": torch.tensor([[1.0, 2, -3, 0], [-1, 1, 0, 0]], device=device)}
    assert ties.merge(block, [0, 1]).unified["w"].tolist() == [1, 1.5, -3, 0]
    block = {"w": torch.tensor([[3.0], [-1], [-1]], device=device)}
    assert ties.merge(block, [0, 1, 2]).unified["w"].tolist() == [3]


def test_ties_zero_sign_fallback_uses_block_sign_sum():
    # coordinate 0 cancels; the block's elected signs sum to -1, so it takes the negative side
    block = {"a": torch.tensor([[2.0, -1], [-2, -1]]), "b": torch.tensor([[-1.0], [-1.0]])}
    out = get_algorithm("ties").merge(block, [0, 1]).unified
    assert out["a"].tolist() == [-2, -1] and out["b"].tolist() == [-1]


def test_ties_trim_keeps_ties_at_threshold():
    trimmed = get_algorithm("ties", keep=0.2).preprocess({"w": torch.tensor([[0.5, -0.5, 0.1, 0.2, 0.0]])})
    assert trimmed["w"].tolist() == [[0.5, -0.5, 0, 0, 0]]


# ---- references ---------------------------------------------------------------------------------
def reference_trim(whole: torch.Tensor, keep: float) -> torch.Tensor:
    out = torch.zeros_like(whole)
    d = whole.shape[1]
    k = max(d - int(d * keep), 1)
    for i, row in enumerate(whole):
        t = sorted(abs(float(v)) for v in row)[k - 1]
        out[i] = torch.where(row.abs() >= t, row, torch.zeros_like(row))
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape_index", range(len(SHAPES)))
@pytest.mark.parametrize("g", GROUP_SIZES)
def test_elementwise_merges_match_references_exactly(device, shape_index, g):
    block = dyadic_block(SHAPES[shape_index], g, seed=100 * g + shape_index, device=device)
    members = list(range(10, 10 + g))
    rows = flat(block).cpu()
    expected = {
        "avg": sum(rows[i] for i in range(g)) / g,
        "ta": 1.5 * (sum(rows[i] for i in range(g)) / g),
        "ties": reference_ties_merge(rows, 1.0),
    }
    for name, vector in expected.items():
        got = get_algorithm(name).merge(block, members).unified
        for n, t in unflat(vector, block).items():
            assert got[n].device.type == device
            assert torch.equal(got[n].cpu(), t), (name, n)
    scaled = get_algorithm("ties", lam=0.5).merge(block, members).unified
    for n, t in unflat(reference_ties_merge(rows, 0.5), block).items():
        assert torch.equal(scaled[n].cpu(), t)
    wide = {n: t.double() for n, t in block.items()}  # float64 stays float64 (its per-slice buffers too)
    got = get_algorithm("ties").merge(wide, members).unified
    for n, t in unflat(reference_ties_merge(rows, 1.0, torch.float64), wide).items():
        assert got[n].dtype == torch.float64 and torch.equal(got[n].cpu(), t)


def model_stream(blocks: list):
    return lambda: iter(blocks)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("keep", [0.1, 0.25, 0.5, 1.0])
def test_ties_trim_is_global_over_the_streamed_model(device, keep):
    blocks = [dyadic_block(SHAPES[i], 4, seed=7 + i, device=device) for i in range(len(SHAPES))]
    ties = get_algorithm("ties", keep=keep)
    ties.prepare(model_stream(blocks))
    whole = torch.cat([flat(b).cpu() for b in blocks], dim=1)
    expected = reference_trim(whole, keep)
    got = torch.cat([flat(ties.preprocess_block(b)).cpu() for b in blocks], dim=1)
    assert torch.equal(got, expected)
    # a subset of tasks uses each task's own global threshold
    subset = ties.preprocess_block({n: t[[1, 3]] for n, t in blocks[0].items()}, tasks=[1, 3])
    assert torch.equal(flat(subset).cpu(), expected[[1, 3], :flat(blocks[0]).shape[1]])


def test_ties_similarity_vectors_follow_the_option():
    block = dyadic_block(SHAPES[0], 3, seed=3)
    trimmed, original = get_algorithm("ties"), get_algorithm("ties", similarity_on="original")
    trimmed.preprocess(block)
    original.preprocess(block)
    assert torch.equal(flat(trimmed.similarity_block(block)), flat(trimmed.preprocess_block(block)))
    assert torch.equal(flat(original.similarity_block(block)), flat(block))
    assert not original.similarity_needs_prepare and trimmed.similarity_needs_prepare


def test_preprocess_before_prepare_is_refused():
    with pytest.raises(RuntimeError, match="prepare"):
        get_algorithm("ties").preprocess_block(dyadic_block(SHAPES[0], 2, seed=1))


# ---- DARE ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("g", GROUP_SIZES)
def test_dare_ta_matches_reference(device, g):
    block = dyadic_block(SHAPES[g % 3], g, seed=g, device=device, zeros=0.0)
    members = list(range(3, 3 + g))
    algo = get_algorithm("dare_ta", p=0.5, seed=11)
    pre = algo.preprocess_block(block, tasks=members)
    expected = reference_dare(block, members, 0.5, 11)
    for n in block:
        assert torch.equal(pre[n].cpu(), expected[n])
    merged = algo.merge(pre, members).unified
    rows = flat(expected)
    for n, t in unflat(1.5 * (sum(rows[i] for i in range(g)) / g), block).items():
        assert torch.equal(merged[n].cpu(), t)


def test_dare_is_deterministic_streamable_and_drops_about_p():
    algo = get_algorithm("dare_ta")
    x = {"w": torch.randn(3, 20000)}
    full = algo.preprocess_block(x)
    assert torch.equal(full["w"], get_algorithm("dare_ta").preprocess_block(x)["w"])
    alone = algo.preprocess_block({"w": x["w"][2:]}, tasks=[2])
    assert torch.equal(alone["w"][0], full["w"][2])
    kept = (full["w"] != 0).float().mean().item()
    assert abs(kept - 0.1) < 0.01
    survivors = full["w"] != 0
    assert torch.allclose(full["w"][survivors], x["w"][survivors] * 10)
    other = get_algorithm("dare_ta", seed=1).preprocess_block(x)["w"]
    assert not torch.equal(other, full["w"])
    assert torch.equal(get_algorithm("dare_ta", p=0.0).preprocess_block(x)["w"], x["w"])


def test_dare_ties_trims_after_dropping():
    blocks = [dyadic_block(SHAPES[0], 3, seed=5, zeros=0.0), dyadic_block(SHAPES[1], 3, seed=6, zeros=0.0)]
    algo = get_algorithm("dare_ties", p=0.5, keep=0.3, seed=2)
    algo.prepare(model_stream(blocks))
    dropped = [reference_dare(b, [0, 1, 2], 0.5, 2) for b in blocks]
    expected = reference_trim(torch.cat([flat(b) for b in dropped], dim=1), 0.3)
    got = torch.cat([flat(algo.preprocess_block(b)) for b in blocks], dim=1)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("keep", [0.05, 0.1, 0.5])
def test_dare_ties_thresholds_among_and_past_the_dropped_zeros(keep):
    """p = 0.9: each task's threshold falls among its dropped zeros or among its smallest kept entries
    (the trim's passes count the zeros without listing them); checked against kthvalue and the trim."""
    gen = torch.Generator().manual_seed(3)
    blocks = [{"w": torch.randn(6, 40, 25, generator=gen), "b": torch.randn(6, 40, generator=gen)},
              {"k": torch.randn(6, 3, 7, 11, generator=gen)}]
    blocks[0]["b"][:, :4] = -0.0
    algo = get_algorithm("dare_ties", p=0.9, keep=keep, seed=4)
    algo.prepare(model_stream(blocks))
    dropped = torch.cat([flat(reference_dare(b, list(range(6)), 0.9, 4)) for b in blocks], dim=1)
    d = dropped.shape[1]
    expected = dropped.abs().kthvalue(max(d - int(d * keep), 1), dim=1).values
    assert torch.equal(algo._thresholds, expected)
    if keep == 0.1:  # both cases occur: thresholds of 0 (more zeros than the position) and above
        assert (expected == 0).any() and (expected > 0).any()
    got = torch.cat([flat(algo.preprocess_block(b)) for b in blocks], dim=1)
    assert torch.equal(got.view(torch.int32), reference_trim(dropped, keep).view(torch.int32))


@pytest.mark.parametrize("name", ["ties", "dare_ties", "dare_ta"])
def test_owned_blocks_are_preprocessed_in_place_with_the_same_bits(name):
    """An OwnedBlock's tensors are overwritten and returned; any other mapping is left as it was."""
    blocks = [dyadic_block(SHAPES[i], 4, seed=20 + i) for i in range(len(SHAPES))]
    algo = get_algorithm(name, p=0.5) if name != "ties" else get_algorithm(name, keep=0.3)
    algo.prepare(model_stream(blocks))
    for block in blocks:
        before = {n: t.clone() for n, t in block.items()}
        expected = algo.preprocess_block(block)
        assert all(torch.equal(block[n], before[n]) for n in block)
        owned = OwnedBlock({n: t.clone() for n, t in block.items()})
        got = algo.preprocess_block(owned)
        for n in block:
            assert got[n].data_ptr() == owned[n].data_ptr()
            assert torch.equal(got[n].view(torch.int32), expected[n].view(torch.int32))


def test_trim_keeps_exactly_the_entries_at_or_above_the_threshold():
    """Entries equal to the threshold, its float neighbours, denormals and signed zeros; keep = 1 puts
    the threshold at the smallest |x| (0 here: everything is kept, -0.0 included)."""
    t = 0.375
    edge = [t, -t, torch.nextafter(torch.tensor(t), torch.tensor(0.0)).item(), 1e-45, -1e-45, 0.0, -0.0, 5.0, -7.0]
    row = torch.tensor(edge + [0.1] * 11)
    for keep, threshold in [(3 / 20, t), (1.0, 0.0)]:  # the 17th smallest of 20 is t
        trimmed = get_algorithm("ties", keep=keep).preprocess({"w": row.unsqueeze(0)})["w"][0]
        expected = torch.where(row.abs() >= threshold, row, torch.zeros_like(row))
        assert torch.equal(trimmed.view(torch.int32), expected.view(torch.int32))
    assert torch.signbit(trimmed[6]) and int((trimmed != 0).sum()) == 18


# ---- robustness and the shared contract ---------------------------------------------------------
@pytest.mark.parametrize("name", ["avg", "ta", "ties", "dare_ta", "dare_ties", "pcb", "tsv"])
def test_zero_and_constant_blocks_stay_finite(name):
    for block in ({"w": torch.zeros(3, 4, 2)}, {"w": torch.full((3, 4, 2), 0.25)}):
        algo = get_algorithm(name)
        pre = algo.preprocess(block)
        out = algo.merge(pre, [0, 1, 2]).unified["w"]
        assert torch.isfinite(out).all() and out.dtype == torch.float32


def test_half_inputs_are_promoted_to_fp32():
    block = {"w": dyadic_block(SHAPES[1], 3, seed=4)["w"].half()}
    out = get_algorithm("ta").merge(block, [0, 1, 2]).unified["w"]
    assert out.dtype == torch.float32


def test_groups_not_merged_keep_their_vectors_and_reconstruct_exactly():
    block = dyadic_block(SHAPES[0], 1, seed=9)
    res = get_algorithm("ties").merge(block, [4])
    assert not res.merged
    assert all(torch.equal(v, block[n][0]) for n, v in get_algorithm("ties").reconstruct(res, 4).items())


def test_standard_reconstruction_is_the_unified_vector_and_checks_membership():
    block = dyadic_block(SHAPES[0], 3, seed=9)
    algo = get_algorithm("avg")
    res = algo.merge(block, [1, 2, 5])
    assert all(torch.equal(algo.reconstruct(res, 5)[n], res.unified[n]) for n in block)
    with pytest.raises(InvalidArgumentError, match="task 3"):
        algo.reconstruct(res, 3)
    with pytest.raises(InvalidArgumentError, match="ascending"):
        algo.merge(block, [2, 1, 5])

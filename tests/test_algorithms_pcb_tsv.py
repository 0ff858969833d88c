"""PCB and TSV-M against float64 numpy/scipy re-implementations (1e-6 relative)."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

import flexmerge_core.algorithms.columns as columns
from algorithm_cases import DEVICES, GROUP_SIZES
from flexmerge_core.algorithms import get_algorithm
import flexmerge_core.algorithms.pcb_scores as pcb_scores
import flexmerge_core.algorithms.tsv as tsv
from flexmerge_core.algorithms.tsv import OVERSAMPLE, top_singular_triplets, tsv_factors

M = 6


def random_model(seed: int, dtype=torch.float64, device="cpu") -> list:
    """Two blocks of M tasks; some exact zeros and repeated values to exercise ties."""
    g = torch.Generator().manual_seed(seed)
    blocks = [{"w": torch.randn(M, 6, 5, generator=g, dtype=dtype), "b": torch.randn(M, 6, generator=g, dtype=dtype)},
              {"w": torch.randn(M, 4, 9, generator=g, dtype=dtype)}]
    blocks[0]["w"][:, 0, :2] = 0.0
    blocks[1]["w"][:, 1, :] = 0.5
    return [{n: t.to(device) for n, t in b.items()} for b in blocks]


def rows_np(block: dict) -> np.ndarray:
    return np.concatenate([t.cpu().double().numpy().reshape(t.shape[0], -1) for t in block.values()], axis=1)


def ref_scores(X: np.ndarray, q: float, g: int):
    """(A, P) of the PCB formula, clamped at the released code's sorted positions per row."""
    d = X.shape[1]
    low, high = int(d * q), int(d * (1 - q)) - 1
    ordered = np.sort(np.abs(X), axis=1)
    q_lo, q_hi = ordered[:, low:low + 1], ordered[:, high:high + 1]
    A = np.clip(np.abs(X), q_lo, q_hi)
    span = q_hi - q_lo
    mm = np.where(span > 0, (A - q_lo) / np.where(span > 0, span, 1), 0.0)
    P = np.exp(g * mm ** 2) * np.tanh(X * X.sum(axis=0, keepdims=True))
    return A, P


def ref_pcb(model: list, block_index: int, members: list, keep=0.1, q=1e-4, lam=1.0) -> np.ndarray:
    whole = np.concatenate([rows_np(b) for b in model], axis=1)
    D = whole.shape[1]
    _, P_all = ref_scores(whole, q, M)
    ordered = np.sort(P_all, axis=1)
    thr, top = ordered[:, min(int(D * (1 - keep)), D - 1)], ordered[:, -1]
    X = rows_np(model[block_index])[members]
    A, P = ref_scores(X, q, len(members))
    clamped = np.clip(P, thr[members, None], top[members, None])
    lo, hi = clamped.min(axis=1, keepdims=True), clamped.max(axis=1, keepdims=True)
    scale = np.where(hi > lo, (clamped - lo) / np.where(hi > lo, hi - lo, 1), 0.0)
    return lam * (np.sign(X) * A * scale).sum(axis=0) / np.maximum(scale.sum(axis=0), 1e-12)


def merged_np(result) -> np.ndarray:
    return np.concatenate([t.cpu().double().numpy().reshape(-1) for t in result.unified.values()])


def assert_relative(got: np.ndarray, expected: np.ndarray, rtol: float):
    assert np.isfinite(got).all()
    assert np.linalg.norm(got - expected) <= rtol * max(np.linalg.norm(expected), 1e-30)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("g", GROUP_SIZES)
@pytest.mark.parametrize("keep", [0.1, 0.2, 0.5])
def test_pcb_matches_reference(device, g, keep):
    model = random_model(seed=g, device=device)
    pcb = get_algorithm("pcb", keep=keep)
    pcb.prepare(lambda: iter(model))
    members = sorted(np.random.default_rng(g).choice(M, size=g, replace=False).tolist())
    for b, block in enumerate(model):
        result = pcb.merge({n: t[members] for n, t in block.items()}, members)
        assert_relative(merged_np(result), ref_pcb(model, b, members, keep=keep), 1e-6)


@pytest.mark.parametrize("entries", [16, 128, 20000])
@pytest.mark.parametrize("slice_elements", [None, 256])  # whole rows, and rows fed in many slices
def test_pcb_clamps_at_the_released_positions(monkeypatch, entries, slice_elements):
    # for d < 10^4 the upper clamp bound is the second-largest magnitude (s[int(d * (1 - q)) - 1])
    if slice_elements:
        monkeypatch.setattr(columns, "CPU_SLICE_ELEMENTS", slice_elements)
    g = torch.Generator().manual_seed(entries)
    w = torch.randn(M, entries, generator=g, dtype=torch.float64) * torch.randn(M, entries, generator=g).exp()
    w[:, : entries // 8] = 0.25  # ties
    w[:, -1] = 40.0  # one outlier per row: clamped to the runner-up
    model = [{"w": w}]
    pcb = get_algorithm("pcb", clamp_quantile=1e-4)
    pcb.prepare(lambda: iter(model))
    members = [0, 2, 3, 5]
    result = pcb.merge({"w": w[members]}, members)
    assert_relative(merged_np(result), ref_pcb(model, 0, members), 1e-6)


def test_pcb_in_float32_stays_close_to_the_float64_reference():
    model64 = random_model(seed=3)
    model32 = [{n: t.float() for n, t in b.items()} for b in model64]
    pcb = get_algorithm("pcb", lam=1.3)
    pcb.prepare(lambda: iter(model32))
    result = pcb.merge({n: t[[0, 2, 5]] for n, t in model32[0].items()}, [0, 2, 5])
    assert result.unified["w"].dtype == torch.float32
    assert_relative(merged_np(result), ref_pcb(model64, 0, [0, 2, 5], lam=1.3), 1e-4)


def test_pcb_needs_prepare_and_survives_degenerate_input():
    with pytest.raises(RuntimeError, match="prepare"):
        get_algorithm("pcb").merge({"w": torch.ones(2, 3)}, [0, 1])
    for block in ({"w": torch.zeros(3, 5)}, {"w": torch.full((3, 5), 2.0)}):
        pcb = get_algorithm("pcb")
        pcb.prepare(lambda: iter([block]))
        assert torch.isfinite(pcb.merge(block, [0, 1, 2]).unified["w"]).all()


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-15), (torch.float32, 3e-7)])
def test_pcb_tanh_is_tanh_from_tiny_to_huge_arguments(dtype, rtol):
    values = [-1e4, -30.0, -20.5, -3.0, -0.3, -1e-9, -1e-30, 0.0, 1e-30, 1e-9, 1e-4, 0.3, 2.0, 19.9, 20.5, 1e4]
    got = pcb_scores.tanh_(torch.tensor(values, dtype=dtype))
    expected = np.tanh(np.array(values))
    assert np.allclose(got.double().numpy(), expected, rtol=rtol, atol=0)


def ref_tsv(stack: np.ndarray, alpha=1.0) -> np.ndarray:
    g, m, n = stack.shape
    k = min(m, n) // g
    if k == 0:
        return alpha * stack.mean(axis=0)
    Us, Ss, Vs = [], [], []
    for member in stack:
        U, S, Vt = np.linalg.svd(member, full_matrices=False)
        Us.append(U[:, :k]), Ss.append(S[:k]), Vs.append(Vt[:k].T)
    U_perp = scipy.linalg.polar(np.concatenate(Us, axis=1))[0]
    V_perp = scipy.linalg.polar(np.concatenate(Vs, axis=1))[0]
    return alpha * U_perp @ np.diag(np.concatenate(Ss)) @ V_perp.T


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("g", GROUP_SIZES)
@pytest.mark.parametrize("shape", [(12, 7), (6, 13), (10, 10)])
def test_tsv_matches_reference_with_orthonormal_factors(device, g, shape):
    gen = torch.Generator().manual_seed(g * 31 + shape[0])
    block = {"w": torch.randn(g, *shape, generator=gen, dtype=torch.float64).to(device),
             "b": torch.randn(g, shape[0], generator=gen, dtype=torch.float64).to(device)}
    result = get_algorithm("tsv", alpha=0.8).merge(block, list(range(g)))
    w = block["w"].cpu().numpy()
    assert_relative(result.unified["w"].cpu().numpy(), ref_tsv(w, 0.8), 1e-6)
    assert torch.allclose(result.unified["b"].cpu(), 0.8 * block["b"].cpu().mean(dim=0), rtol=0, atol=1e-15)
    U, S, V = tsv_factors(block["w"])
    eye = torch.eye(U.shape[1], dtype=U.dtype, device=U.device)
    assert torch.allclose(U.T @ U, eye, atol=1e-10) and torch.allclose(V.T @ V, eye, atol=1e-10)


def test_tsv_falls_back_to_mean_below_rank_and_for_conv_kernels():
    gen = torch.Generator().manual_seed(0)
    block = {"w": torch.randn(4, 3, 8, generator=gen), "conv": torch.randn(4, 2, 3, 2, 2, generator=gen)}
    out = get_algorithm("tsv").merge(block, [0, 1, 2, 3]).unified
    assert torch.equal(out["w"], block["w"].mean(dim=0)) and torch.equal(out["conv"], block["conv"].mean(dim=0))


def test_tsv_is_finite_for_zero_and_rank_deficient_members():
    block = {"w": torch.zeros(3, 6, 6)}
    block["w"][1] = torch.outer(torch.arange(6.0), torch.ones(6))
    out = get_algorithm("tsv").merge(block, [0, 1, 2]).unified["w"]
    assert torch.isfinite(out).all() and out.dtype == torch.float32


def decaying_stack(g: int, m: int, n: int, decay: float, seed: int) -> torch.Tensor:
    """Members U diag(decay^i) V^T with random orthonormal U, V: task vectors' spectra fall off fast."""
    gen = torch.Generator().manual_seed(seed)
    r = min(m, n)
    members = []
    for _ in range(g):
        U = torch.linalg.qr(torch.randn(m, r, generator=gen, dtype=torch.float64)).Q
        V = torch.linalg.qr(torch.randn(n, r, generator=gen, dtype=torch.float64)).Q
        members.append((U * decay ** torch.arange(r, dtype=torch.float64)) @ V.T)
    return torch.stack(members)


@pytest.mark.parametrize("shape", [(200, 150), (150, 200)])
def test_tsv_truncated_decomposition_matches_the_full_one(shape, monkeypatch):
    g = 6
    stack = decaying_stack(g, *shape, decay=0.7, seed=shape[0])
    k = min(shape) // g
    assert 4 * (k + OVERSAMPLE) <= min(shape)
    monkeypatch.setattr(tsv, "top_singular_triplets_full", None)  # the subspace-iteration path only
    U, S, V = top_singular_triplets(stack, k)
    for member, (u, s, v) in enumerate(zip(U, S, V)):
        full_U, full_S, full_Vt = np.linalg.svd(stack[member].numpy())
        assert np.allclose(s.numpy(), full_S[:k], rtol=1e-9, atol=0)
        truncated = (full_U[:, :k] * full_S[:k]) @ full_Vt[:k]
        assert_relative(((u * s) @ v.T).numpy(), truncated, 1e-8)
        assert torch.allclose(u.T @ u, torch.eye(k, dtype=u.dtype), atol=1e-12)
    merged = get_algorithm("tsv").merge({"w": stack}, list(range(g))).unified["w"]
    assert_relative(merged.numpy(), ref_tsv(stack.numpy()), 1e-8)
    merged32 = get_algorithm("tsv").merge({"w": stack.float()}, list(range(g))).unified["w"]
    assert merged32.dtype == torch.float32
    assert_relative(merged32.double().numpy(), ref_tsv(stack.numpy()), 1e-4)  # 4e-5: 4 decades of spectrum


@pytest.mark.parametrize("shape", [(200, 150), (150, 200)])
def test_tsv_flat_spectrum_takes_the_gram_route(shape, monkeypatch):
    stack = decaying_stack(6, *shape, decay=0.999, seed=1)  # the iteration cannot pin the top 25 down
    monkeypatch.setattr(tsv, "top_singular_triplets_full", None)  # the Gram route only
    U, S, V = top_singular_triplets(stack, 25)
    for u, s, v, member in zip(U, S, V, stack):
        full_U, full_S, full_Vt = np.linalg.svd(member.numpy())
        assert np.allclose(s.numpy(), full_S[:25], rtol=1e-12, atol=0)
        assert_relative(((u * s) @ v.T).numpy(), (full_U[:, :25] * full_S[:25]) @ full_Vt[:25], 1e-9)
    merged32 = get_algorithm("tsv").merge({"w": stack.float()}, list(range(6))).unified["w"]
    # 1.2e-5 (a float32 full SVD: 1.7e-4 / 9.6e-5): singular values 0.1% apart pin the top 25 down loosely
    assert_relative(merged32.double().numpy(), ref_tsv(stack.numpy()), 3e-5)


def test_tsv_gram_route_leaves_steep_spectra_to_the_full_svd(monkeypatch):
    stack = decaying_stack(6, 200, 150, decay=0.5, seed=2).float()  # s_25 / s_1 = 6e-8: below float32's Gram
    monkeypatch.setattr(tsv, "top_singular_triplets_full", lambda s, k: ("full", k))
    assert tsv.top_singular_triplets_gram(stack, 25) == ("full", 25)


@pytest.mark.parametrize("shape", [(12, 7), (6, 13)])
def test_tsv_preprocessed_rows_are_each_tasks_own_top_triplets(shape):
    gen = torch.Generator().manual_seed(7)
    block = {"w": torch.randn(5, *shape, generator=gen, dtype=torch.float64),
             "b": torch.randn(5, shape[0], generator=gen, dtype=torch.float64)}
    algo = get_algorithm("tsv", alpha=0.8)
    every = algo.preprocess_block(block)
    members = [1, 3, 4]
    some = algo.preprocess_block({n: t[members] for n, t in block.items()}, tasks=members)
    assert set(some) == set(every) == {"w", "b"} | {tsv.factor_name("w", part) for part in "USV"}
    assert all(torch.equal(some[n], every[n][members]) for n in every)  # a row depends on its own task only
    r = min(shape) // 2  # the most a group of two uses
    U, S, V = (every[tsv.factor_name("w", part)] for part in "USV")
    assert U.shape == (5, shape[0], r) and S.shape == (5, r) and V.shape == (5, shape[1], r)
    for u, s, v, member in zip(U, S, V, block["w"]):
        full_U, full_S, full_Vt = np.linalg.svd(member.numpy())
        assert np.allclose(s.numpy(), full_S[:r], rtol=1e-12, atol=0)
        assert_relative(((u * s) @ v.T).numpy(), (full_U[:, :r] * full_S[:r]) @ full_Vt[:r], 1e-10)
    for group in ([1, 3], members):
        result = algo.merge({n: t[[members.index(m) for m in group]] for n, t in some.items()}, group)
        assert set(result.unified) == {"w", "b"}
        assert_relative(result.unified["w"].numpy(), ref_tsv(block["w"][group].numpy(), 0.8), 1e-6)
    # the factors do not depend on alpha, and similarity reads the task vectors themselves
    assert algo.preprocessing_key == get_algorithm("tsv", alpha=2.0).preprocessing_key != algo.key
    assert algo.raw_similarity and set(algo.similarity_block(block)) == {"w", "b"}


@pytest.mark.parametrize("shape", [(200, 150), (150, 200), (100, 100)])
@pytest.mark.parametrize("g, decay, rtol", [(6, 0.7, 1e-4), (6, 0.999, 3e-5), (2, 0.999, 3e-5)])  # 2: pair_root
def test_tsv_preprocessed_float32_merge_stays_close_to_the_reference(shape, g, decay, rtol):
    stack = decaying_stack(g, *shape, decay=decay, seed=3)
    algo = get_algorithm("tsv")
    merged32 = algo.merge(algo.preprocess_block({"w": stack.float()}), list(range(g))).unified["w"]
    assert merged32.dtype == torch.float32
    assert_relative(merged32.double().numpy(), ref_tsv(stack.numpy()), rtol)


def orthonormal_members(g: int, rows: int, k: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(g, rows, k, generator=gen, dtype=torch.float64)).Q.to(dtype)


def reference_inverse_root(side: torch.Tensor) -> np.ndarray:
    """(X^T X)^(-1/2) of the members side by side, from numpy's eigh, dropping null directions."""
    X = np.concatenate(list(side.double().numpy()), axis=1)
    eigenvalues, vectors = np.linalg.eigh(X.T @ X)
    kept = eigenvalues > eigenvalues[-1] * X.shape[1] * np.finfo(np.float64).eps
    weights = np.where(kept, 1 / np.sqrt(np.where(kept, eigenvalues, 1)), 0)
    return (vectors * weights) @ vectors.T


@pytest.mark.parametrize("g, rows, k", [(2, 40, 20), (2, 50, 12), (3, 30, 10), (5, 40, 6)])
def test_tsv_assembled_inverse_roots_match_the_direct_one(g, rows, k):
    side = orthonormal_members(g, rows, k, seed=rows + g)
    side[-1, :, 0] = side[0, :, 0]  # a shared direction: an eigenvalue 2 and one 0 (dropped)
    side[-1] = torch.linalg.qr(side[-1]).Q
    expected = reference_inverse_root(side)
    assert_relative(tsv.gram_root(side)[1].numpy(), expected, 1e-9)  # identity diagonal blocks assumed
    assert_relative(tsv.gram_root(side, orthonormal=False)[1].numpy(), expected, 1e-9)
    assert_relative(tsv.inverse_root(side).numpy(), expected, 1e-9)   # g = 2: pair_root's closed form
    if g == 2:
        eigenvalues, root = tsv.pair_root(side)
        X = np.concatenate(list(side.numpy()), axis=1)
        assert np.allclose(np.sort(eigenvalues.numpy()), np.linalg.eigvalsh(X.T @ X), rtol=0, atol=1e-12)


def test_tsv_float32_pairs_leave_ill_conditioned_grams_to_float64():
    side = orthonormal_members(2, 40, 20, seed=1, dtype=torch.float32)
    assert tsv.inverse_root(side) is None   # 2k = 40 columns of 40 rows: past NEAR_SQUARE
    tall = orthonormal_members(2, 400, 20, seed=2, dtype=torch.float32)
    assert_relative(tsv.inverse_root(tall).double().numpy(), reference_inverse_root(tall), 1e-5)
    tall[1, :, 0] = tall[0, :, 0]           # an eigenvalue ~0: float32 is not enough
    assert tsv.inverse_root(tall) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tsv_orthonormalised_factors_are_orthonormal_and_span_the_same_columns(dtype):
    exact = orthonormal_members(3, 50, 8, seed=4)
    gen = torch.Generator().manual_seed(5)
    perturbed = (exact + 1e-4 * torch.randn(exact.shape, generator=gen, dtype=exact.dtype)).float()
    X = tsv.orthonormalised(perturbed, dtype)
    assert X.dtype == dtype
    eye = torch.eye(8, dtype=dtype)
    assert (X.mT @ X - eye).abs().max() <= tsv.ORTHONORMAL[dtype]
    assert torch.allclose(X.double(), exact, atol=1e-3)          # the nearest orthonormal columns
    assert torch.equal(tsv.orthonormalised(X, dtype), X)        # already orthonormal: left as it is


@pytest.mark.parametrize("shape, other", [((30, 12), torch.float32), ((12, 30), torch.float32),
                                          ((20, 19), torch.float64)])
def test_tsv_exact_factors_keep_the_min_side_in_float64(shape, other):
    stack = torch.randn(3, *shape, generator=torch.Generator().manual_seed(6))
    U, S, V = tsv.member_triplets(stack)
    small, large = (U, V) if shape[0] <= shape[1] else (V, U)
    assert small.dtype == torch.float64 and large.dtype == other and S.dtype == torch.float32
    for factor in (U, V):
        eye = torch.eye(factor.shape[-1], dtype=factor.dtype)
        assert (factor.mT @ factor - eye).abs().max() <= tsv.ORTHONORMAL[factor.dtype]


def test_tsv_row_bytes_are_the_preprocessed_rows_bytes():
    shapes = [(30, 12), (12,), (12, 30), (20, 19), (3, 1), (2, 3, 4)]
    block = {f"t{i}": torch.randn(2, *shape) for i, shape in enumerate(shapes)}
    rows = get_algorithm("tsv").preprocess_block(block)
    stored = sum(t.numel() * t.element_size() for t in rows.values()) // 2
    assert get_algorithm("tsv").row_bytes(shapes) == stored
    assert get_algorithm("avg").row_bytes(shapes) == 4 * sum(t[0].numel() for t in block.values())

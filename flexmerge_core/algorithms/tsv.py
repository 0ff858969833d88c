"""tsv (TSV-M, task singular vectors merge).

For each 2-D weight: per member SVD U_i S_i V_i^T, keep the top k = floor(min(m, n)/g) triplets,
concatenate the U's (m x gk), S's and V's, replace the concatenated U and V each by its polar factor
(P Q^T from the SVD P Sigma Q^T, the nearest matrix with orthonormal columns) and output
alpha * U_perp diag(S) V_perp^T. Other tensors (1-D, 4-D conv kernels) and matrices with k = 0
(rank below the group size) are averaged. The result is sign-invariant (flipping a singular pair
flips the matching polar column), so device-specific SVD sign choices do not change it.

Where the work goes: a member's top k triplets are the first k of its own SVD, whatever the group.
So preprocess_block factorises each task alone (member_triplets: its top r = min(m, n) // 2 triplets,
the most a group of two or more uses, stored beside the vectors as factor_name entries, one row per
task; preprocessing_key names them for caches of preprocessed rows, so that a task is factorised once
per block however many groups it joins), and a merge takes the first k of each member and runs only the
polar step. merge() on raw vectors (the tests, the reference) computes the group's top k itself.

exact_factors keeps each member's columns orthonormal to the rounding of the dtype they are kept in
(the min side in float64), so the polar step's Gram matrices have identity diagonal blocks.
Relative Frobenius deviation of the merged matrix (3072 x 768 members U diag(s) V^T, float32 input) from
the one made of the unrounded members' exact factors, g = 30 / 8 / 2, preprocessed rows: Gaussian
2.7e-6 / 2.1e-6 / 1.8e-6; s_i = 1/sqrt(i) 1.6e-6 / 1.8e-6 / 1.2e-5; 1/i 4.5e-6 / 1.5e-5 / 3.1e-5; 0.7^i
2.3e-6 at g = 30 (at g <= 8 the top k reach s_96 ~ 1e-15, which the float32 input no longer carries).
merge() on raw vectors: the same but for g = 30 / 8 Gaussian 4.4e-6 / 3.5e-6, 1/sqrt(i) 2.4e-6 / 5.2e-6,
1/i 1.4e-5 at g = 30. Within 2.3e-6 of the code before exact_factors and pair_root, route by route.

Top triplets (arithmetic in the input's dtype: float32 for real checkpoints, float64 stays float64):
- A task's top r (member_triplets): the min-side Gram route below at k = r, where its Rayleigh-Ritz step
  covers the whole space and so is the float64 eigh of the float32 Gram matrix (per matrix ~0.03 s GEMM,
  ~0.07 s eigh). Its gate is on s_r: Gaussian noise (s_384/s_1 = 0.64) and 1/sqrt(i) spectra (0.05,
  against 0.035) pass, 1/i (0.0026) takes the float32 full SVD (~0.25 s), 0.7^i the float64 one (~0.4 s)
  after the float32 one finds s_r under its rounding noise (the redo below).
- A group's top k in merge() on raw vectors: when k + OVERSAMPLE is at most a quarter of min(m, n)
  (g >= 5 for square-ish matrices), randomized subspace iteration (Halko et al. 2011) from a seeded
  Gaussian start with OVERSAMPLE extra columns and POWER_ITERATIONS power iterations: 2 *
  POWER_ITERATIONS + 2 batched products of the members with thin [n, k + OVERSAMPLE] matrices,
  O(mn(k + p)) per member instead of the SVD's O(mn min(m, n)). Its subspace error is bounded by
  (s_{k+p}/s_k)^(2 * POWER_ITERATIONS + 1); with the Ritz values' estimate of that bound above CONVERGED
  (a flat spectrum: Gaussian noise, or a power law 1/i; a tail at float rounding noise does not count)
  the iteration's result is dropped, so results never drift (the flat spectrum shows in the first Ritz
  values, after 2 of the iteration's products, see FLAT).
- Flat spectra, and k too large for the iteration: the min-side Gram route (top_singular_triplets_gram:
  one GEMM per member, a min(m, n)-square eigh, a float64 Rayleigh-Ritz step), itself accurate only
  while s_k/s_1 is not tiny, which is where the iteration succeeds; else the full SVD.
  Deviation of the merged c_fc (30 members, k = 25) from float64 full SVDs, float32 input: Gaussian
  1.6e-5 with a float32 eigh and no Rayleigh-Ritz step (2e-6 with a float64 eigh; the float32 full SVD
  this route replaces: 4.2e-5), spectrum 1/sqrt(i) 4e-6 (4e-6), 1/i 7.8e-5 without the Rayleigh-Ritz
  step (2e-6; 4.5e-6); the Rayleigh-Ritz step brings float32 eigh's error on the rank-k truncation
  within 2-6x of float64 eigh's (per member: 2.3e-6 / 6.9e-7 / 1.4e-6). 0.7^i: 3e-2, hence the s_k/s_1
  gate.
- When a member's k-th singular value sinks to float32 rounding noise (s_k <= max(m, n) * eps * s_1;
  the benchmark's 0.7^i block at g = 30: s_25/s_1 = 1.9e-4 against 3.7e-4; without the redo float32 and
  float64 were 59% apart at g = 8) its factorisation is redone in float64 (top_triplets).

Polar step (tsv_matrix): U_perp = U_cat (U_cat^T U_cat)^(-1/2) from the gk-square Gram matrix, likewise
V; the large side's polar factor is never formed: out = L (R diag(S) s_perp^T) with R its inverse root,
which saves a max(m, n) x gk x gk product. The Gram's diagonal blocks are the identity:
- g = 2 (pair_root): [[I, C], [C^T, I]] with C = X_0^T X_1 has eigenvalues 1 +- sigma(C), so a k-square
  SVD of the cross Gram (m k^2 multiply-adds) takes the place of the 2k-square Gram (m (2k)^2) and its eigh.
- g >= 3 (gram_root): only the blocks below the diagonal (lower_gram: half of X^T X) and a gk-square eigh.
Precision: the small side is near-square (gk within g of min(m, n)), so ill-conditioned: on the benchmark's
c_fc its Gram's eigenvalues reach 2e-9 (about 20 of 768 below 1e-3), and a float32 eigh there put the merge
11-14% off the float64 reference; it runs in float64. The large side runs in float32 (c_fc: eigenvalues
0.1-3.7) unless its Gram is ill-conditioned too (inverse_root; then float64 with the Gram's own diagonal
blocks, where float32 members' rounding would be amplified); square matrices keep both sides in float64.
Directions with eigenvalue below gk * eps * the largest are dropped, which keeps rank-deficient groups
finite. Relative Frobenius deviation of the merged matrices from float64 full SVDs, the benchmark zoo's 8
tasks (in_proj, out_proj, c_fc, c_proj; groups of 2, 4, 6, 8): 1.2-4.1e-6, as with the 2k-square eighs
and float32 min sides before (1.2-4.1e-6), within 3.3e-6 of those; pairs 1.2-2.9e-6 (were 1.2-3.0e-6).

Cost model. One thread of this machine's AMD EPYC (2 cores), idle: float32 GEMM ~110 GFLOP/s, float64
~55; an eigh of a 768-square matrix ~0.05 s in float32, ~0.09 s in float64; a = max(m, n), b = min(m, n)
(gk is within g of b); multiply-adds. Measured CPU time, 1 thread, best of 3 (benchmark-like random
members; was: the 2k-square eighs and float32 min sides):
- per task and matrix, once per block (preprocess_block): Gram a b^2 and U a b^2 / 2 in float32, a
  b-square float64 eigh, the orthonormality checks (~a b^2 / 4): c_fc 0.155 s (was 0.14 s), in_proj
  0.137 s, out_proj 0.107 s.
- per pair and matrix: cross Grams (a + b) b^2 / 4, two (b/2)-square SVDs, ~2.75 b^3 in products (a third
  float64), the final a b^2: c_fc 0.13 s (was 0.27 s), in_proj 0.125 s, out_proj 0.13 s (was 0.28 s).
- per larger group and matrix: lower Grams (a + b) b^2 / 2, two b-square eighs (one float64), ~4 b^3 in
  products (half float64), the final a b^2: c_fc 0.24 s at g = 3..30 (was 0.25-0.27 s), out_proj
  0.24-0.26 s (was 0.27-0.28 s). Of the 0.24 s, 0.14 s are the eighs, 0.1 s ~7 GFLOP float32 + ~2 float64.
Whole spectrum of ViT-B-32 (24 blocks of two matrices with b = 768; the rest is negligible): per matrix M
task factorisations and M - 1 groups, of which ~57% pairs at M = 8 and ~37% at M = 30. 8 tasks: 48 x
(8 x 0.15 + 4 x 0.13 + 3 x 0.24) = 117 s of one core; 30 tasks: 48 x (30 x 0.15 + 11 x 0.13 + 18 x 0.24)
= 490 s, 40% of it the task factorisations. Against the averaging run (2.4 s at 8 tasks fp32, 3.2 s at 30
fp16) that is ~50x and ~150x for one core; the second core takes off at most half (the GEMMs; eigh's
tridiagonal reduction parallelises poorly). <= 10x is out of reach on this CPU: the b-square eighs alone,
M + 2 (M - 1) per matrix and spectrum (4,224 at M = 30, ~300 s), are 100x the averaging run.
Not taken, measured: float32 eighs in member_triplets (the merge 8e-6 to 3.4e-5 off the reference against
2-4e-6); Newton-Schulz for the large side's inverse root (12 iterations, 0.33 s against the eigh's 0.05 s:
condition 29 at g = 8); pairwise cross Grams cached across a block's groups (after lower_gram a group's
Grams are ~7% of its time).
"""
from __future__ import annotations

import torch

from flexmerge_core.algorithms.base import HyperParam, MergeAlgorithm, MergeResult
from flexmerge_core.cache import content_hash

ALPHA = HyperParam("alpha", 1.0, float, 0.0, 10.0, help="scaling of the merged matrix")
OVERSAMPLE = 10
POWER_ITERATIONS = 2
SEED = 0  # the subspace iteration's start: results are reproducible run to run
FLAT = 0.3  # first Ritz values s_{k+p}/s_k above this: the iteration would not converge (Gaussian
# 3072 x 768, k = 25: 0.93-0.95, 1/i: 0.46-0.53; 0.7^i: 0.01-0.03, and convergence needs <= 0.063)
CONVERGED = 1e-6  # largest accepted bound on the iteration's subspace error, relative
GRAM_ACCURACY = 1e-4  # largest accepted Gram rounding (eps * s_1^2) relative to s_k^2
FACTORS_VERSION = 2  # of what preprocess_block stores: names preprocessed rows in caches (preprocessing_key)
FACTOR_PARTS = ("U", "S", "V")
WELL_CONDITIONED = 1e-3  # float32 polar factors only above this smallest/largest Gram eigenvalue ratio
NEAR_SQUARE = 0.88  # gk / rows above this: float64 polar factor without trying float32 (random subspaces'
# Gram eigenvalues spread by ((1 + sqrt(c)) / (1 - sqrt(c)))^2 > 1 / WELL_CONDITIONED at c > 0.88; the
# small side is that near-square for almost every g, since gk = g * floor(min(m, n) / g))
ORTHONORMAL = {torch.float64: 2e-14, torch.float32: 1e-6}  # largest |X^T X - I| entry orthonormalised
# leaves: float64 ~3e-15 (its rounding; at 5e-14, 1 / the smallest Gram eigenvalue 1.5e-10 of the benchmark's
# out_proj at g = 8 moved its merge 2.5x further from the float64 reference); float32 ~1.2e-7 on 3072 rows
ORTHONORMALISING_STEPS = 4


def side_by_side(side: torch.Tensor) -> torch.Tensor:
    """[g, rows, k] members' factors -> [rows, g * k], member after member."""
    return side.permute(1, 0, 2).reshape(side.shape[1], -1)


def root_weights(eigenvalues: torch.Tensor, columns: int) -> torch.Tensor:
    """lambda^(-1/2) per eigenvalue, 0 for those below columns * eps * the largest: dropping those
    directions keeps rank-deficient groups finite."""
    floor = eigenvalues.max().clamp(min=0) * columns * torch.finfo(eigenvalues.dtype).eps
    return torch.where(eigenvalues > floor, eigenvalues.clamp(min=floor).rsqrt(), torch.zeros_like(eigenvalues))


def lower_gram(X: torch.Tensor, g: int) -> torch.Tensor:
    """X^T X below its diagonal blocks, identity on them (the upper triangle is left zero: eigh reads the
    lower one), for X of g members' orthonormal [rows, k] blocks side by side: half the multiply-adds
    of X^T X. The members are halved recursively, so the large GEMMs come first (at g = 30, k = 25:
    a loop over members' [k, rows] by [rows, < gk] products was no faster than the whole X^T X)."""
    k = X.shape[1] // g
    gram = torch.eye(g * k, dtype=X.dtype, device=X.device)
    spans = [(0, g)]
    while spans:
        first, end = spans.pop()
        if end - first > 1:
            middle = (first + end) // 2
            gram[middle * k:end * k, first * k:middle * k] = X[:, middle * k:end * k].mT @ X[:, first * k:middle * k]
            spans += [(first, middle), (middle, end)]
    return gram


def gram_root(side: torch.Tensor, orthonormal: bool = True):
    """(eigenvalues, (X^T X)^(-1/2)) for X = side_by_side(side): the eigh of the gk-square Gram matrix,
    with orthonormal members (exact_factors) assembled by lower_gram."""
    X = side_by_side(side)
    eigenvalues, vectors = torch.linalg.eigh(lower_gram(X, side.shape[0]) if orthonormal else X.mT @ X)
    return eigenvalues, (vectors * root_weights(eigenvalues, X.shape[1])) @ vectors.mT


def pair_root(side: torch.Tensor):
    """gram_root of two members with orthonormal columns each, from the SVD of their k-square cross Gram.

    X^T X = [[I, C], [C^T, I]] with C = X_0^T X_1 = P diag(sigma) Q^T has eigenvalues 1 +- sigma_i with
    eigenvectors [p_i; +-q_i] / sqrt(2), so its inverse root is [[P a P^T, P b Q^T], [Q b P^T, Q a Q^T]]
    with a, b = (w(1 + sigma) +- w(1 - sigma)) / 2: a k-square SVD and one m k^2 GEMM in place of a
    2k-square eigh and an m (2k)^2 one.
    """
    k = side.shape[2]
    P, sigma, Qh = torch.linalg.svd(side[0].mT @ side[1])
    eigenvalues = torch.cat([1 - sigma, 1 + sigma])
    weights = root_weights(eigenvalues, 2 * k)
    a, b = (weights[k:] + weights[:k]) / 2, (weights[k:] - weights[:k]) / 2
    cross = (P * b) @ Qh
    root = torch.cat([torch.cat([(P * a) @ P.mT, cross], dim=1), torch.cat([cross.mT, (Qh.mT * a) @ Qh], dim=1)])
    return eigenvalues, root


def inverse_root(side: torch.Tensor):
    """(X^T X)^(-1/2) for X = side_by_side(side) of the members' factors [g, rows, k] (gk <= rows), or
    None where float32 is not enough.

    The Gram matrix squares the condition number: when its eigenvalues spread by more than
    1 / WELL_CONDITIONED (a near-square concatenation, overlapping task subspaces) float32 would lose
    more than ~1e-4 (None). Past NEAR_SQUARE that is known before the decomposition. pair_root and
    lower_gram rest on each member's columns being orthonormal to the side's rounding: true of
    exact_factors' float64 sides, and float32 ones count only while well-conditioned (their ~1e-7 off
    the identity is amplified by at most 1 / WELL_CONDITIONED).
    """
    g, rows, k = side.shape
    single = side.dtype != torch.float64
    if single and g * k > NEAR_SQUARE * rows:
        return None
    eigenvalues, root = (pair_root if g == 2 else gram_root)(side)
    if single and not eigenvalues.min() > WELL_CONDITIONED * eigenvalues.max():
        return None
    return root


def polar_factor(side: torch.Tensor) -> torch.Tensor:
    """P Q^T for side_by_side(side) = P Sigma Q^T (orthonormal columns spanning the same space), from the
    small side. Where inverse_root says float32 is not enough: the float64 Gram with its own diagonal
    blocks (a float32 member is orthonormal only to float32 rounding, which pair_root would amplify)."""
    root = inverse_root(side)
    if root is None:
        wide = side.to(torch.float64)
        return (side_by_side(wide) @ gram_root(wide, orthonormal=False)[1]).to(side.dtype)
    return side_by_side(side) @ root


def tsv_matrix(U: torch.Tensor, S: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """U_perp diag(S) V_perp^T from the members' factors U [g, m, k], S [g, k], V [g, n, k], in S's dtype,
    without forming the large side's polar factor where float32 takes it:
    L_perp diag(S) s_perp^T = L (R diag(S) s_perp^T) with R = inverse_root(L), a gk x gk by gk x small
    product in place of a large x gk by gk x gk one."""
    tall = U.shape[1] >= V.shape[1]
    large, small = (U, V) if tall else (V, U)
    scaled = polar_factor(small).to(S.dtype) * S.reshape(-1)  # [small side, gk]
    root = inverse_root(large) if large.dtype == S.dtype else None
    if root is None:  # a float64 side (exact_factors of a near-square matrix), or ill-conditioned
        large, core = polar_factor(large).to(S.dtype), scaled.mT
    else:
        large, core = side_by_side(large), root @ scaled.mT  # [gk, small side]
    return large @ core if tall else core.mT @ large.mT


def top_singular_triplets(stack: torch.Tensor, k: int):
    """(U [g, m, k], S [g, k], V [g, n, k]) of each member of a [g, m, n] stack.

    The Gram route when k is not small against min(m, n) or the spectrum is too flat for the iteration
    to pin the top k down; else subspace iteration.
    """
    g, m, n = stack.shape
    width = k + OVERSAMPLE
    if 4 * width > min(m, n):
        return top_singular_triplets_gram(stack, k)
    start = torch.randn(g, n, width, generator=torch.Generator().manual_seed(SEED), dtype=stack.dtype)
    basis = torch.linalg.qr(stack @ start.to(stack.device)).Q
    for iteration in range(POWER_ITERATIONS):
        projected = stack.mT @ basis
        if iteration == 0:  # its singular values are the first Ritz values: a flat spectrum shows already
            ritz = torch.linalg.svdvals(projected)
            if (ritz[:, -1] > FLAT * ritz[:, k - 1]).any():
                return top_singular_triplets_gram(stack, k)
        basis = torch.linalg.qr(stack @ torch.linalg.qr(projected).Q).Q
    small_U, S, Vh = torch.linalg.svd(basis.mT @ stack, full_matrices=False)  # [g, width, n]
    # the error bound (s_{k+p}/s_k)^(2q+1), from the Ritz values: a flat spectrum takes the full SVD,
    # unless what is flat is rounding noise (below max(m, n) * eps * s_1, no decomposition resolves it)
    converged = CONVERGED ** (1 / (2 * POWER_ITERATIONS + 1)) * S[:, k - 1]
    noise = max(m, n) * torch.finfo(stack.dtype).eps * S[:, 0]
    if (S[:, -1] > torch.maximum(converged, noise)).any():
        return top_singular_triplets_gram(stack, k)
    return basis @ small_U[..., :k], S[:, :k], Vh[:, :k].mT


def top_singular_triplets_gram(stack: torch.Tensor, k: int):
    """The top k triplets from the eigendecomposition of the min-side Gram matrices, else the full SVD.

    One GEMM pass in the input's dtype builds the min(m, n)-square Gram matrices G; their eigh runs in
    that dtype too (a float64 one costs twice as much), and a Rayleigh-Ritz step in float64 on the top
    2k eigenvectors removes most of float32 eigh's error (Gaussian 3072 x 768 members, k = 25: 8.7e-6
    -> 2.3e-6 off the float64 rank-k truncation; 5.7e-7 with a float64 eigh); the other side is
    X V_k / s_k. The Gram's rounding is ~eps * s_1^2, so s_k^2 must stand GRAM_ACCURACY / eps above it
    (s_k/s_1 >= 0.035 in float32: flat and power-law spectra, where the subspace iteration fails);
    steeper spectra and rank-deficient members take the full SVD.
    """
    wide = stack.shape[1] < stack.shape[2]
    X = stack.mT if wide else stack  # [g, max side, min side]
    gram = X.mT @ X
    if 2 * k < gram.shape[-1]:
        _, vectors = torch.linalg.eigh(gram)
        basis = torch.linalg.qr(vectors[..., -2 * k:].to(torch.float64)).Q
        eigenvalues, rotation = torch.linalg.eigh(basis.mT @ gram.to(torch.float64) @ basis)
        rotation = basis @ rotation
    else:  # the step over the whole space is the float64 eigh itself
        eigenvalues, rotation = torch.linalg.eigh(gram.to(torch.float64))
    top = eigenvalues[:, -k:].flip(-1)  # descending
    if not (top[:, -1] > torch.finfo(stack.dtype).eps / GRAM_ACCURACY * top[:, 0]).all():
        return top_singular_triplets_full(stack, k)
    S = top.sqrt().to(stack.dtype)
    V = rotation[..., -k:].flip(-1)  # float64, as the eigh gives it (exact_factors keeps it so)
    U = (X @ V.to(stack.dtype)) / S.unsqueeze(1)
    return (V, S, U) if wide else (U, S, V)


def top_singular_triplets_full(stack: torch.Tensor, k: int):
    U, S, Vh = torch.linalg.svd(stack, full_matrices=False)
    return U[..., :k], S[:, :k], Vh[:, :k].mT


def top_triplets(stack: torch.Tensor, k: int):
    """top_singular_triplets, redone in float64 when a kept singular value is float32 rounding noise
    (the polar step weights that direction like any other). S in the stack's dtype; U and V in it or in
    float64 (exact_factors settles their dtypes)."""
    g, m, n = stack.shape
    U, S, V = top_singular_triplets(stack, k)
    if stack.dtype != torch.float64 and (S[:, -1] <= max(m, n) * torch.finfo(stack.dtype).eps * S[:, 0]).any():
        U, S, V = top_singular_triplets(stack.to(torch.float64), k)
    return U, S.to(stack.dtype), V


def orthonormalised(factor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """factor [g, rows, r] in `dtype`, its columns orthonormal within ORTHONORMAL[dtype]: Newton-Schulz
    steps X (3I - X^T X) / 2, each of which squares the distance from orthonormal (a float32 factor in
    float64, ~1e-7 off, takes two; the Gram route's float64 eigenvectors none, only the check)."""
    X = factor.to(dtype)
    eye = torch.eye(X.shape[-1], dtype=dtype, device=X.device)
    for _ in range(ORTHONORMALISING_STEPS):
        error = X.mT @ X - eye
        distance = error.abs().amax() if error.numel() else 0.0
        if not distance > ORTHONORMAL[dtype]:
            break
        X = X - X @ error / 2
        if not distance ** 2 > ORTHONORMAL[dtype]:  # the step left ~3/4 of its square
            break
    return X


def exact_factors(U: torch.Tensor, S: torch.Tensor, V: torch.Tensor):
    """The factors as the polar step takes them, each member's columns orthonormal to the rounding of
    the dtype they are kept in (pair_root and the Gram's diagonal blocks rest on it).

    The min side in float64: its members side by side are near-square in every group, their Gram
    ill-conditioned (eigenvalues down to 2e-9 on the benchmark's c_fc), so a member ~1e-8 off
    orthonormal would move those directions by O(1). The other side in S's dtype (float32 for real
    checkpoints: well-conditioned, within 1e-6), or in float64 too where it can be near-square as well
    (min(m, n) > NEAR_SQUARE * max(m, n): square attention projections).
    """
    m, n = U.shape[1], V.shape[1]
    both = min(m, n) > NEAR_SQUARE * max(m, n)
    other = torch.float64 if both else S.dtype
    return (orthonormalised(U, torch.float64 if m <= n else other), S,
            orthonormalised(V, torch.float64 if n < m else other))


def member_triplets(stack: torch.Tensor):
    """(U [g, m, r], S [g, r], V [g, n, r]): each member's top r = min(m, n) // 2 triplets, the most a
    group of two or more uses (exact_factors); member by member, so that a row depends on its own task only."""
    g, m, n = stack.shape
    r = min(m, n) // 2
    if g == 0:
        return exact_factors(stack.new_zeros(0, m, r), stack.new_zeros(0, r), stack.new_zeros(0, n, r))
    parts = [top_triplets(member.unsqueeze(0), r) for member in stack]
    return exact_factors(*(torch.cat(part) for part in zip(*parts)))


def group_triplets(stack: torch.Tensor, triplets=None):
    """(U [g, m, k], S [g, k], V [g, n, k]): the members' top k = floor(min(m, n) / g) triplets, or None
    when k = 0.

    triplets: the members' own top triplets (member_triplets), of which the first k are taken;
    without them the top k are computed here.
    """
    g, m, n = stack.shape
    k = min(m, n) // g
    if k == 0:
        return None
    if triplets is None or triplets[1].shape[-1] < k:
        return exact_factors(*top_triplets(stack, k))
    return tuple(t[..., :k] for t in triplets)


def tsv_factors(stack: torch.Tensor):
    """(U_perp, S, V_perp) of a [g, m, n] stack, or None when k = 0: the factors that tsv_matrix folds."""
    parts = group_triplets(stack)
    if parts is None:
        return None
    U, S, V = parts
    return polar_factor(U).to(S.dtype), S.reshape(-1), polar_factor(V).to(S.dtype)


def factorised(shape) -> bool:
    """Whether preprocess_block stores factors for a tensor of this (per-task) shape: matrices of rank >= 2."""
    return len(shape) == 2 and min(shape) >= 2


def factor_name(name: str, part: str) -> str:
    """The preprocessed entry holding one part ("U", "S" or "V") of a matrix's member_triplets."""
    return f"{name}:tsv.{part}"


class TsvMerge(MergeAlgorithm):
    name = "tsv"
    params = (ALPHA,)
    results_version = 1  # pairs from the cross Gram, orthonormal factors: within 2.3e-6 of version 0

    @property
    def preprocessing_key(self) -> str:
        """What a preprocessed row depends on besides its own task's vectors (alpha does not count)."""
        return content_hash("tsv-factors", FACTORS_VERSION)

    @property
    def raw_similarity(self) -> bool:
        return True  # similarity_block is the task vectors themselves, never their factors

    def similarity_block(self, block, tasks=None):
        return self._input_vectors(block, tasks)

    def preprocess_block(self, block, tasks=None):
        """The vectors plus, per matrix, its members' top triplets (factor_name entries, one row per task):
        a task is factorised once, whatever groups it joins, and a merge only slices and runs the polar step."""
        vectors = self._input_vectors(block, tasks)
        out = dict(vectors)
        for name, stack in vectors.items():
            if factorised(stack.shape[1:]):
                out.update(zip((factor_name(name, part) for part in FACTOR_PARTS), member_triplets(stack)))
        return out

    def row_bytes(self, shapes):
        """The float32 vectors plus each matrix's factors: r = min(m, n) // 2 columns of the min side in
        float64, of the other side in float32 (float64 where exact_factors keeps both), r singular values
        (ViT-B-32: 1.75x the vectors of an MLP block, 2.1x of an attention block)."""
        total = super().row_bytes(shapes)
        for shape in shapes:
            if factorised(shape):
                small, large = sorted(shape)
                other = 8 if small > NEAR_SQUARE * large else 4
                total += (small // 2) * (8 * small + other * large + 4)
        return total

    def _merge(self, block, members):
        alpha = self._hp["alpha"]
        stored = {factor_name(name, part) for name in block for part in FACTOR_PARTS}
        out = {}
        for name, stack in block.items():
            if name in stored:
                continue
            triplets = [block.get(factor_name(name, part)) for part in FACTOR_PARTS]
            parts = group_triplets(stack, None if triplets[0] is None else triplets) if stack.ndim == 3 else None
            out[name] = alpha * (stack.mean(dim=0) if parts is None else tsv_matrix(*parts))
        return MergeResult(unified=out)

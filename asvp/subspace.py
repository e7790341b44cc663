"""The standard-op algorithm, in torch: what graph_passes/subgraph.py emits as standard ONNX ops, operation for
operation, so that the approximation can be studied (and tested) without ONNX.

Sequentially deflated power iteration by repeated squaring, then a two-step Jacobi Rayleigh-Ritz (`asvp_subspace`);
docs/method.md derives it and gives its measured error against the exact ASVP of asvp/method.py. Every constant
here is shared with the graph.

Precision (docs/method.md, "Reduced precision"): the two passes over the feature (the scaled Gram and the apply) run
in the feature's dtype, float16 and bfloat16 included; the C x C solve between them (trace normalisation, powers,
Rayleigh-Ritz, mask) runs in float32 for reduced-precision features (`solve_dtype`).
"""
from __future__ import annotations

import numpy as np
import torch

from asvp.config import AsvpConfig
from asvp.method import as_matrix


def initial_basis(channels: int, k: int, dtype=np.float32) -> np.ndarray:
    """Deterministic C x k start for subspace iteration: an orthonormalised fixed pseudo-random matrix.

    Fixed seed, so every export of the same model is byte-identical; random (not e.g. identity columns)
    so that it is almost surely not orthogonal to the dominant subspace of any real feature.
    """
    rng = np.random.default_rng(20251008)
    q, _ = np.linalg.qr(rng.standard_normal((channels, k)))
    return q.astype(dtype)


# The algorithm's constants: graph_passes/subgraph.py emits them as they are, so the graph and this mirror agree.
SUBSPACE_OVERSAMPLE = 2  # block width kb = k + 2: Rayleigh-Ritz then resolves s_k ~ s_{k+1} exactly (docs/method.md 5)
WHOLE_SPACE_MAX_EXTRA = 4  # C <= k + 4: take all C directions (tiny features; the subspace is then exact)
SHIFT = 1e-4  # G -> G + SHIFT * trace(G) * I: same eigenvectors; keeps every deflated Gram's top eigenvalue well
#               above float32 round-off of the removed directions (rank-deficient features); removed from the mask
SIGMA = 1e-30  # absolute guard added to the Gram diagonal before its trace: an all-zero feature gives G ~ I, not 0/0
TINY = 1e-30  # guards 0/0 in the Jacobi angles for exactly diagonal (and all-zero) Rayleigh-Ritz matrices
FIRST_NORM_MAX_C = 128  # column 0 squares G (trace sqrt(C)) 4 times before normalising: its values stay in [C^-8, C^8]
# The Gram reads M * r, r = GRAM_SCALE / max(max|M|, FEATURE_FLOOR) per sample: |M r| <= 2^-7, so G's entries are
# at most HW / 2^14 (in float16 range up to 2^30 pixels) whatever the activation scale, while M r stays well inside
# float16's normal range (typical entries ~1e-3). r is one scalar per sample and the trace normalisation removes it
# (nor does it touch the apply, which reads M itself): any rounding of r cancels exactly. The floor keeps r <= 128
# (finite in float16) for an all-zero feature.
GRAM_SCALE = 2.0**-7
FEATURE_FLOOR = 2.0**-14  # float16's smallest normal number
REDUCED = (torch.float16, torch.bfloat16)
DENSE_APPLY_MAX_C = 32  # C <= 32: apply as one C x C matrix (I + U W U^T) M, faster on CPU; above, low rank
# (the dense product's C^2 HW MACs outgrow the low-rank form's extra passes: docs/method.md sections 3 and 6)


def block_width(channels: int, k: int) -> int:
    """Columns kept for the Rayleigh-Ritz step: k + SUBSPACE_OVERSAMPLE, or all of them for tiny features."""
    if channels <= k + WHOLE_SPACE_MAX_EXTRA:
        return channels
    return min(k + SUBSPACE_OVERSAMPLE, channels)


def column_squarings(iters: int, kb: int) -> list[int]:
    """Squarings of each powered column's deflated Gram (the last of the kb columns is not powered on its own).

    Column j is the dominant eigenvector of the Gram deflated by columns 0..j-1, raised to the power 2^s_j by s_j
    squarings: iters for columns 0 and 1 (the leading directions are the best separated), iters + 1 after. At the
    default iters = 4: powers 16, 16, 32, 32, 32 (each doubling costs one node per column).
    """
    return [iters, iters] + [iters + 1] * max(kb - 3, 0)


def normalise_before(column: int, i: int, channels: int) -> bool:
    """Whether the column's matrix is rescaled (Frobenius) before its i-th squaring (0-based).

    Deflated Grams can have a tiny spectral radius, so columns >= 1 are rescaled after 2 squarings and then every 3:
    after a rescale the top eigenvalue is >= ||.||_F / sqrt(C), so 3 squarings keep it above C^-4 (no underflow in
    float32, nor in the vector norm that follows). Column 0 squares G itself (trace sqrt(C), top eigenvalue in
    [C^-1/2, C^1/2]) and needs its first rescale only after 4 squarings while C <= FIRST_NORM_MAX_C.
    """
    first = 4 if (column == 0 and channels <= FIRST_NORM_MAX_C) else 2
    return i >= first and (i - first) % 3 == 0


def _frobenius(a: torch.Tensor) -> torch.Tensor:
    return torch.sqrt((a * a).sum(dim=(1, 2), keepdim=True))


def deflated_basis(gs: torch.Tensor, x: torch.Tensor, iters: int) -> torch.Tensor:
    """kb orthonormal columns [N, C, kb] approximating the top eigenvectors of gs (sequential deflation).

    Column j: P_j = I - sum_{i<j} v_i v_i^T, v_j = normalise((P_j G)^(2^s_j) x_j) (x = initial_basis). Deflating
    *before* powering is what lets the power be 32: within one column the wanted direction is the dominant one, so
    float32 never has to hold the ratio lambda_1/lambda_j to a high power (subspace iteration of a block does, which
    capped it at G^3 per orthonormalisation). The last column needs no powers of its own: it is the second direction
    of the previous column's power, projected twice by its P (the second pass removes the round-off the first leaves
    when that direction is below float32 precision, i.e. well separated and so not needed for Rayleigh-Ritz).
    """
    n, c, _ = gs.shape
    kb = x.shape[1]
    eye = torch.eye(c, dtype=gs.dtype)
    squarings = column_squarings(iters, kb)
    cols, proj, p = [], None, None
    for j in range(kb):
        if j > 0:
            outer = torch.einsum("nci,ndi->ncd", cols[-1], cols[-1])
            proj = eye - outer if proj is None else proj - outer
        if j == kb - 1 and j > 0:
            y = proj @ (proj @ (p @ x[:, j : j + 1]))
        else:
            p = gs if j == 0 else proj @ gs
            for i in range(squarings[j]):
                if normalise_before(j, i, c):
                    p = p / _frobenius(p)
                p = p @ p
            y = p @ x[:, j : j + 1]
        cols.append(y / torch.linalg.vector_norm(y, dim=1, keepdim=True))
    return torch.cat(cols, dim=2)


def jacobi_exp_step(b: torch.Tensor) -> torch.Tensor:
    """One simultaneous Jacobi step for B [N, kb, kb]: an orthogonal V with V^T B V closer to diagonal.

    Every pair (r, c) gets the angle of its exact 2 x 2 rotation, 2 phi = atan(2 b_rc / (d_c - d_r)) (|phi| <= pi/4;
    written 2 b (d_c - d_r) / ((d_c - d_r)^2 + TINY) so that exactly diagonal pairs give 0, not 0/0). B is symmetrised
    first (S = B + B^T): B is symmetric only up to round-off, and for (near-)degenerate pairs the angle is decided by
    that round-off, so only an exactly antisymmetric angle matrix Phi keeps V orthogonal. V = exp(Phi) as
    (Taylor_2(Phi / 2))^2 followed by one Newton-Schulz polar step V (1.5 I - 0.5 V^T V); the Taylor polynomial is
    evaluated halved, T = I / 2 + a (I + a) with a = Phi / 4, which saves a node and is undone in the polar step's
    constants (T^2 = V / 4, so V (1.5 I - 0.5 V^T V) = T^2 (6 I - 32 (T^2)^T T^2)).
    """
    kb = b.shape[-1]
    eye = torch.eye(kb, dtype=b.dtype)
    s = b + b.transpose(1, 2)
    d = (s * (0.5 * eye)).sum(dim=1, keepdim=True)  # diag(B), [N, 1, kb]
    diff = d - d.transpose(1, 2)  # [r, c] = d_c - d_r
    a = torch.atan(s * diff / (diff * diff + TINY)) * 0.125  # phi / 4
    t = 0.5 * eye + a @ (eye + a)  # (I + phi/2 + (phi/2)^2 / 2) / 2
    t = t @ t
    return t @ (6.0 * eye - torch.einsum("nij,nik->njk", t, t) * 32.0)


def jacobi_polish_step(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The second, first-order Jacobi step (angles are small after jacobi_exp_step) and 2 diag(B).

    phi_rc ~ b_rc / (d_c - d_r), clipped to [-1, 1] (degenerate pairs: any rotation in their plane is right, and the
    clip keeps V well conditioned), V = column-normalised I + Phi, which is exactly orthogonal for disjoint pairs and
    orthogonal to O(phi^2) otherwise. Returns V and 2 diag(B) (the Ritz values, doubled; TopK sorts them).
    """
    kb = b.shape[-1]
    eye = torch.eye(kb, dtype=b.dtype)
    s = b + b.transpose(1, 2)
    d = (s * eye).sum(dim=1, keepdim=True)  # 2 diag(B)
    diff = d - d.transpose(1, 2)
    t = torch.clamp(s * diff / (diff * diff + TINY), -1.0, 1.0)
    v = eye + t
    return v / torch.linalg.vector_norm(v, dim=1, keepdim=True), d


def gram_scale(m: torch.Tensor) -> torch.Tensor:
    """r [N, 1, 1] (m's dtype) such that M r has entries <= GRAM_SCALE: the Gram's input (GRAM_SCALE above)."""
    return GRAM_SCALE / torch.clamp_min(m.abs().amax(dim=(1, 2), keepdim=True), FEATURE_FLOOR)


def asvp_subspace(feat: torch.Tensor, cfg: AsvpConfig, solve_dtype: torch.dtype | None = None) -> torch.Tensor:
    """The standard-op algorithm (what graph_passes emits, operation for operation), in torch; returns feat's dtype.

    Precision: the scaled Gram G = (M r)(M r)^T and the apply read the feature in its own dtype (float16/bfloat16
    products with the float32 accumulation of torch's CPU kernels and of GPU tensor cores, the result rounded to
    the dtype); the C x C solve from G to U runs in `solve_dtype` (default: float32 for float16/bfloat16 features,
    feat's dtype otherwise). The solve must be float32: its repeated squarings hold Gs^16 (values up to C^8) and
    deflated Grams down to the shift (~1e-4), outside float16's range, and 1e-30 guards that float16 rounds to 0.
    It is O(C^3), nothing next to the two O(C^2 HW) passes. Passing solve_dtype=feat.dtype runs it all reduced
    (benchmarks/precision.py measures what that does).

    Gs = (G + SIGMA I) / (trace / sqrt(C)) + SHIFT sqrt(C) I, with r (gram_scale) removed by the trace (eigenvalues
    sum to sqrt(C): column 0's powers stay in float32 range without rescaling); Q = deflated_basis(Gs, initial_basis(C, kb), cfg.iters)
    (kb = block_width(C, k)); Rayleigh-Ritz on B = Q^T Gs Q by jacobi_exp_step then jacobi_polish_step; the k
    largest Ritz values (TopK) are the energies for the adaptive mask (compared with tau plus the shift, exactly) and
    their Ritz vectors are U_k; M' = M + (h - 1) U_k diag(mask) U_k^T M, as one C x C matrix times M when
    C <= DENSE_APPLY_MAX_C.
    """
    m = as_matrix(feat)
    solve = solve_dtype or (torch.float32 if m.dtype in REDUCED else m.dtype)
    ms = m * gram_scale(m)
    u, scaled = top_directions((ms @ ms.transpose(1, 2)).to(solve), cfg)
    return apply_update(feat, m, u, scaled)


def top_directions(gram: torch.Tensor, cfg: AsvpConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(U [N, C, k], U diag(weights) [N, C, k]) from the (scaled) Gram matrix, in its dtype: the C x C solve."""
    n, c, _ = gram.shape
    k = cfg.k
    kb = block_width(c, k)
    eye_c = torch.eye(c, dtype=gram.dtype)
    gram = gram + SIGMA * eye_c
    scale = (gram * (eye_c / c**0.5)).sum(dim=(1, 2), keepdim=True)  # trace / sqrt(C)
    gs = gram / scale + (SHIFT * c**0.5) * eye_c
    x = torch.from_numpy(initial_basis(c, kb)).to(gram.dtype)
    q = deflated_basis(gs, x, cfg.iters)
    q = q @ jacobi_exp_step(torch.einsum("nci,ncj->nij", q, gs @ q))
    v, ritz2 = jacobi_polish_step(torch.einsum("nci,ncj->nij", q, gs @ q))
    q = q @ v
    energies2, idx = torch.topk(ritz2, k, dim=2)  # [N, 1, k]: 2 (sqrt(C) lambda_i / trace + shift), descending
    u = torch.gather(q, 2, idx.expand(n, c, k))
    if cfg.k_mode == "adaptive":
        before = torch.cumsum(energies2, dim=2) - energies2
        amplified = before < torch.from_numpy(adaptive_thresholds(c, cfg)).to(gram.dtype)
        return u, u * (amplified.to(gram.dtype) * (cfg.h - 1.0))
    return u, u * (cfg.h - 1.0)


def apply_update(feat: torch.Tensor, m: torch.Tensor, u: torch.Tensor, scaled: torch.Tensor) -> torch.Tensor:
    """M' = (I + scaled U^T) M shaped as feat, the products over M in m's dtype (the C x C factor is formed in u's
    dtype, then rounded): dense up to DENSE_APPLY_MAX_C, low rank above."""
    c = m.shape[1]
    if c <= DENSE_APPLY_MAX_C:  # same M', as (I + U diag((h - 1) mask) U^T) M
        p = torch.einsum("nck,ndk->ncd", scaled, u) + torch.eye(c, dtype=u.dtype)
        return (p.to(m.dtype) @ m).reshape(feat.shape)
    coeffs = u.transpose(1, 2).to(m.dtype) @ m
    return feat + (scaled.to(m.dtype) @ coeffs).reshape(feat.shape)


def adaptive_thresholds(channels: int, cfg: AsvpConfig) -> np.ndarray:
    """[1, 1, k] thresholds for the exclusive cumulative sum of the doubled, shifted Ritz values.

    Direction j (0-based) is amplified iff sum_{i<j} lambda_i < tau * trace, i.e. (scaled as in asvp_subspace)
    sum_{i<j} 2 (sqrt(C) lambda_i / trace + SHIFT sqrt(C)) < 2 sqrt(C) (tau + j SHIFT): the shift is removed exactly.
    """
    j = np.arange(cfg.k, dtype=np.float64)
    return (2.0 * channels**0.5 * (cfg.tau + j * SHIFT)).reshape(1, 1, cfg.k).astype(np.float32)

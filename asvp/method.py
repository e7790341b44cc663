"""The ASVP method as asvp defines it (arXiv 2510.08925 publishes no code; this is our precise reading).

For a feature map F [N, C, H, W], per sample n:
    M = F[n].reshape(C, H*W),  M = U diag(s) V^T  (s descending)
    k_n = fixed k,  or (adaptive) the smallest k with  sum_{i<=k} s_i^2 >= tau * sum_i s_i^2,  capped at k
    M'  = M + (h - 1) * U_k U_k^T M        (s_i -> h * s_i for i <= k_n; U, V and the other s_i unchanged)

Two exact implementations live here:
  * `asvp_reference`  float64 `torch.linalg.svd`: the ground truth every backend is tested against.
  * `asvp_exact`      eigendecomposition of the C x C Gram matrix M M^T (cheap: C is small, H*W is not),
                      on any device/dtype; the CPU custom op and the TensorRT plugin both run this.
`variant_reference` is the float64 ground truth of the keyed variants (docs/variants.md; the graph: graph_passes/variants.py).
`asvp_subspace` mirrors, in torch, the standard-ONNX-op subgraph (sequentially deflated power iteration by repeated
squaring, then a two-step Jacobi Rayleigh-Ritz), so the approximation can be studied without ONNX.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch

from asvp.config import DEFAULT_ANGLE_MAX, AsvpConfig


def adaptive_k_mask(energies: torch.Tensor, tau: float, k_max: int, adaptive: bool) -> torch.Tensor:
    """Mask [N, k_max] of the singular directions to amplify, from per-sample energies s_i^2 (descending).

    Direction j is kept iff the energy of directions 0..j-1 is still below tau * total energy, which selects
    exactly the smallest k reaching the share tau (at least 1 while the feature is non-zero), capped at k_max.
    """
    top = energies[:, :k_max]
    if not adaptive:
        return torch.ones_like(top)
    total = energies.sum(dim=1, keepdim=True)
    before = torch.cumsum(top, dim=1) - top
    return (before < tau * total).to(energies.dtype)


def _as_matrix(feat: torch.Tensor) -> torch.Tensor:
    if feat.ndim != 4:
        raise ValueError(f"ASVP expects a rank-4 NCHW feature, got shape {tuple(feat.shape)}")
    n, c, h, w = feat.shape
    return feat.reshape(n, c, h * w)


def _apply(m: torch.Tensor, u: torch.Tensor, mask: torch.Tensor, h: float) -> torch.Tensor:
    # M' = M + (h - 1) U_k diag(mask) U_k^T M, computed low-rank: cost O(k C HW), never C x C x HW.
    coeff = torch.einsum("nck,ncp->nkp", u, m) * mask.unsqueeze(-1)
    return m + (h - 1.0) * torch.einsum("nck,nkp->ncp", u, coeff)


def asvp_reference(feat: torch.Tensor, cfg: AsvpConfig) -> torch.Tensor:
    """Ground truth: float64 full SVD. Returns float64."""
    m = _as_matrix(feat.detach().to(torch.float64))
    u, s, _ = torch.linalg.svd(m, full_matrices=False)
    k = min(cfg.k, s.shape[1])
    mask = adaptive_k_mask(s**2, cfg.tau, k, cfg.k_mode == "adaptive")
    return _apply(m, u[:, :, :k], mask, cfg.h).reshape(feat.shape)


def asvp_exact(feat: torch.Tensor, cfg: AsvpConfig) -> torch.Tensor:
    """Exact ASVP through eigh of the Gram matrix, accumulated in float64; returns feat's dtype/device."""
    m = _as_matrix(feat).to(torch.float64)
    gram = m @ m.transpose(1, 2)
    evals, evecs = torch.linalg.eigh(gram)  # ascending
    evals = evals.flip(-1).clamp_min(0)
    evecs = evecs.flip(-1)
    k = min(cfg.k, evals.shape[1])
    mask = adaptive_k_mask(evals, cfg.tau, k, cfg.k_mode == "adaptive")
    return _apply(m, evecs[:, :, :k], mask, cfg.h).reshape(feat.shape).to(feat.dtype)


def asvp_exact_numpy(feat: np.ndarray, cfg: AsvpConfig) -> np.ndarray:
    """`asvp_exact` on a numpy array (the ONNX Runtime custom op's kernel)."""
    return asvp_exact(torch.from_numpy(np.ascontiguousarray(feat)), cfg).numpy()


def initial_basis(channels: int, k: int, dtype=np.float32) -> np.ndarray:
    """Deterministic C x k start for subspace iteration: an orthonormalised fixed pseudo-random matrix.

    Fixed seed, so every export of the same model is byte-identical; random (not e.g. identity columns)
    so that it is almost surely not orthogonal to the dominant subspace of any real feature.
    """
    rng = np.random.default_rng(20251008)
    q, _ = np.linalg.qr(rng.standard_normal((channels, k)))
    return q.astype(dtype)


# ---- the standard-op algorithm -------------------------------------------------------------------------
# Sequentially deflated power iteration by repeated squaring + a two-step Jacobi Rayleigh-Ritz: see docs/method.md
# for the derivation and the measured error. graph_passes/subgraph.py emits exactly these operations as standard
# ONNX ops; every constant here is shared with it.
SUBSPACE_OVERSAMPLE = 2  # block width kb = k + 2: Rayleigh-Ritz then resolves s_k ~ s_{k+1} exactly (docs/method.md 5)
WHOLE_SPACE_MAX_EXTRA = 4  # C <= k + 4: take all C directions (tiny features; the subspace is then exact)
SHIFT = 1e-4  # G -> G + SHIFT * trace(G) * I: same eigenvectors; keeps every deflated Gram's top eigenvalue well
#               above float32 round-off of the removed directions (rank-deficient features); removed from the mask
SIGMA = 1e-30  # absolute guard added to the Gram diagonal before its trace: an all-zero feature gives G ~ I, not 0/0
TINY = 1e-30  # guards 0/0 in the Jacobi angles for exactly diagonal (and all-zero) Rayleigh-Ritz matrices
FIRST_NORM_MAX_C = 128  # column 0 squares G (trace sqrt(C)) 4 times before normalising: its values stay in [C^-8, C^8]
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


def asvp_subspace(feat: torch.Tensor, cfg: AsvpConfig) -> torch.Tensor:
    """The standard-op algorithm (what graph_passes emits, operation for operation), in torch, in feat's dtype.

    Gs = (G + SIGMA I) / (trace / sqrt(C)) + SHIFT sqrt(C) I, G = M M^T (eigenvalues sum to sqrt(C): column 0's
    powers stay in float32 range without rescaling); Q = deflated_basis(Gs, initial_basis(C, kb), cfg.iters)
    (kb = block_width(C, k)); Rayleigh-Ritz on B = Q^T Gs Q by jacobi_exp_step then jacobi_polish_step; the k
    largest Ritz values (TopK) are the energies for the adaptive mask (compared with tau plus the shift, exactly) and
    their Ritz vectors are U_k; M' = M + (h - 1) U_k diag(mask) U_k^T M, as one C x C matrix times M when
    C <= DENSE_APPLY_MAX_C.
    """
    m = _as_matrix(feat)
    n, c, _ = m.shape
    k = cfg.k
    kb = block_width(c, k)
    eye_c = torch.eye(c, dtype=m.dtype)
    gram = m @ m.transpose(1, 2) + SIGMA * eye_c
    scale = (gram * (eye_c / c**0.5)).sum(dim=(1, 2), keepdim=True)  # trace / sqrt(C)
    gs = gram / scale + (SHIFT * c**0.5) * eye_c
    x = torch.from_numpy(initial_basis(c, kb)).to(m.dtype)
    q = deflated_basis(gs, x, cfg.iters)
    q = q @ jacobi_exp_step(torch.einsum("nci,ncj->nij", q, gs @ q))
    v, ritz2 = jacobi_polish_step(torch.einsum("nci,ncj->nij", q, gs @ q))
    q = q @ v
    energies2, idx = torch.topk(ritz2, k, dim=2)  # [N, 1, k]: 2 (sqrt(C) lambda_i / trace + shift), descending
    u = torch.gather(q, 2, idx.expand(n, c, k))
    if cfg.k_mode == "adaptive":
        before = torch.cumsum(energies2, dim=2) - energies2
        weight = torch.where(before < torch.from_numpy(adaptive_thresholds(c, cfg)).to(m.dtype), cfg.h - 1.0, 0.0)
        scaled = u * weight
    else:
        scaled = u * (cfg.h - 1.0)
    if c <= DENSE_APPLY_MAX_C:  # same M', as (I + U diag((h - 1) mask) U^T) M
        p = torch.einsum("nck,ndk->ncd", scaled, u) + eye_c
        return (p @ m).reshape(feat.shape)
    return feat + (scaled @ (u.transpose(1, 2) @ m)).reshape(feat.shape)


def adaptive_thresholds(channels: int, cfg: AsvpConfig) -> np.ndarray:
    """[1, 1, k] thresholds for the exclusive cumulative sum of the doubled, shifted Ritz values.

    Direction j (0-based) is amplified iff sum_{i<j} lambda_i < tau * trace, i.e. (scaled as in asvp_subspace)
    sum_{i<j} 2 (sqrt(C) lambda_i / trace + SHIFT sqrt(C)) < 2 sqrt(C) (tau + j SHIFT): the shift is removed exactly.
    """
    j = np.arange(cfg.k, dtype=np.float64)
    return (2.0 * channels**0.5 * (cfg.tau + j * SHIFT)).reshape(1, 1, cfg.k).astype(np.float32)


# ---- keyed variants (docs/variants.md) ---------------------------------------------------------------------------
# Per query, the perturbation's parameters (keyed-h: h_q; keyed-rotation: one angle per pair of top directions) come
# from a keyed hash of the query's OWN feature, so the same query always gets the same answer. The hash is smooth
# (no rounding, no fractional part): the statistics are log q_l = log(C ||r_l^T M||^2 / ||M||^2) for key-derived unit
# vectors r_l, mixed by key-derived frequencies of magnitude HASH_FREQ into phases, then folded into [0, 1] by the
# triangle wave acos(sin(.)) / pi. Across images log q_l spreads by 0.2-0.9 at the bundled teachers' nodes, so phases
# spread by hundreds of radians (unrelated values per query); float32 evaluates log q_l to ~1e-6, so the graph's
# phases agree with this float64 reference to ~1e-3 rad and the two never fall on different sides of a jump. (The sums
# must be accurate: the graph takes them from MatMuls, since one float32 ReduceSumSquare over C x H x W elements
# measured ~1e-4 relative error in ONNX Runtime, which moved the hash by up to 0.02 of its range.)
HASH_STATS = 4  # L: projections of the feature the hash reads
HASH_FREQ = 400.0  # frequencies |omega| in [HASH_FREQ / 2, HASH_FREQ] radians per unit of log q


def _key_seed(key) -> int:
    # str(key): the integer 7 and the string "7" (what the command line passes) are the same key
    return int.from_bytes(hashlib.sha256(f"asvp-key:{key}".encode()).digest()[:8], "little")


def hash_outputs(cfg: AsvpConfig) -> int:
    """How many uniforms the keyed hash produces per query: 1 (keyed-h) or one per rotated pair (keyed-rotation)."""
    return 1 if cfg.variant == "keyed-h" else max(cfg.k // 2, 1)


def key_constants(cfg: AsvpConfig, channels: int) -> dict:
    """The key-derived constants of a keyed variant (float64): `proj` [L, C] unit rows r_l, `freq` [n, L],
    `phase` [n], and for keyed-rotation the orientation vectors `orient_a`, `orient_b` [n_pairs, C]. The graph
    stores these (as float32), so a defended model's constants encode the key."""
    rng = np.random.default_rng(_key_seed(cfg.key))
    n = hash_outputs(cfg)
    proj = rng.standard_normal((HASH_STATS, channels))
    proj /= np.linalg.norm(proj, axis=1, keepdims=True)
    freq = HASH_FREQ * rng.uniform(0.5, 1.0, (n, HASH_STATS)) * rng.choice([-1.0, 1.0], (n, HASH_STATS))
    phase = rng.uniform(0.0, 2 * np.pi, n)
    out = {"proj": proj, "freq": freq, "phase": phase}
    if cfg.variant == "keyed-rotation":
        out["orient_a"] = rng.standard_normal((n, channels))
        out["orient_b"] = rng.standard_normal((n, channels))
    return out


def keyed_uniforms(m: torch.Tensor, cfg: AsvpConfig, consts: dict | None = None) -> torch.Tensor:
    """[N, n] values in [0, 1] from each sample's feature matrix m [N, C, P] (in m's dtype): the keyed hash."""
    consts = consts or key_constants(cfg, m.shape[1])
    proj = torch.from_numpy(consts["proj"]).to(m.dtype)
    num = (torch.einsum("lc,ncp->nlp", proj, m) ** 2).sum(dim=2) + SIGMA  # [N, L]
    total = (m * m).sum(dim=(1, 2)).unsqueeze(1) + m.shape[1] * SIGMA  # trace(M M^T + SIGMA I)
    logq = torch.log(num / total * m.shape[1])  # centred: E[q] = 1 / C for a random direction
    phases = logq @ torch.from_numpy(consts["freq"]).to(m.dtype).T + torch.from_numpy(consts["phase"]).to(m.dtype)
    return torch.arccos(torch.sin(phases).clamp(-1.0, 1.0)) / np.pi


def keyed_h(m: torch.Tensor, cfg: AsvpConfig) -> torch.Tensor:
    """keyed-h: the per-sample amplification h_q = h + (h_max - h) u_q, [N]."""
    return cfg.h + (cfg.h_max - cfg.h) * keyed_uniforms(m, cfg)[:, 0]


def rotation_pairs(k: int) -> np.ndarray:
    """[n_pairs, k] 0/1: pair j rotates directions 2j and 2j + 1 (an odd k leaves the last one unrotated)."""
    n = max(k // 2, 1)
    out = np.zeros((n, k))
    for j in range(k // 2):
        out[j, 2 * j : 2 * j + 2] = 1.0
    return out


def rotation_sign_pattern(k: int) -> np.ndarray:
    """[k, k]: the off-diagonal signs of a rotation by +theta in each plane (2j, 2j + 1) ([[c, -s], [s, c]])."""
    s = np.zeros((k, k))
    for j in range(k // 2):
        s[2 * j + 1, 2 * j], s[2 * j, 2 * j + 1] = 1.0, -1.0
    return s


def keyed_rotation_core(m: torch.Tensor, u: torch.Tensor, weight: torch.Tensor, cfg: AsvpConfig,
                        consts: dict | None = None) -> torch.Tensor:
    """A [N, k, k] = R_q H - I for keyed-rotation, from the top-k directions u [N, C, k] (descending) and the
    per-direction amplification weight [N, k] (h on amplified directions, 1 elsewhere).

    Pair j's plane (u_2j, u_2j+1) is rotated by theta_j = angle_max (2 u_j - 1) degrees, oriented by the key: the
    rotation's sense flips with sign det([u_2j u_2j+1]^T [a_j b_j]), which does not depend on the SVD's choice of
    signs, nor on the basis chosen inside the plane when s_2j ~ s_2j+1 (only a reflection flips it).
    """
    consts = consts or key_constants(cfg, m.shape[1])
    k = u.shape[2]
    angle = np.deg2rad(cfg.angle_max if cfg.angle_max is not None else DEFAULT_ANGLE_MAX)
    theta = angle * (2.0 * keyed_uniforms(m, cfg, consts) - 1.0)  # [N, n_pairs]
    pairs = torch.from_numpy(rotation_pairs(k)).to(m.dtype)  # [n_pairs, k]
    a_col = torch.from_numpy(consts["orient_a"]).to(m.dtype).T @ pairs  # [C, k]: a_{j(b)} in column b
    b_col = torch.from_numpy(consts["orient_b"]).to(m.dtype).T @ pairs
    pa, pb = (u * a_col).sum(dim=1), (u * b_col).sum(dim=1)  # [N, k]
    sel_even = torch.from_numpy(pair_selector(k, 0)).to(m.dtype)  # [k, n_pairs]
    sel_odd = torch.from_numpy(pair_selector(k, 1)).to(m.dtype)
    det = (pa @ sel_even) * (pb @ sel_odd) - (pb @ sel_even) * (pa @ sel_odd)  # [N, n_pairs]
    theta_col = (theta * torch.sign(det)) @ pairs  # [N, k]: 0 for an unpaired last direction
    eye = torch.eye(k, dtype=m.dtype)
    sign = torch.from_numpy(rotation_sign_pattern(k)).to(m.dtype)
    rot = eye * torch.cos(theta_col).unsqueeze(1) + sign * torch.sin(theta_col).unsqueeze(1)  # column b: plane of b
    return rot * weight.unsqueeze(1) - eye


def pair_selector(k: int, which: int) -> np.ndarray:
    """[k, n_pairs]: column j picks direction 2j + which (0: the first of pair j, 1: the second)."""
    out = np.zeros((k, max(k // 2, 1)))
    for j in range(k // 2):
        out[2 * j + which, j] = 1.0
    return out


def variant_reference(feat: torch.Tensor, cfg: AsvpConfig) -> torch.Tensor:
    """Ground truth of a keyed variant (float64 full SVD, like asvp_reference; returns float64).

    The adaptive mask is asvp_reference's; the amplified directions get h_q (keyed-h) or h (keyed-rotation), and
    keyed-rotation also rotates the top-k directions in pairs: M' = M + U_k (R_q H - I) U_k^T M.
    """
    m = _as_matrix(feat.detach().to(torch.float64))
    u, s, _ = torch.linalg.svd(m, full_matrices=False)
    k = min(cfg.k, s.shape[1])
    mask = adaptive_k_mask(s**2, cfg.tau, k, cfg.k_mode == "adaptive")
    uk = u[:, :, :k]
    if cfg.variant == "keyed-h":
        coeff = torch.einsum("nck,ncp->nkp", uk, m) * (mask * (keyed_h(m, cfg) - 1.0).unsqueeze(1)).unsqueeze(-1)
        return (m + torch.einsum("nck,nkp->ncp", uk, coeff)).reshape(feat.shape)
    if cfg.variant == "keyed-rotation":
        a = keyed_rotation_core(m, uk, 1.0 + (cfg.h - 1.0) * mask, cfg)
        return (m + uk @ (a @ (uk.transpose(1, 2) @ m))).reshape(feat.shape)
    return asvp_reference(feat, cfg)

"""The ASVP method as asvp defines it (arXiv 2510.08925 publishes no code; this is our precise reading).

For a feature map F [N, C, H, W], per sample n:
    M = F[n].reshape(C, H*W),  M = U diag(s) V^T  (s descending)
    k_n = fixed k,  or (adaptive) the smallest k with  sum_{i<=k} s_i^2 >= tau * sum_i s_i^2,  capped at k
    M'  = M + (h - 1) * U_k U_k^T M        (s_i -> h * s_i for i <= k_n; U, V and the other s_i unchanged)

Two exact implementations live here:
  * `asvp_reference`  float64 `torch.linalg.svd`: the ground truth every backend is tested against.
  * `asvp_exact`      eigendecomposition of the C x C Gram matrix M M^T (cheap: C is small, H*W is not),
                      on any device/dtype; the CPU custom op and the TensorRT plugin both run this.
`asvp_subspace` mirrors, in torch, the standard-ONNX-op subgraph (oversampled subspace iteration with a Jacobi
Rayleigh-Ritz step), so the approximation can be studied without ONNX.
"""
from __future__ import annotations

import numpy as np
import torch

from asvp.config import AsvpConfig


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
# Oversampled subspace iteration + a Jacobi Rayleigh-Ritz step: see docs/method.md for the derivation and the
# measured error. graph_passes/subgraph.py emits exactly these operations as standard ONNX ops; every constant
# here is shared with it.
SUBSPACE_OVERSAMPLE = 4  # block width kb = min(k + 4, C): convergence of the top-k subspace ~ (s_{kb+1}/s_k)^(2*power)
SUBSPACE_POWER = 3  # each step multiplies by G^3 (G^4 loses the k-th direction below float32 round-off)
JACOBI_STEPS = 3  # simultaneous Jacobi rotations on the kb x kb Ritz matrix (quadratic convergence)
EXP_SQUARINGS = 3  # exp(A) = (Taylor_4(A / 2^3))^(2^3), then one Newton-Schulz polar step
EXP_TAYLOR_DEGREE = 4
DENSE_APPLY_MAX_C = 64  # C <= 64: apply as one C x C matrix (I + U W U^T) M: fewer passes over M, faster on CPU
EPS = 1e-12  # trace regulariser (features are float32; trace-normalised G has eigenvalues in [0, 1])
TINY = 1e-30  # guards 0/0 for all-zero features and exactly diagonal Ritz matrices (a normal float32)


def block_width(channels: int, k: int) -> int:
    return min(k + SUBSPACE_OVERSAMPLE, channels)


def mgs(z: torch.Tensor) -> torch.Tensor:
    """Modified Gram-Schmidt over the last axis of [N, C, kb]: q_j = z_j / (||z_j|| + TINY), then z -= q_j (q_j^T z)."""
    cols = []
    for j in range(z.shape[-1]):
        zj = z[..., j : j + 1]
        qj = zj / (torch.linalg.vector_norm(zj, dim=1, keepdim=True) + TINY)
        cols.append(qj)
        if j < z.shape[-1] - 1:
            z = z - qj * (qj * z).sum(dim=1, keepdim=True)
    return torch.cat(cols, dim=-1)


def jacobi_rotation(b: torch.Tensor) -> torch.Tensor:
    """One simultaneous Jacobi step for symmetric b [N, kb, kb]: an orthogonal V with V^T b V closer to diagonal.

    Every pair (r, c) gets the angle phi_rc = atan(t_rc) of the exact 2 x 2 Jacobi rotation,
    t = 2 b_rc sign(d_c - d_r) / (|d_c - d_r| + sqrt((d_c - d_r)^2 + 4 b_rc^2)), |phi| <= pi/4. The angles form an
    antisymmetric A (antisymmetrised: (A - A^T) / 2) and V = exp(A) (orthogonal however large or clustered the
    angles are): scaling and squaring
    of a degree-4 Taylor polynomial, then one Newton-Schulz polar step to remove the truncation residue.
    """
    kb = b.shape[-1]
    eye = torch.eye(kb, dtype=b.dtype)
    bd = b * eye
    diff = bd.sum(dim=1, keepdim=True) - bd.sum(dim=2, keepdim=True)  # [r, c] = d_c - d_r
    off2 = b * (2.0 * (1.0 - eye))  # 2 * off-diagonal part
    root = torch.sqrt(diff * diff + off2 * off2 + TINY)
    angle = torch.atan(off2 * torch.sign(diff) / (diff.abs() + root))
    # Antisymmetrise: b is symmetric only up to round-off, and for (near-)degenerate pairs the angle is decided
    # by round-off; a non-antisymmetric A would make exp(A) non-orthogonal.
    x = (angle - angle.transpose(1, 2)) * (0.5 * 0.5**EXP_SQUARINGS)
    t = eye + x * (1.0 / EXP_TAYLOR_DEGREE)
    for j in range(EXP_TAYLOR_DEGREE - 1, 0, -1):  # Horner: I + x (I + x/2 (I + x/3 (I + x/4)))
        t = eye + (x * (1.0 / j)) @ t
    for _ in range(EXP_SQUARINGS):
        t = t @ t
    return t @ (1.5 * eye - 0.5 * (t.transpose(1, 2) @ t))


def asvp_subspace(feat: torch.Tensor, cfg: AsvpConfig) -> torch.Tensor:
    """The standard-op algorithm (what graph_passes emits, operation for operation), in torch, in feat's dtype.

    G = M M^T / trace(M M^T); Q = MGS(G^3 Q) for `cfg.iters` steps from `initial_basis(C, kb)` (kb = k + 4
    columns: oversampling makes the top-k subspace converge at (s_{kb+1}/s_k)^6 per step, not (s_{k+1}/s_k)^6);
    Q = MGS(Q); Rayleigh-Ritz on B = Q^T G Q by JACOBI_STEPS simultaneous Jacobi rotations; the k largest Ritz
    values (TopK) are the trace-normalised energies for the adaptive mask and their Ritz vectors are U_k;
    M' = M + (h - 1) U_k diag(mask) U_k^T M, as one C x C matrix times M when C <= DENSE_APPLY_MAX_C.
    """
    m = _as_matrix(feat)
    n, c, _ = m.shape
    k = cfg.k
    kb = block_width(c, k)
    gram = m @ m.transpose(1, 2)
    eye_c = torch.eye(c, dtype=m.dtype)
    trace = (gram * eye_c).sum(dim=(1, 2), keepdim=True)
    g = gram / (trace + EPS)
    g2 = g @ g
    gp = g2 @ g
    q = torch.from_numpy(initial_basis(c, kb)).to(m.dtype)
    for _ in range(cfg.iters):
        q = mgs(gp @ q)
    q = mgs(q)
    b = q.transpose(1, 2) @ (g @ q)
    for _ in range(JACOBI_STEPS):
        v = jacobi_rotation(b)
        b = v.transpose(1, 2) @ b @ v
        q = q @ v
    ritz = (b * torch.eye(kb, dtype=m.dtype)).sum(dim=1)  # [n, kb]
    energies, idx = torch.topk(ritz, k, dim=1)  # descending, G / trace eigenvalues: total energy 1
    u = torch.gather(q, 2, idx.unsqueeze(1).expand(n, c, k))
    if cfg.k_mode == "adaptive":
        mask = ((torch.cumsum(energies, dim=1) - energies) < cfg.tau).to(m.dtype)
    else:
        mask = torch.ones_like(energies)
    if c <= DENSE_APPLY_MAX_C:  # same M', as (I + U diag((h - 1) mask) U^T) M
        p = (u * ((cfg.h - 1.0) * mask).unsqueeze(1)) @ u.transpose(1, 2) + eye_c
        return (p @ m).reshape(feat.shape)
    return _apply(m, u, mask, cfg.h).reshape(feat.shape)

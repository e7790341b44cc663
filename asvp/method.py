"""The ASVP method as asvp defines it (arXiv 2510.08925 publishes no code; this is our precise reading).

For a feature map F [N, C, H, W], per sample n:
    M = F[n].reshape(C, H*W),  M = U diag(s) V^T  (s descending)
    k_n = fixed k,  or (adaptive) the smallest k with  sum_{i<=k} s_i^2 >= tau * sum_i s_i^2,  capped at k
    M'  = M + (h - 1) * U_k U_k^T M        (s_i -> h * s_i for i <= k_n; U, V and the other s_i unchanged)

Two exact implementations live here:
  * `asvp_reference`  float64 `torch.linalg.svd`: the ground truth every backend is tested against.
  * `asvp_exact`      eigendecomposition of the C x C Gram matrix M M^T (cheap: C is small, H*W is not),
                      on any device/dtype; the CPU custom op and the TensorRT plugin both run this.
Beside them: asvp/subspace.py mirrors in torch the standard-ONNX-op subgraph (`asvp_subspace`), and
asvp/variants.py holds the float64 ground truth of the keyed variants (`variant_reference`).
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


def as_matrix(feat: torch.Tensor) -> torch.Tensor:
    """feat [N, C, H, W] as the per-sample matrices M [N, C, H*W] the method works on (ValueError if not rank 4)."""
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
    m = as_matrix(feat.detach().to(torch.float64))
    u, s, _ = torch.linalg.svd(m, full_matrices=False)
    k = min(cfg.k, s.shape[1])
    mask = adaptive_k_mask(s**2, cfg.tau, k, cfg.k_mode == "adaptive")
    return _apply(m, u[:, :, :k], mask, cfg.h).reshape(feat.shape)


def asvp_exact(feat: torch.Tensor, cfg: AsvpConfig) -> torch.Tensor:
    """Exact ASVP through eigh of the Gram matrix, accumulated in float64; returns feat's dtype/device."""
    m = as_matrix(feat).to(torch.float64)
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

"""The adaptive attacker's transforms: it knows ASVP is there and tries to undo it before distilling.

For tap placement it inverts the perturbation on the received features (SVD of M', divide the top-k_n singular
values by the known h, with k_n re-derived from the adaptive rule); for inline placement it filters the received
outputs (super-resolution: back-projection onto the received low-resolution input; other tasks: a light Gaussian
smoothing of the predicted residual).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from asvp.config import AsvpConfig
from asvp.method import adaptive_k_mask
from asvp.tasks import get_task


def invert_asvp(feat: np.ndarray, cfg: AsvpConfig) -> tuple[np.ndarray, np.ndarray]:
    """Undo ASVP on received features M' = M + (h-1) U_k U_k^T M, knowing (h, k, k_mode, tau).

    U (and V) are unchanged by ASVP and, for h > 1, the amplified singular values stay on top, so the attacker
    takes the SVD of M', tries k' = 1..k, divides the top k' singular values by h, and keeps the k' that the
    adaptive rule re-derives from the recovered spectrum (fixed mode: k' = k). Returns (features, k' per sample).
    For h < 1 the amplified values can re-order and this inversion is not exact (measured, not assumed).
    """
    f = torch.from_numpy(np.asarray(feat, dtype=np.float64))
    n, c = f.shape[:2]
    m = f.reshape(n, c, -1)
    evals, evecs = torch.linalg.eigh(m @ m.transpose(1, 2))
    evals, evecs = evals.flip(-1).clamp_min(0), evecs.flip(-1)
    k = min(cfg.k, c)
    ks = np.full(n, k, dtype=np.int64)
    if cfg.k_mode == "adaptive":
        for i in range(n):
            best, best_gap = k, math.inf
            for cand in range(1, k + 1):
                e = evals[i : i + 1].clone()
                e[:, :cand] /= cfg.h**2
                got = int(adaptive_k_mask(e, cfg.tau, k, True).sum())
                if got == cand:
                    best = cand
                    break
                if abs(got - cand) < best_gap:
                    best, best_gap = cand, abs(got - cand)
            ks[i] = best
    mask = (torch.arange(k).reshape(1, k) < torch.from_numpy(ks).reshape(n, 1)).to(torch.float64)
    u = evecs[:, :, :k]
    coeff = torch.einsum("nck,ncp->nkp", u, m) * mask.unsqueeze(-1)
    rec = m + (1.0 / cfg.h - 1.0) * torch.einsum("nck,nkp->ncp", u, coeff)
    return rec.reshape(f.shape).numpy().astype(np.float32), ks


def gaussian_blur(t: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing of an NCHW tensor (reflect padding, radius ceil(3 sigma)), channel by channel."""
    r = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-r, r + 1, dtype=t.dtype)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    k = k / k.sum()
    c = t.shape[1]
    t = F.pad(t, (r, r, r, r), mode="reflect")
    t = F.conv2d(t, k.reshape(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(t, k.reshape(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def filter_outputs(task: str, outputs: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """The adaptive attacker's clean-up of received outputs (inline placement).

    sr: 3 steps of iterative back-projection onto the query (the x2 bicubic degradation is public), which
    removes whatever part of the perturbation is inconsistent with the low-resolution input.
    others: Gaussian smoothing (sigma 0.7 px) of the predicted residual (output - input).
    """
    spec = get_task(task)
    y, x = torch.from_numpy(outputs).float(), torch.from_numpy(queries).float()
    if spec.scale > 1:
        s = spec.scale
        for _ in range(3):
            down = F.interpolate(y, size=x.shape[-2:], mode="bicubic", antialias=True, align_corners=False)
            y = y + F.interpolate(x - down, scale_factor=s, mode="bicubic", align_corners=False)
    else:
        y = x + gaussian_blur(y - x, 0.7)
    return y.numpy().astype(np.float32)


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / ||b|| over the whole set (float64)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


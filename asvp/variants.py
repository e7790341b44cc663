"""The keyed variants' float64 ground truth (docs/variants.md; their graph: graph_passes/variants.py).

keyed-h amplifies each query's top directions by its own h_q; keyed-rotation also rotates them in pairs. Both
keep ASVP's directions and adaptive mask (asvp/method.py); `variant_reference` is what the emitted graph is tested
against, and the key-derived constants here are the ones the graph stores.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch

from asvp.config import DEFAULT_ANGLE_MAX, AsvpConfig
from asvp.method import adaptive_k_mask, as_matrix, asvp_reference
from asvp.subspace import SIGMA

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
    m = as_matrix(feat.detach().to(torch.float64))
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

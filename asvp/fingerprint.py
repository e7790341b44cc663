"""The keyed distillation fingerprint (`asvp fingerprint`): the key, the mark it selects, and the exact test.

The mark. At one feature map F [N, C, H, W] of the served model, with W [C, m] the top-m principal directions
of F (computed once from probe images of the clean model; public, recorded in the marked model's metadata):

    F' = F + eps * W S_u W^T F          (a 1x1 convolution; S_u symmetric m x m, ||S_u||_F = 1)

S_u = sum_j u_j B_j over the orthonormal basis B_1..B_D of symmetric m x m matrices (D = m (m + 1) / 2), and the
unit vector u in R^D is drawn from the secret key (SHA-256 -> Gaussian -> normalised). It rescales and rotates
the feature inside its dominant (top-m singular) subspace, by a key-chosen pattern: the keyed variant of ASVP's
"multiply the top singular values by h". The key itself is never stored anywhere in the model.

The test. With T the clean teacher, delta_j(x) the output change of the equalised basis mark j (public: clean model + W + R
+ a key-free scale), and r(x) = S(x) - T(x) what a suspect S does differently from the clean teacher on the
probe images, the verifier forms t_j = <r, delta_j> (summed over probe pixels) and

    c = <u, t> / ||t||      (the cosine between the key and what the suspect reproduces)

If the suspect never saw the marked outputs, t does not depend on the key, and u is uniform on the unit sphere
of R^D independently of t, so c is distributed exactly as one coordinate of a uniform random unit vector:
P(c >= x) = 1/2 I_{1 - x^2}((D' - 1)/2, 1/2) for x >= 0. This p-value is exact for ANY innocent model (any bias,
architecture or training data) without reference models: the only assumptions are that the key was drawn at
random and kept secret. A student of the marked model reproduces delta_u ~ sum_j u_j delta_j, which pushes c
towards 1. Reference models (students of the clean teacher) are used for power, not validity: the span of their
(key-free) coefficient vectors is removed before the test (coefficients). Models trained on ground truth, other
architectures and baselines check the calibration empirically (research/fingerprint_eval.py).

The key space can also be restricted, key-free, to the directions that do not change the teacher's error to
first order on the owner's calibration data (cost_neutral_directions): D' counts what is left.
"""
from __future__ import annotations

import hashlib
import math
import secrets

import numpy as np

from asvp import constants
from asvp.errors import AsvpError

# the defaults the CLI shows (owned by asvp.constants, which imports nothing)
DEFAULT_M, DEFAULT_ALPHA, KEY_ENV = constants.FINGERPRINT_M, constants.FINGERPRINT_ALPHA, constants.FINGERPRINT_KEY_ENV
MARK_VERSION = 1
KEY_DOMAIN = b"asvp-fingerprint-v1\0"
MIN_KEY_CHARS = 8
RESPONSE_FLOOR = 1e-4  # key directions kept: basis responses >= this x the strongest (response_equalizer)


def new_key() -> str:
    """A fresh random key (128 bits, hex)."""
    return secrets.token_hex(16)


def check_key(key) -> str:
    if not isinstance(key, str) or len(key.strip()) < MIN_KEY_CHARS:
        raise AsvpError(f"the fingerprint key must be a string of at least {MIN_KEY_CHARS} characters "
                        "(use a random one: asvp fingerprint keygen)")
    return key.strip()


def key_direction(key: str, dim: int) -> np.ndarray:
    """The key's unit vector u in R^dim (uniform on the sphere for a random key)."""
    key = check_key(key)
    seed = int.from_bytes(hashlib.sha256(KEY_DOMAIN + key.encode()).digest()[:16], "big")
    g = np.random.default_rng(seed).standard_normal(dim)
    return g / np.linalg.norm(g)


def key_id(key: str) -> str:
    """A short public label for reports (a one-way hash under a different domain; never stored in models)."""
    return hashlib.sha256(b"asvp-fingerprint-key-id\0" + check_key(key).encode()).hexdigest()[:8]


def sym_basis(m: int) -> np.ndarray:
    """Orthonormal (Frobenius) basis of symmetric m x m matrices: [D, m, m], D = m (m + 1) / 2."""
    out = []
    for i in range(m):
        for j in range(i, m):
            b = np.zeros((m, m))
            if i == j:
                b[i, i] = 1.0
            else:
                b[i, j] = b[j, i] = 1.0 / math.sqrt(2.0)
            out.append(b)
    return np.stack(out)


def key_dim(m: int) -> int:
    return m * (m + 1) // 2


def response_equalizer(gram: np.ndarray, rel_floor: float = RESPONSE_FLOOR) -> np.ndarray:
    """R [D, D'] with R^T Gamma R = I: the basis marks recombined so that each key direction changes the output by
    the same amount and orthogonally to the others; directions whose response is below rel_floor x the largest
    eigenvalue of Gamma (marks the output hardly shows) are dropped. Key-independent (clean model + probes)."""
    g = np.asarray(gram, np.float64)
    ev, vec = np.linalg.eigh(g)
    keep = ev >= rel_floor * ev.max()
    if keep.sum() < 2:
        raise AsvpError("the mark's basis changes the output along fewer than 2 directions; choose another --node")
    ev, vec = ev[keep][::-1], vec[:, keep][:, ::-1]
    return vec / np.sqrt(ev)


def mix_matrix(basis_w: np.ndarray, coeffs: np.ndarray, eps: float) -> np.ndarray:
    """eps * W S W^T as a C x C matrix, S = sum_j coeffs_j B_j."""
    w = np.asarray(basis_w, np.float64)
    s = np.tensordot(np.asarray(coeffs, np.float64), sym_basis(w.shape[1]), axes=1)
    return eps * (w @ s @ w.T)


def principal_directions(feat: np.ndarray, m: int) -> np.ndarray:
    """Top-m left singular directions of the probe features stacked as C x (N*H*W): [C, m], signs fixed."""
    f = np.asarray(feat, np.float64)
    c = f.shape[1]
    if not 1 <= m < c:
        raise AsvpError(f"the mark needs 1 <= m < channels; got m={m} for a feature with {c} channels")
    mat = np.moveaxis(f, 1, 0).reshape(c, -1)
    evals, evecs = np.linalg.eigh(mat @ mat.T)
    w = evecs[:, ::-1][:, :m]
    w *= np.where(w[np.abs(w).argmax(axis=0), range(m)] < 0, -1.0, 1.0)  # deterministic signs
    return w


# ---- the exact null ------------------------------------------------------------------------------------------

_GAUSS_LEGENDRE = np.polynomial.legendre.leggauss(64)  # nodes and weights, computed once (a call costs ~10 ms)


def cosine_tail(c: float, dim: int) -> float:
    """P(u_1 >= c) for u uniform on the unit sphere of R^dim (exact; Gauss-Legendre on the density
    (1 - s^2)^((dim - 3)/2) / B(1/2, (dim - 1)/2))."""
    if dim < 2:
        raise AsvpError(f"the key space needs at least 2 dimensions, got {dim}")
    c = float(np.clip(c, -1.0, 1.0))
    if c < 0:
        return 1.0 - cosine_tail(-c, dim)
    if c >= 1.0:
        return 0.0
    a = (dim - 3) / 2.0
    log_norm = math.lgamma(0.5) + math.lgamma((dim - 1) / 2.0) - math.lgamma(dim / 2.0)
    # substitute s = 1 - v^2 (v in [0, sqrt(1 - c)]) to smooth the endpoint; ds = 2 v dv
    vmax = math.sqrt(1.0 - c)
    x, wts = _GAUSS_LEGENDRE
    v = 0.5 * vmax * (x + 1.0)
    f = np.exp(a * np.log(v * v * (2.0 - v * v))) * 2.0 * v  # (1 - s^2)^a ds, s = 1 - v^2
    val = 0.5 * vmax * float(np.sum(wts * f))
    return float(min(1.0, max(0.0, val / math.exp(log_norm))))


def key_statistic(t: np.ndarray, u: np.ndarray) -> tuple[float, float]:
    """(c, p): cosine between the key u and the suspect's basis projections t, and its exact one-sided p-value
    under 'the suspect is independent of the key'. A suspect identical to the clean teacher (t = 0) gets p = 1."""
    t = np.asarray(t, np.float64)
    n = float(np.linalg.norm(t))
    if not math.isfinite(n):
        raise AsvpError("the suspect's outputs are not finite on the probe images")
    if n == 0.0:
        return 0.0, 1.0
    c = float(np.dot(u, t) / n)
    return c, cosine_tail(c, len(u))


def coefficients(t: np.ndarray, gram: np.ndarray, nuisance: list | None = None, ridge: float = 1e-6) -> np.ndarray:
    """The suspect's least-squares mark coefficients a = (Gamma + lambda I)^-1 t, with the reference models' bias
    subspace removed: a <- a - Q Q^T a, Q an orthonormal basis of the span of the `nuisance` coefficient vectors
    (at most half the dimensions: their leading singular directions).

    t: projections <S - T, delta_j> (what asvp.runtime.fingerprint.verifier measures); gram: Gamma_jl =
    <delta_j, delta_l>; nuisance: coefficient vectors of reference models that never saw the marked outputs (their
    systematic error, e.g. a small student's blur, whatever its scale and seed), or None. Nothing here depends on
    the key, so the result is a fixed vector for an innocent suspect and key_statistic keeps its exact null;
    whitening by Gamma and removing the reference bias subspace only make the test more powerful.
    """
    g = np.asarray(gram, np.float64)
    lam = ridge * float(np.trace(g)) / len(g)
    a = np.linalg.solve(g + lam * np.eye(len(g)), np.asarray(t, np.float64))
    q = nuisance_basis(nuisance, len(a))
    if q is not None:
        before = float(np.linalg.norm(a))
        a = a - q @ (q.T @ a)
        if float(np.linalg.norm(a)) <= 1e-9 * before:  # exactly in the references' span: nothing left to test
            a = np.zeros_like(a)
    return a


def nuisance_basis(nuisance: list | None, dim: int, max_share: float = 0.5) -> np.ndarray | None:
    """Orthonormal basis [dim, k] of the span of the reference vectors (k <= max_share x dim: their leading
    singular directions), or None without references. Key-independent."""
    if not nuisance:
        return None
    v = np.asarray(nuisance, np.float64).reshape(len(nuisance), dim)
    u, s, vt = np.linalg.svd(v, full_matrices=False)
    keep = s > 1e-12 * (s.max() if s.size else 0.0)
    k = min(int(keep.sum()), max(1, int(max_share * dim)))
    return vt[:k].T if k else None


def cost_neutral_directions(cross: np.ndarray, share: float = 0.25) -> np.ndarray:
    """Q [D', D' - k]: an orthonormal basis of the key directions orthogonal to the k = round(share x D') directions
    along which the mark most changes the teacher's error, to first order.

    cross [N, D']: per calibration image i, <E_i, delta_j> (E_i = teacher output - ground truth, delta_j the
    equalised basis marks). Marks in the removed directions would raise or lower the teacher's error linearly in
    eps; in the rest the cost is second order (||delta||^2 / ||E||^2), so the mark can be stronger for the same
    budget. Key-independent (clean model + owner's calibration data), so the exact null is untouched."""
    c = np.asarray(cross, np.float64)
    d = c.shape[1]
    k = min(int(round(share * d)), d - 2)
    if k <= 0:
        return np.eye(d)
    _, _, vt = np.linalg.svd(c, full_matrices=True)
    return vt[k:].T


def bias_neutral_directions(bias: np.ndarray, share: float = 0.5) -> np.ndarray:
    """Q [D', D' - k]: an orthonormal basis of the key directions along which innocent models deviate least from
    the clean model: the eigenvectors of the second moment of their coefficient vectors with the D' - k smallest
    eigenvalues, k = round(share x D').

    bias [n, D']: coefficient vectors (`coefficients`, no nuisance) of models that never saw the marked outputs,
    e.g. quick students of the clean model. A weak copy's own deviation hides the mark, and it is concentrated in
    few directions (the largest eigenvalue 6-22x the mean on the bundled teachers); a key space without them keeps all of
    the mark's energy where such deviations are small. Key-independent (clean model, probes, fixed students), so
    the exact null is untouched."""
    b = np.asarray(bias, np.float64)
    if b.ndim != 2 or len(b) < 1:
        raise ValueError("bias must be [n >= 1, D'] coefficient vectors")
    d = b.shape[1]
    k = min(int(round(share * d)), d - 2)
    if k <= 0:
        return np.eye(d)
    _, v = np.linalg.eigh(b.T @ b / len(b))  # ascending
    return v[:, : d - k]

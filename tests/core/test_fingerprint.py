"""The fingerprint's core (asvp.fingerprint): the key, the basis, the exact null and the key-space algebra."""
import math

import numpy as np
import pytest

from asvp.errors import AsvpError
from asvp.fingerprint import (bias_neutral_directions, coefficients, cosine_tail, cost_neutral_directions, key_dim,
                              key_direction, key_statistic, mix_matrix, nuisance_basis, principal_directions,
                              sym_basis)

KEY_A = "test-key-alpha-0001"
KEY_B = "test-key-bravo-0002"


def test_key_direction_is_a_deterministic_unit_vector_that_depends_on_the_key():
    u1, u2, v = key_direction(KEY_A, 36), key_direction(KEY_A, 36), key_direction(KEY_B, 36)
    assert np.allclose(u1, u2) and math.isclose(np.linalg.norm(u1), 1.0)
    assert abs(float(u1 @ v)) < 0.9
    with pytest.raises(AsvpError, match="at least 8 characters"):
        key_direction("short", 36)


def test_symmetric_basis_is_orthonormal_and_the_mix_is_symmetric():
    b = sym_basis(5).reshape(key_dim(5), -1)
    assert np.allclose(b @ b.T, np.eye(key_dim(5)))
    w = principal_directions(np.random.default_rng(0).standard_normal((4, 12, 6, 6)), 5)
    assert np.allclose(w.T @ w, np.eye(5), atol=1e-9)
    a = mix_matrix(w, key_direction(KEY_A, key_dim(5)), 0.3)
    assert np.allclose(a, a.T) and math.isclose(np.linalg.norm(a), 0.3, rel_tol=1e-9)


@pytest.mark.parametrize("dim", [2, 3, 10, 36, 37])
def test_cosine_tail_matches_the_uniform_sphere(dim):
    rng = np.random.default_rng(dim)
    u = rng.standard_normal((200_000, dim))
    c1 = u[:, 0] / np.linalg.norm(u, axis=1)
    for c in (-0.5, 0.0, 0.2, 0.45, 0.7):
        emp = float(np.mean(c1 >= c))
        assert abs(cosine_tail(c, dim) - emp) < 4 * math.sqrt(emp * (1 - emp) / len(c1)) + 1e-4, (dim, c)
    assert cosine_tail(1.0, dim) == 0.0 and cosine_tail(-1.0, dim) == 1.0


def test_cosine_tail_matches_the_incomplete_beta():
    special = pytest.importorskip("scipy.special")
    for dim in (5, 36, 64):
        for c in (0.05, 0.3, 0.6, 0.9, 0.99):
            ref = 0.5 * special.betainc((dim - 1) / 2, 0.5, 1 - c * c)
            assert cosine_tail(c, dim) == pytest.approx(ref, rel=1e-6, abs=1e-15)


def test_p_values_are_uniform_over_keys_for_a_fixed_suspect_even_with_whitening_and_nuisance():
    """The null is the key's randomness: for any fixed (biased) suspect, p over random keys is uniform."""
    rng = np.random.default_rng(7)
    d = 36
    delta = rng.standard_normal((d, 400))
    gram = delta @ delta.T
    t = gram @ np.full(d, 0.3) + rng.standard_normal(d)  # a strongly biased innocent suspect
    nuisance = [rng.standard_normal(d) + 1.0 for _ in range(3)]
    a = coefficients(t, gram, nuisance)
    ps = np.array([key_statistic(a, key_direction(f"null-key-{i:05d}", d))[1] for i in range(3000)])
    assert 0.006 < np.mean(ps < 0.01) < 0.017
    assert 0.04 < np.mean(ps < 0.05) < 0.062
    assert 0.47 < np.mean(ps < 0.5) < 0.53
    assert key_statistic(np.zeros(d), key_direction(KEY_A, d)) == (0.0, 1.0)


def test_reference_span_is_removed_and_capped_at_half_the_dimensions():
    rng = np.random.default_rng(3)
    d = 12
    refs = [rng.standard_normal(d) for _ in range(3)]
    q = nuisance_basis(refs, d)
    assert q.shape == (d, 3) and np.allclose(q.T @ q, np.eye(3))
    inside = 0.7 * refs[0] - 2.0 * refs[2]  # a suspect whose bias lies in the references' span: nothing left
    assert np.allclose(coefficients(inside, np.eye(d), refs), 0.0)
    assert nuisance_basis([rng.standard_normal(d) for _ in range(20)], d).shape == (d, d // 2)
    assert nuisance_basis(None, d) is None


def test_cost_neutral_directions_are_orthogonal_to_the_teachers_error_directions():
    rng = np.random.default_rng(4)
    d = 16
    g = rng.standard_normal(d)
    cross = np.outer(rng.standard_normal(30), g) + 0.01 * rng.standard_normal((30, d))  # one dominant direction
    q = cost_neutral_directions(cross, share=0.25)
    assert q.shape == (d, d - 4) and np.allclose(q.T @ q, np.eye(d - 4))
    assert np.linalg.norm(q.T @ g) < 0.01 * np.linalg.norm(g)  # no key in the span of q changes E to first order
    assert cost_neutral_directions(cross, share=0.0).shape == (d, d)


def test_bias_neutral_directions_keep_the_half_where_innocent_models_deviate_least():
    rng = np.random.default_rng(5)
    d = 12
    big = np.linalg.qr(rng.standard_normal((d, 3)))[0]  # innocent deviations: mostly along 3 directions
    bias = rng.standard_normal((20, 3)) @ (10 * big.T) + 0.1 * rng.standard_normal((20, d))
    q = bias_neutral_directions(bias)
    assert q.shape == (d, d // 2) and np.allclose(q.T @ q, np.eye(d // 2))
    assert np.linalg.norm(q.T @ big) < 0.05  # the key space keeps none of the big directions
    kept, all_ = np.sum((bias @ q) ** 2), np.sum(bias ** 2)
    assert kept < 1e-3 * all_
    assert bias_neutral_directions(bias, share=0.0).shape == (d, d)
    assert bias_neutral_directions(bias[:, :3], share=0.9).shape == (3, 2)  # never fewer than 2 directions
    with pytest.raises(ValueError):
        bias_neutral_directions(np.zeros(d))

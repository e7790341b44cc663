"""asvp.metrics: the pooled PSNR helpers shared by validate, the attack harness and the fingerprint."""
from __future__ import annotations

import math

import numpy as np

from asvp.metrics import pooled_mse, pooled_psnr, psnr_from_mse


def test_pooled_psnr_pools_the_error_over_the_batch():
    ref = np.zeros((2, 3, 4, 4), np.float32)
    pred = ref.copy()
    pred[0] += 0.1  # one image off by 0.1 everywhere, the other identical: pooled MSE 0.005
    assert math.isclose(pooled_mse(pred, ref), 0.005, rel_tol=1e-6)
    assert math.isclose(pooled_psnr(pred, ref), 10 * math.log10(1 / 0.005), rel_tol=1e-6)
    assert pooled_psnr(ref, ref) == math.inf
    assert psnr_from_mse(0.0) == math.inf
    assert math.isclose(psnr_from_mse(1e-2), 20.0)


def test_clip_applies_to_both_sides():
    ref = np.full((1, 1, 2, 2), 1.5)
    pred = np.ones((1, 1, 2, 2))
    assert pooled_mse(pred, ref) == 0.25
    assert pooled_mse(pred, ref, clip=True) == 0.0

"""The adaptive attacker's transforms (runtime/attacks/adaptive.py)."""
from __future__ import annotations

import torch

from asvp.config import AsvpConfig
from asvp.method import asvp_exact
from asvp.runtime.attacks.adaptive import gaussian_blur, invert_asvp, rel_err


def test_adaptive_inversion_undoes_asvp_with_known_config():
    g = torch.Generator().manual_seed(0)
    clean = torch.randn(3, 16, 8, 8, generator=g) * torch.linspace(3, 0.1, 16).reshape(1, 16, 1, 1)
    for cfg in (AsvpConfig(h=1.5, k=4, tau=0.9), AsvpConfig(h=3.0, k=3, k_mode="fixed")):
        received = asvp_exact(clean, cfg).numpy()
        inverted, ks = invert_asvp(received, cfg)
        assert rel_err(received, clean.numpy()) > 0.05
        assert rel_err(inverted, clean.numpy()) < 1e-5
        assert ((1 <= ks) & (ks <= cfg.k)).all()


def test_gaussian_blur_keeps_constants_and_smooths_an_impulse():
    flat = torch.full((1, 2, 9, 9), 0.3)
    assert torch.allclose(gaussian_blur(flat, 0.7), flat)
    impulse = torch.zeros(1, 1, 9, 9)
    impulse[0, 0, 4, 4] = 1.0
    out = gaussian_blur(impulse, 0.7)
    assert out.shape == impulse.shape and 0 < out[0, 0, 4, 4] < 1 and abs(float(out.sum()) - 1.0) < 1e-5

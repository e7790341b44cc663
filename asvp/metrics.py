"""Image-quality metrics (scikit-image's maintained PSNR/SSIM) over NCHW batches in [0, 1]."""
from __future__ import annotations

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from asvp.errors import AsvpError


def _hwc(img) -> np.ndarray:
    a = np.asarray(img, dtype=np.float64)
    return np.clip(np.transpose(a, (1, 2, 0)), 0.0, 1.0)


def check_finite(batch, what: str = "image") -> None:
    if not np.all(np.isfinite(np.asarray(batch))):
        raise AsvpError(f"{what} contains NaN or infinite values")


def psnr_ssim(pred, target) -> tuple[float, float]:
    """Mean PSNR (dB) and SSIM over a batch; predictions are clipped to [0, 1] first, as deployed outputs are."""
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise AsvpError(f"prediction shape {pred.shape} does not match target shape {target.shape}")
    check_finite(pred, "prediction")
    check_finite(target, "target")
    ps, ss = [], []
    for p, t in zip(pred, target):
        p, t = _hwc(p), _hwc(t)
        ps.append(peak_signal_noise_ratio(t, p, data_range=1.0))
        ss.append(structural_similarity(t, p, data_range=1.0, channel_axis=-1))
    return float(np.mean(ps)), float(np.mean(ss))

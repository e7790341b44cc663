"""Image-quality metrics (scikit-image's maintained PSNR/SSIM) over NCHW batches in [0, 1]."""
from __future__ import annotations

import math

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from asvp.errors import AsvpError


# scikit-image's SSIM slides a 7 x 7 window: both sides of an image must be at least this.
SSIM_MIN_SIDE = 7


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
    if pred.ndim == 4 and min(pred.shape[2:]) < SSIM_MIN_SIDE:
        raise AsvpError(f"images of {pred.shape[2]}x{pred.shape[3]} are too small for SSIM (its window needs at "
                        f"least {SSIM_MIN_SIDE}x{SSIM_MIN_SIDE})")
    ps, ss = [], []
    for p, t in zip(pred, target):
        p, t = _hwc(p), _hwc(t)
        ps.append(peak_signal_noise_ratio(t, p, data_range=1.0))
        ss.append(structural_similarity(t, p, data_range=1.0, channel_axis=-1))
    return float(np.mean(ps)), float(np.mean(ss))


def pooled_mse(pred, ref, clip: bool = False) -> float:
    """Mean squared error over every element of a batch, in float64 (clip: both clipped to [0, 1] first)."""
    a, b = np.asarray(pred, np.float64), np.asarray(ref, np.float64)
    if clip:
        a, b = np.clip(a, 0.0, 1.0), np.clip(b, 0.0, 1.0)
    return float(np.mean((a - b) ** 2))


def psnr_from_mse(mse: float) -> float:
    """PSNR (dB) of images in [0, 1] from a mean squared error; inf for identical images."""
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def pooled_psnr(pred, ref, clip: bool = False) -> float:
    """PSNR of the error pooled over the whole batch (not a mean of per-image PSNRs, which one identical or nearly
    flat image would dominate)."""
    return psnr_from_mse(pooled_mse(pred, ref, clip))

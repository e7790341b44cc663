"""Synthetic degradations that turn clean images into (degraded, clean) training pairs, one per task.

Each function takes a clean batch [N, 3, H, W] in [0, 1] and a torch.Generator, and returns the degraded
batch (for super-resolution, the low-resolution batch). Parameters are drawn per sample, so one teacher
sees a range of conditions. Everything is deterministic given the generator.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _uniform(g: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _view(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, 1, 1, 1)


def bicubic_down(clean: torch.Tensor, g: torch.Generator, scale: int = 2) -> torch.Tensor:
    """Super-resolution: anti-aliased bicubic downsampling by `scale` (the classic SR benchmark setting)."""
    h, w = clean.shape[-2] // scale, clean.shape[-1] // scale
    return F.interpolate(clean, size=(h, w), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)


def low_light(clean: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Low light: gamma curve and exposure scaling, then signal-dependent (shot) plus read noise."""
    n = clean.shape[0]
    gamma = _view(_uniform(g, n, 1.4, 2.2))
    exposure = _view(_uniform(g, n, 0.15, 0.45))
    dark = exposure * clean.clamp_min(1e-6) ** gamma
    shot = _view(_uniform(g, n, 0.005, 0.02))
    read = _view(_uniform(g, n, 0.002, 0.01))
    noise = torch.randn(clean.shape, generator=g) * torch.sqrt(shot * dark + read**2)
    return (dark + noise).clamp(0, 1)


def smooth_depth(clean: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A plausible depth map in [0, 1]: farther towards the top of the frame and in bright smooth regions."""
    n, _, h, w = clean.shape
    rows = torch.linspace(1.0, 0.0, h).reshape(1, 1, h, 1).expand(n, 1, h, w)
    lum = clean.mean(1, keepdim=True)
    blurred = F.avg_pool2d(F.pad(lum, (7, 7, 7, 7), mode="replicate"), 15, stride=1)
    tilt = _view(_uniform(g, n, 0.4, 0.8))
    depth = tilt * rows + (1 - tilt) * blurred
    return (depth - depth.amin((2, 3), keepdim=True)) / (depth.amax((2, 3), keepdim=True) - depth.amin((2, 3), keepdim=True) + 1e-6)


def underwater(clean: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Underwater: wavelength-dependent attenuation exp(-beta_c d) (red fastest) plus blue-green backscatter."""
    n = clean.shape[0]
    d = 0.5 + 2.5 * smooth_depth(clean, g)
    beta = torch.stack([_uniform(g, n, 0.35, 0.6), _uniform(g, n, 0.08, 0.2), _uniform(g, n, 0.05, 0.15)], 1)
    backscatter = torch.stack([_uniform(g, n, 0.0, 0.15), _uniform(g, n, 0.35, 0.6), _uniform(g, n, 0.4, 0.7)], 1)
    t = torch.exp(-beta.reshape(n, 3, 1, 1) * d)
    return (clean * t + backscatter.reshape(n, 3, 1, 1) * (1 - t)).clamp(0, 1)


def haze(clean: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Haze: atmospheric scattering I = J t + A (1 - t), t = exp(-beta d), with a synthetic depth map."""
    n = clean.shape[0]
    d = smooth_depth(clean, g)
    beta = _view(_uniform(g, n, 0.8, 2.0))
    airlight = _view(_uniform(g, n, 0.75, 0.95))
    t = torch.exp(-beta * d)
    return (clean * t + airlight * (1 - t)).clamp(0, 1)


def _line_kernel(length: int, angle_deg: float) -> torch.Tensor:
    size = length if length % 2 == 1 else length + 1
    k = torch.zeros(size, size)
    c = size // 2
    a = math.radians(angle_deg)
    for i in range(-c, c + 1):
        x, y = round(c + i * math.cos(a)), round(c + i * math.sin(a))
        k[y, x] = 1.0
    return k / k.sum()


def rain(clean: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Rain: sparse drops smeared by a motion-blur line kernel into streaks, added on top of the image."""
    n, _, h, w = clean.shape
    out = []
    for i in range(n):
        density = float(_uniform(g, 1, 0.004, 0.015))
        drops = (torch.rand(1, 1, h, w, generator=g) < density).float() * (0.6 + 0.4 * torch.rand(1, 1, h, w, generator=g))
        length = int(_uniform(g, 1, 7, 15))
        angle = float(_uniform(g, 1, 60, 120))
        k = _line_kernel(length, angle).reshape(1, 1, *_line_kernel(length, angle).shape)
        streaks = F.conv2d(drops, k, padding=k.shape[-1] // 2)[..., :h, :w]
        intensity = float(_uniform(g, 1, 2.0, 4.0))
        out.append((clean[i : i + 1] + (intensity * streaks).clamp(0, 0.8)).clamp(0, 1))
    return torch.cat(out)

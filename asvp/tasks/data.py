"""Clean images that ship inside scikit-image (no download), split into train and held-out sets."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from skimage import data as skdata
from skimage.transform import rescale

# Only loaders whose files ship in scikit-image's wheel (no pooch download).
TRAIN_IMAGES = (
    "astronaut", "rocket", "coffee", "immunohistochemistry", "hubble_deep_field",
    "retina", "brick", "grass", "gravel", "camera", "moon", "page",
)
HELDOUT_IMAGES = ("chelsea", "motorcycle", "coins")
MAX_SIDE = 512  # big images are downscaled so every image weighs about the same in training


def _load(name: str) -> np.ndarray:
    if name == "motorcycle":
        img = skdata.stereo_motorcycle()[0]
    else:
        img = getattr(skdata, name)()
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    img = img[..., :3].astype(np.float32)
    img /= 255.0 if img.max() > 1.0 else 1.0
    scale = MAX_SIDE / max(img.shape[:2])
    if scale < 1:
        img = rescale(img, scale, channel_axis=-1, anti_aliasing=True).astype(np.float32)
    return np.clip(img, 0, 1)


@lru_cache(maxsize=None)
def image(name: str) -> torch.Tensor:
    """A bundled image as a [3, H, W] float tensor in [0, 1]."""
    return torch.from_numpy(_load(name)).permute(2, 0, 1).contiguous()


def random_crops(names, count: int, size: int, g: torch.Generator) -> torch.Tensor:
    """`count` random crops (with random flips) of side `size` from the named images."""
    imgs = [image(n) for n in names]
    out = []
    for _ in range(count):
        img = imgs[int(torch.randint(len(imgs), (1,), generator=g))]
        _, h, w = img.shape
        y = int(torch.randint(h - size + 1, (1,), generator=g))
        x = int(torch.randint(w - size + 1, (1,), generator=g))
        crop = img[:, y : y + size, x : x + size]
        if torch.rand(1, generator=g) < 0.5:
            crop = crop.flip(-1)
        if torch.rand(1, generator=g) < 0.5:
            crop = crop.flip(-2)
        out.append(crop)
    return torch.stack(out)


def heldout_crops(size: int = 192, per_image: int = 2) -> torch.Tensor:
    """Deterministic held-out crops: `per_image` evenly spaced crops of side `size` from each held-out image."""
    out = []
    for name in HELDOUT_IMAGES:
        img = image(name)
        _, h, w = img.shape
        for i in range(per_image):
            y = (h - size) * (i + 1) // (per_image + 1)
            x = (w - size) * (per_image - i) // (per_image + 1)
            out.append(img[:, y : y + size, x : x + size])
    return torch.stack(out)

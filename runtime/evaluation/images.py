"""Images for validation: the task's held-out pairs, or a user's folder of pairs, checked against the model's geometry.

Folder layout (`--images DIR`): DIR/input/<name>.<ext> and DIR/target/<name>.<ext> with matching names (png, jpg,
jpeg, bmp, tif, tiff); RGB, RGBA (alpha dropped) or grey (replicated to RGB); integer images are scaled to [0, 1],
float images must already be in [0, 1]. Each target must be `scale` times its input, and input sides multiples of
the task's size multiple. Images may differ in size; each pair runs as N=1.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asvp.constants import HELDOUT_SIZE as DEFAULT_HELDOUT_SIZE
from asvp.errors import AsvpError, first_line
from asvp.metrics import SSIM_MIN_SIDE
from asvp.tasks.data import HELDOUT_IMAGES

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass
class Sample:
    name: str
    input: np.ndarray  # [1, 3, h, w] float32 in [0, 1]
    target: np.ndarray  # [1, 3, H, W]


def _png_bit_depth(path) -> int | None:
    """The bit depth a PNG file's header declares (None: not a PNG)."""
    with open(path, "rb") as f:
        head = f.read(26)
    return head[24] if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" else None


def _read_pixels(path) -> np.ndarray:
    """The pixels as scikit-image reads them, except what it gets wrong: a CMYK JPEG (read as 4 channels, which
    would pass for RGBA) is converted to RGB by Pillow, and a 16-bit colour PNG (which Pillow, under scikit-image,
    reduces to 8 bits) is refused rather than read at a lower depth. 16-bit grey PNGs and TIFFs keep their depth."""
    from PIL import Image
    from skimage import io as skio

    try:
        with Image.open(path) as im:
            if im.mode == "CMYK":
                return np.asarray(im.convert("RGB"))
    except (OSError, ValueError):  # not for Pillow (a float TIFF, say): scikit-image's readers take it
        pass
    img = np.asarray(skio.imread(str(path)))
    if img.dtype.itemsize == 1 and _png_bit_depth(path) == 16:
        raise AsvpError(f"image {path} is a 16-bit colour PNG, which can only be read at 8 bits here: save it as a "
                        "16-bit TIFF (read at full depth) or an 8-bit PNG")
    return img


def load_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as [3, H, W] float32 in [0, 1] (scikit-image io; CMYK converted, see _read_pixels)."""
    from skimage.util import img_as_float32

    try:
        img = _read_pixels(path)
    except AsvpError:
        raise
    except Exception as exc:
        raise AsvpError(f"cannot read image {path}: {type(exc).__name__}: {first_line(exc)}") from None
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    if img.ndim != 3 or img.shape[-1] not in (3, 4):
        raise AsvpError(f"image {path} has shape {img.shape}; expected H x W grey, RGB or RGBA")
    img = img[..., :3]
    if img.dtype.kind == "f":
        if not np.all(np.isfinite(img)):
            raise AsvpError(f"image {path} contains NaN or infinite values")
        if img.min() < -1e-6 or img.max() > 1 + 1e-6:
            raise AsvpError(f"float image {path} has values in [{img.min():.3g}, {img.max():.3g}]; expected [0, 1]")
    elif img.dtype.kind not in "ub":
        raise AsvpError(f"image {path} has unsupported pixel type {img.dtype}")
    out = np.ascontiguousarray(img_as_float32(img).transpose(2, 0, 1))
    return np.clip(out, 0.0, 1.0)


def _image_files(d: Path) -> dict[str, Path]:
    files = {}
    for p in sorted(d.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTS:
            if p.stem in files:
                raise AsvpError(f"two images named {p.stem!r} in {d} ({files[p.stem].name}, {p.name})")
            files[p.stem] = p
    return files


def load_pairs(images: str | os.PathLike) -> list[Sample]:
    """Paired images from DIR/input and DIR/target (matching file names, any supported extension)."""
    root = Path(images)
    if not root.is_dir():
        raise AsvpError(f"image folder not found: {root}")
    dirs = {k: root / k for k in ("input", "target")}
    for k, d in dirs.items():
        if not d.is_dir():
            raise AsvpError(f"{root} has no {k}/ folder; expected {root}/input/*.png and {root}/target/*.png with matching names")
    ins, tgs = _image_files(dirs["input"]), _image_files(dirs["target"])
    if not ins:
        raise AsvpError(f"no images ({', '.join(IMAGE_EXTS)}) in {dirs['input']}")
    unmatched = sorted(set(ins) ^ set(tgs))
    if unmatched:
        raise AsvpError(f"input and target images must pair by name; unmatched: {', '.join(unmatched[:5])}"
                        + (" ..." if len(unmatched) > 5 else ""))
    return [Sample(n, load_image(ins[n])[None], load_image(tgs[n])[None]) for n in sorted(ins)]


def heldout_samples(spec, size: int = DEFAULT_HELDOUT_SIZE) -> list[Sample]:
    """The task's held-out pairs (images never used in training), one sample per crop."""
    if not isinstance(size, int) or size < 8:
        raise AsvpError(f"held-out crop size must be an integer >= 8, got {size!r}")
    step = spec.scale * spec.size_multiple
    if size % step:
        raise AsvpError(f"held-out crop size {size} must be a multiple of {step} for task {spec.name}")
    try:
        inp, tgt = spec.heldout(size=size)
    except (RuntimeError, ValueError) as exc:
        raise AsvpError(f"cannot make held-out crops of size {size}: {str(exc).splitlines()[0]}") from None
    per = len(inp) // len(HELDOUT_IMAGES)
    names = [f"{n}-{i}" for n in HELDOUT_IMAGES for i in range(per)]
    return [Sample(names[i], inp[i : i + 1].numpy().astype(np.float32), tgt[i : i + 1].numpy().astype(np.float32))
            for i in range(len(inp))]


def check_samples(samples: list[Sample], scale: int, size_multiple: int) -> None:
    """Sizes and values fit the task: finite, target = scale x input, input sides multiples of size_multiple."""
    for s in samples:
        for what, a in (("input", s.input), ("target", s.target)):
            if not np.all(np.isfinite(a)):
                raise AsvpError(f"{what} image {s.name!r} contains NaN or infinite values")
        _, c, h, w = s.input.shape
        if c != 3 or s.target.shape[1] != 3:
            raise AsvpError(f"image pair {s.name!r} must be RGB")
        if size_multiple > 1 and (h % size_multiple or w % size_multiple):
            raise AsvpError(f"input image {s.name!r} is {h}x{w}; this model needs height and width multiples of {size_multiple}")
        th, tw = s.target.shape[2:]
        if (th, tw) != (h * scale, w * scale):
            raise AsvpError(f"target image {s.name!r} is {th}x{tw} but its input is {h}x{w}: "
                            f"for scale x{scale} the target must be {h * scale}x{w * scale}")
        if min(th, tw) < SSIM_MIN_SIDE:
            raise AsvpError(f"target image {s.name!r} is {th}x{tw}: too small for SSIM (its window needs at least "
                            f"{SSIM_MIN_SIDE}x{SSIM_MIN_SIDE})")


def load_inputs(images: str | os.PathLike, size_multiple: int = 1, max_side: int | None = None) -> list[np.ndarray]:
    """Input images only (no targets), for diagnostics that run the model without ground truth.

    Reads DIR/input/* when DIR has an input/ folder (the paired layout above), else DIR/*. Each image is
    centre-cropped so both sides are multiples of `size_multiple` and at most `max_side`; returns [1, 3, h, w] arrays.
    """
    root = Path(images)
    if not root.is_dir():
        raise AsvpError(f"image folder not found: {root}")
    folder = root / "input" if (root / "input").is_dir() else root
    files = _image_files(folder)
    if not files:
        raise AsvpError(f"no images ({', '.join(IMAGE_EXTS)}) in {folder}")
    out = []
    for name, path in files.items():
        img = load_image(path)
        sides = []
        for s in img.shape[1:]:
            s = min(s, max_side) if max_side else s
            sides.append(s - s % size_multiple)
        if min(sides) < max(size_multiple, 1) or min(sides) == 0:
            raise AsvpError(f"image {path} is {img.shape[1]}x{img.shape[2]}: too small for this model "
                            f"(sides must be multiples of {size_multiple})")
        top, left = (img.shape[1] - sides[0]) // 2, (img.shape[2] - sides[1]) // 2
        out.append(np.ascontiguousarray(img[None, :, top : top + sides[0], left : left + sides[1]]))
    return out

"""Checking an export against torch: the image the model takes (channels, minimum side) and what it returns
(scale, channels), the shapes the parity checks run at, the comparison of ONNX Runtime with torch on real
photographs (grey for one-channel models, their channels repeated for others), and the message when it fails.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from asvp.errors import AsvpError, first_line
from asvp.exporter.tracing import error_reason
from asvp.tasks.data import HELDOUT_IMAGES, heldout_crops, image

PARITY_ATOL = 1e-4  # max |onnx - torch| on [0, 1] images; float32 conv reordering stays ~1e-6
PROBE_SIDES = (1, 2, 4, 8, 12, 16, 24, 32, 40, 48, 64, 96, 128, 192, 256)  # the ladder detect_min_size climbs
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601: the grey version of the photographs for one-channel models


def _round_up(v: int, m: int) -> int:
    return -(-v // m) * m


def _forward(model: torch.nn.Module, x: torch.Tensor):
    # Models warn freely (deprecations, tracer hints); the checks only need the output.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model(x)


def _first_conv_channels(model: torch.nn.Module) -> int | None:
    conv = next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)
    return conv.in_channels if conv is not None else None


def detect_input(model: torch.nn.Module, size_multiple: int, minimum: int | None = None,
                 channels: int | None = None) -> tuple[int, int]:
    """(input channels, smallest side): `channels` when known (spandrel's), else RGB, else (when the model does
    not run on RGB) the input channels of its first convolution; the side as detect_min_size finds it."""
    if channels is not None:
        return channels, detect_min_size(model, size_multiple, minimum, channels)
    try:
        return 3, detect_min_size(model, size_multiple, minimum)
    except AsvpError:
        other = _first_conv_channels(model)
        if other in (None, 3):
            raise
        return other, detect_min_size(model, size_multiple, minimum, other)


def kind_of(channels: int) -> str:
    """'grey', 'RGB' or 'C-channel': how the metadata's layout and the messages name an image."""
    return {1: "grey", 3: "RGB"}.get(channels, f"{channels}-channel")


def detect_min_size(model: torch.nn.Module, size_multiple: int, minimum: int | None = None, channels: int = 3) -> int:
    """The smallest square side (a multiple of size_multiple) the model accepts: `minimum` when given (spandrel's
    size requirements) and the model runs there, else the first side of a short ladder that runs."""
    sides = sorted({_round_up(max(v, 1), size_multiple) for v in PROBE_SIDES + ((minimum,) if minimum else ())})
    if minimum:
        sides = [v for v in sides if v >= minimum]
    errors = []
    for side in sides:
        try:
            _forward(model, torch.rand(1, channels, side, side))
            return side
        except Exception as exc:
            errors.append(f"{side}x{side}: {error_reason(exc)}")
    raise AsvpError(f"the model does not run on an NCHW {kind_of(channels)} image of any side from {sides[0]} to {sides[-1]} "
                    f"(multiples of {size_multiple}); at {errors[-1]}")


def infer_output(model: torch.nn.Module, h: int, w: int, channels: int = 3) -> tuple[int, int]:
    """(integer upscaling factor, output channels), from one run on a [1, channels, h, w] image (AsvpError if the
    output is not one image of an integer multiple of the input size)."""
    try:
        out = _forward(model, torch.rand(1, channels, h, w))
    except Exception as exc:
        raise AsvpError(f"the model does not accept an NCHW {kind_of(channels)} image [1, {channels}, {h}, {w}] "
                        f"({type(exc).__name__}: {first_line(exc)})") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 4 or out.shape[0] != 1:
        raise AsvpError("the model must return one NCHW image tensor")
    if out.shape[-2] % h or out.shape[-1] % w or out.shape[-2] // h != out.shape[-1] // w:
        raise AsvpError(f"output size {tuple(out.shape[-2:])} is not one integer multiple of input size {(h, w)}")
    return out.shape[-2] // h, int(out.shape[1])


def parity_shapes(min_size: int, size_multiple: int, static_batch: bool = False,
                  static_size: tuple[int, int] | None = None) -> list[tuple[int, int, int]]:
    """(N, H, W) of the parity checks, all >= the minimum size: the trace shape first (non-square, sides odd
    multiples of the size multiple, so that a model's size-dependent branches, such as padding to its window,
    are traced in their general form), then batch 2 at that size, then a size that is a multiple of 8 times the
    size multiple (no padding needed) and the trace shape turned by 90 degrees."""
    m = size_multiple
    base = max(min_size, 32)
    k = -(-base // m)
    k += (k % 2 == 0)  # odd multiple of m
    h, w = m * k, m * (k + 4)
    trace = tuple(static_size) if static_size else (h, w)
    shapes = [(1, *trace)]
    if not static_batch:
        shapes.append((2, *trace))
    if static_size is None:
        even = _round_up(base, 8 * m)
        shapes += [(1, even, even + 8 * m), (1, w, h)]
    return shapes


def _mirror_tiled(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """x (N, C, h0, w0) grown to at least h x w by mirrored copies of itself (no seams, still a photograph)."""
    while x.shape[-2] < h:
        x = torch.cat([x, x.flip(-2)], -2)
    while x.shape[-1] < w:
        x = torch.cat([x, x.flip(-1)], -1)
    return x


def _as_channels(rgb: torch.Tensor, channels: int) -> torch.Tensor:
    """RGB photographs for a model of `channels` inputs: grey (luma) for 1, the RGB channels repeated otherwise."""
    if channels == 3:
        return rgb
    if channels == 1:
        return (rgb * torch.tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
    return rgb[:, [i % 3 for i in range(channels)]]


def photo_batch(n: int, h: int, w: int, channels: int = 3) -> torch.Tensor:
    """Real photographs (scikit-image's held-out images), cropped to n x channels x h x w; sizes beyond the
    photographs' (about 300 pixels) are mirror-tiled."""
    fits = min(min(image(name).shape[1:]) for name in HELDOUT_IMAGES)
    side = min(max(h, w), fits)
    crops = _mirror_tiled(heldout_crops(side, per_image=max(1, -(-n // 2))), h, w)
    return _as_channels(crops[:n, :, :h, :w], channels).contiguous()


def torch_failure(shape: tuple, trace: tuple, exc: BaseException) -> str:
    """The one-line error when the torch model itself fails at a parity shape (no exporter can help), with the
    option that leaves that shape out."""
    n, _, h, w = shape
    if n != trace[0] and (h, w) == tuple(trace[1:]):
        fix = f"it does not take a batch of {n}: export with --static-batch (batch 1 only)"
    else:
        fix = (f"it does not take {h}x{w} images: export with --static-size {trace[1]}x{trace[2]} (that size only)"
               ", or a --size-multiple that its sizes need")
    return f"the torch model itself fails at {'x'.join(map(str, shape))} ({error_reason(exc)}); {fix}"


def parity_at(sess, model, shapes, atol: float = PARITY_ATOL,
              channels: int = 3) -> tuple[float, list, tuple | None, str | None]:
    """Max diff over every shape; stops at the first failing shape: (worst, shapes checked, failing shape, why).
    The first shape is the traced one; AsvpError when the torch model itself fails at a shape."""
    worst, done = 0.0, []
    for item in shapes:
        x = item if isinstance(item, torch.Tensor) else photo_batch(*item, channels)
        shape = tuple(x.shape)
        try:
            want = _forward(model, x.clone()).numpy()  # a clone: some models (RCAN) change their input in place
        except Exception as exc:
            raise AsvpError(torch_failure(shape, shapes[0], exc)) from None
        try:
            got = sess.run(None, {sess.get_inputs()[0].name: x.numpy().astype(np.float32)})[0]
        except Exception as exc:
            return worst, done, shape, f"ONNX Runtime fails: {error_reason(exc)}"
        if got.shape != want.shape:
            return worst, done, shape, f"output shape {tuple(got.shape)} != torch's {tuple(want.shape)}"
        diff = float(np.max(np.abs(got - want)))
        done.append(list(shape))
        if not diff <= atol:
            return max(worst, diff), done, shape, f"max |onnxruntime - torch| = {diff:.3g} > {atol:g}"
        worst = max(worst, diff)
    return worst, done, None, None


def failure_message(failures, shapes, static_batch, static_size, channels: int = 3) -> str:
    """The one-line error when no exporter passed: each exporter's failure, and advice from the first parity
    failure (which static option, if any, would help). failures: (exporter, failing shape or None, why)."""
    parts = []
    advice = None
    for name, bad, why in failures:
        if bad is None:
            parts.append(f"{name}: {why}")
            continue
        where = "x".join(map(str, bad))
        parts.append(f"{name}: parity fails at {where} ({why})")
        if advice is None:
            trace = shapes[0]
            if tuple(bad) == (trace[0], channels, *trace[1:]):
                advice = ("it fails at the traced shape itself, so no static option helps: "
                          + ("the model uses an operation ONNX Runtime cannot run as exported"
                             if why.startswith("ONNX Runtime fails") else "the exported graph computes something else"))
            elif bad[0] != trace[0] and bad[2:] == tuple(trace[1:]):
                advice = ("the export bakes the batch size into the graph: re-export with --static-batch to accept "
                          "batch 1 only")
            elif not static_size:
                advice = (f"the export bakes the input size into the graph: re-export with --static-size "
                          f"{trace[1]}x{trace[2]} to accept that size only"
                          + ("" if static_batch else " (with --static-batch if batches differ too)"))
    checked = ", ".join("x".join(map(str, (n, channels, h, w))) for n, h, w in shapes)
    return (f"export failed its parity checks ({checked}): " + "; ".join(parts)
            + (f"; {advice}" if advice else ""))

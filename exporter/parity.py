"""Checking an export against torch: the sizes the model accepts (minimum side, scale), the shapes the parity
checks run at, the comparison of ONNX Runtime with torch on real photographs, and the message when it fails.
"""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import torch

from asvp.errors import AsvpError, first_line
from asvp.exporter.tracing import error_reason
from asvp.runtime.engines.sessions import SessionFromOnnx
from asvp.tasks.data import heldout_crops

PARITY_ATOL = 1e-4  # max |onnx - torch| on [0, 1] images; float32 conv reordering stays ~1e-6
PROBE_SIDES = (1, 2, 4, 8, 12, 16, 24, 32, 40, 48, 64, 96, 128, 192, 256)  # the ladder detect_min_size climbs


def _round_up(v: int, m: int) -> int:
    return -(-v // m) * m


def _forward(model: torch.nn.Module, x: torch.Tensor):
    # Models warn freely (deprecations, tracer hints); the checks only need the output.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model(x)


def detect_min_size(model: torch.nn.Module, size_multiple: int, minimum: int | None = None) -> int:
    """The smallest square side (a multiple of size_multiple) the model accepts: `minimum` when given (spandrel's
    size requirements) and the model runs there, else the first side of a short ladder that runs."""
    sides = sorted({_round_up(max(v, 1), size_multiple) for v in PROBE_SIDES + ((minimum,) if minimum else ())})
    if minimum:
        sides = [v for v in sides if v >= minimum]
    errors = []
    for side in sides:
        try:
            _forward(model, torch.rand(1, 3, side, side))
            return side
        except Exception as exc:
            errors.append(f"{side}x{side}: {error_reason(exc)}")
    raise AsvpError(f"the model does not run on an NCHW RGB image of any side from {sides[0]} to {sides[-1]} "
                    f"(multiples of {size_multiple}); at {errors[-1]}")


def infer_scale(model: torch.nn.Module, h: int, w: int) -> int:
    """The model's integer upscaling factor, from one run on a [1, 3, h, w] image (AsvpError if it is not one)."""
    try:
        out = _forward(model, torch.rand(1, 3, h, w))
    except Exception as exc:
        raise AsvpError(f"the model does not accept an NCHW RGB image [1, 3, {h}, {w}] ({type(exc).__name__}: "
                        f"{first_line(exc)})") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 4 or out.shape[1] != 3:
        raise AsvpError("the model must return one NCHW RGB image tensor")
    if out.shape[-2] % h or out.shape[-1] % w or out.shape[-2] // h != out.shape[-1] // w:
        raise AsvpError(f"output size {tuple(out.shape[-2:])} is not one integer multiple of input size {(h, w)}")
    return out.shape[-2] // h


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


def photo_batch(n: int, h: int, w: int) -> torch.Tensor:
    """Real photographs (scikit-image's held-out images), cropped to n x 3 x h x w."""
    side = max(h, w)
    crops = heldout_crops(side, per_image=max(1, -(-n // 2)))
    return crops[:n, :, :h, :w].contiguous()


def parity_at(sess, model, shapes, atol: float = PARITY_ATOL) -> tuple[float, list, tuple | None, str | None]:
    """Max diff over every shape; stops at the first failing shape: (worst, shapes checked, failing shape, why)."""
    worst, done = 0.0, []
    for item in shapes:
        x = item if isinstance(item, torch.Tensor) else photo_batch(*item)
        shape = tuple(x.shape)
        try:
            got = sess.run(None, {sess.get_inputs()[0].name: x.numpy().astype(np.float32)})[0]
        except Exception as exc:
            return worst, done, shape, f"ONNX Runtime fails: {error_reason(exc)}"
        want = _forward(model, x).numpy()
        if got.shape != want.shape:
            return worst, done, shape, f"output shape {tuple(got.shape)} != torch's {tuple(want.shape)}"
        diff = float(np.max(np.abs(got - want)))
        done.append(list(shape))
        if not diff <= atol:
            return max(worst, diff), done, shape, f"max |onnxruntime - torch| = {diff:.3g} > {atol:g}"
        worst = max(worst, diff)
    return worst, done, None, None


def parity(proto: onnx.ModelProto, model: torch.nn.Module, inputs: torch.Tensor) -> float:
    """Max abs difference between ONNX Runtime (CPU) and torch on `inputs`."""
    sess = SessionFromOnnx(proto, plugins=False)()
    try:
        got = sess.run(None, {sess.get_inputs()[0].name: inputs.numpy().astype(np.float32)})[0]
    except Exception as exc:
        raise AsvpError(f"ONNX Runtime cannot run the exported model at {list(inputs.shape)}: {first_line(exc)}") from None
    want = _forward(model, inputs).numpy()
    if got.shape != want.shape:
        raise AsvpError(f"parity check failed: ONNX output shape {got.shape} != torch output shape {want.shape}")
    return float(np.max(np.abs(got - want)))


def failure_message(failures, shapes, static_batch, static_size) -> str:
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
            if tuple(bad) == (trace[0], 3, *trace[1:]):
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
    checked = ", ".join("x".join(map(str, (n, 3, h, w))) for n, h, w in shapes)
    return (f"export failed its parity checks ({checked}): " + "; ".join(parts)
            + (f"; {advice}" if advice else ""))

"""Trace a PyTorch restoration model to ONNX, annotate it, and prove parity with ONNX Runtime.

`export_model` is the pipeline: the model's sizes and scale and the parity checks (exporter/parity.py), the
exporters tried in turn (exporter/tracing.py), the asvp metadata, and an atomic write once everything holds.
`export_bundled`, `export_user_module` and `export_spandrel` are its entry points, one per kind of source.
"""
from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass

import onnx
import torch

from asvp.constants import EXPORTERS, MAX_OPSET, MIN_OPSET
from asvp.errors import AsvpError
from asvp.exporter.parity import (PARITY_ATOL, detect_min_size, failure_message, infer_scale, parity_at,
                                  parity_shapes, photo_batch)
from asvp.exporter.spandrel_loader import load_spandrel_model
from asvp.exporter.teachers.bundled import load_teacher
from asvp.exporter.tracing import dynamo_available, error_reason, rename_io, trace_onnx
from asvp.exporter.user_module import load_user_module
from asvp.graph_passes.metadata import ExportInfo, write_export
from asvp.io import atomic_output, require_file
from asvp.onnx_utils import check_model, image_io
from asvp.runtime.engines.sessions import SessionFromOnnx
from asvp.tasks.data import heldout_crops

DEFAULT_OPSET = MIN_OPSET


@dataclass
class ExportResult:
    path: str
    teacher: str
    task: str
    scale: int
    opset: int
    ir_version: int
    parity_max_abs_diff: float
    parity_tolerance: float
    parity_inputs: list  # every N,C,H,W shape the parity check ran
    exporter: str = "torchscript"
    size_multiple: int = 1
    min_size: int = 1
    dynamic: list = None  # which of N, H, W stay dynamic in the ONNX model

    def to_dict(self) -> dict:
        return asdict(self)

    def summary_lines(self) -> list[str]:
        shapes = ", ".join("x".join(map(str, s)) for s in self.parity_inputs)
        return [f"wrote {self.path} ({self.teacher}, task {self.task}, x{self.scale}, opset {self.opset}, IR "
                f"{self.ir_version}, {self.exporter} exporter, dynamic {'/'.join(self.dynamic or []) or 'none'}); "
                f"parity max |ort - torch| = {self.parity_max_abs_diff:.2e} <= {self.parity_tolerance:g} at {shapes}"]


def export_model(model: torch.nn.Module, out: str | os.PathLike, parity_inputs: torch.Tensor | None = None, *,
                 teacher: str, task: str = "custom", scale: int | None = None, size_multiple: int = 1,
                 opset: int = DEFAULT_OPSET, atol: float = PARITY_ATOL, min_size: int | None = None,
                 exporter: str = "auto", static_batch: bool = False, static_size=None) -> ExportResult:
    """Export `model` to ONNX with dynamic batch, height and width; fail loudly if ONNX Runtime disagrees.

    The minimum input side is `min_size` (spandrel's size requirements) or detected. Parity is checked on real
    photographs at the shapes of parity_shapes() (trace shape, batch 2, two more sizes), then on `parity_inputs`
    when given and the dims allow them. exporter "auto"
    tries the TorchScript exporter, then the dynamo exporter (when onnxscript is installed), and keeps the first
    whose parity holds everywhere. static_batch: batch fixed to 1; static_size (H, W): height and width fixed.
    The file appears at `out` only after onnx.checker (full), shape inference and the parity checks pass.
    """
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise AsvpError(f"opset must be between {MIN_OPSET} and {MAX_OPSET} (torch's TorchScript exporter), got {opset}")
    if exporter not in EXPORTERS:
        raise AsvpError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    if not isinstance(size_multiple, int) or size_multiple < 1:
        raise AsvpError(f"size multiple must be an integer >= 1, got {size_multiple!r}")
    if isinstance(static_size, str):
        static_size = parse_hw(static_size)
    model = model.eval()
    min_side = detect_min_size(model, size_multiple, min_size)
    if static_size is not None and (min(static_size) < min_side or static_size[0] % size_multiple
                                    or static_size[1] % size_multiple):
        raise AsvpError(f"--static-size {static_size[0]}x{static_size[1]}: the model needs sides >= {min_side} "
                        f"and multiples of {size_multiple}")
    shapes = parity_shapes(min_side, size_multiple, static_batch, static_size)
    inferred = infer_scale(model, *shapes[0][1:])
    if scale is not None and scale != inferred:
        raise AsvpError(f"declared scale x{scale} but the model upscales x{inferred}")
    scale = inferred
    dynamic = [d for d, fixed in (("N", static_batch), ("H", static_size), ("W", static_size)) if not fixed]
    extra = []  # the caller's own inputs (a bundled teacher's degraded held-out images), where the dims allow them
    if parity_inputs is not None and parity_inputs.ndim == 4:
        n, _, h, w = parity_inputs.shape
        if ((not static_batch or n == 1) and (static_size is None or (h, w) == tuple(static_size))
                and min(h, w) >= min_side and not h % size_multiple and not w % size_multiple):
            extra = [parity_inputs]
    tried = ["torchscript", "dynamo"] if exporter == "auto" else [exporter]
    failures = []
    for name in tried:
        if name == "dynamo" and not dynamo_available():
            failures.append((name, None, "not installed (pip install onnxscript)"))
            continue
        dummy = photo_batch(*shapes[0])
        try:
            proto = trace_onnx(name, model, dummy, opset, dynamic)
        except Exception as exc:
            failures.append((name, None, f"export fails: {error_reason(exc)}"))
            continue
        proto.producer_name = "asvp"
        rename_io(proto)
        write_export(proto, ExportInfo(teacher=teacher, task=task, scale=scale, value_range="[0, 1]",
                                       layout="NCHW RGB float32", size_multiple=size_multiple, min_size=min_side,
                                       exporter=name, dynamic_dims=",".join(dynamic) or "none"))
        try:
            check_model(proto, "exported model")
            onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
            image_io(proto)
            sess = SessionFromOnnx(proto, plugins=False)()
        except AsvpError as exc:
            failures.append((name, None, str(exc)))
            continue
        except Exception as exc:
            failures.append((name, None, error_reason(exc)))
            continue
        worst, done, bad, why = parity_at(sess, model, shapes + extra, atol)
        if bad is None:
            with atomic_output(out) as tmp:
                onnx.save(proto, str(tmp))
            used = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=opset)
            return ExportResult(str(out), teacher, task, scale, used, proto.ir_version, worst, atol, done, name,
                                size_multiple, min_side, dynamic)
        failures.append((name, bad, why))
    raise AsvpError(failure_message(failures, shapes, static_batch, static_size))


def parse_hw(text: str) -> tuple[int, int]:
    """'256x384' -> (256, 384)."""
    m = re.fullmatch(r"\s*(\d+)\s*[x,]\s*(\d+)\s*", str(text))
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise AsvpError(f"--static-size {text!r} is not a size like 256x256 (HxW)")
    return int(m.group(1)), int(m.group(2))


# ---- sources of models -------------------------------------------------------------------------------

def _real_images(size_multiple: int, side: int = 64) -> torch.Tensor:
    """Real photographs (scikit-image's held-out images) for parity checks of models of unknown task."""
    side = side - side % max(size_multiple, 1)
    return heldout_crops(side, per_image=1)[:2]


def export_bundled(task: str, out: str | os.PathLike, **kw) -> ExportResult:
    """A bundled task's teacher, its parity also checked on the task's degraded held-out images."""
    model, spec = load_teacher(task)
    inp, _ = spec.heldout(size=96)
    return export_model(model, out, inp[:2], teacher=spec.teacher_name, task=spec.name, scale=spec.scale,
                        size_multiple=spec.size_multiple, **kw)


def export_user_module(target: str, out, weights=None, kwargs=None, task: str = "custom", size_multiple: int = 1, **kw) -> ExportResult:
    """A `package.module:Class` model (exporter/user_module.py loads it)."""
    model = load_user_module(target, weights, kwargs)
    return export_model(model, out, _real_images(size_multiple), teacher=target, task=task,
                        size_multiple=size_multiple, **kw)


def export_spandrel(pth: str | os.PathLike, out, task: str = "custom", size_multiple: int | None = None,
                    **kw) -> ExportResult:
    """A spandrel checkpoint: its size requirements (minimum side, multiple) are spandrel's, unless given."""
    require_file(pth, "checkpoint")
    model, scale, arch, (minimum, multiple, square) = load_spandrel_model(pth, with_sizes=True)
    if square:
        raise AsvpError(f"{pth}: spandrel says {arch} only takes square images; asvp exports models for any H x W")
    mult = size_multiple or multiple
    if mult % multiple:
        raise AsvpError(f"--size-multiple {mult} is not a multiple of {arch}'s own ({multiple})")
    return export_model(model, out, None, teacher=f"spandrel:{arch}", task=task, scale=scale, size_multiple=mult,
                        min_size=minimum or None, **kw)

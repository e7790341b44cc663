"""Trace a PyTorch restoration model to ONNX, annotate it, and prove parity with ONNX Runtime.

`export_model` is the pipeline: the model's sizes and scale and the parity checks (exporter/parity.py), the
exporters tried in turn (exporter/tracing.py), the asvp metadata, and an atomic write once everything holds.
`export_bundled`, `export_user_module` and `export_spandrel` are its entry points, one per kind of source.
"""
from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, replace

import onnx
import torch

from asvp.constants import EXPORTERS, MAX_OPSET, MIN_OPSET
from asvp.errors import AsvpError
from asvp.exporter.interrupt import terminate_as_interrupt
from asvp.exporter.parity import (PARITY_ATOL, detect_input, failure_message, infer_output, kind_of, parity_at,
                                  parity_shapes, photo_batch)
from asvp.exporter.patches import patched, patches_for
from asvp.exporter.spandrel_loader import load_spandrel
from asvp.exporter.teachers.bundled import load_teacher
from asvp.exporter.tracing import dynamo_available, error_reason, rename_io, trace_onnx
from asvp.exporter.user_module import load_user_module
from asvp.graph_passes.metadata import ExportInfo, write_export
from asvp.io import atomic_output, require_file
from asvp.onnx_utils import check_model, image_input
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
    in_channels: int = 3
    out_channels: int = 3
    patch: str | None = None  # the export patch used while tracing (exporter/patches.py), if any

    def to_dict(self) -> dict:
        return asdict(self)

    def summary_lines(self) -> list[str]:
        shapes = ", ".join("x".join(map(str, s)) for s in self.parity_inputs)
        extra = "".join([f", {self.in_channels} -> {self.out_channels} channels"
                         if (self.in_channels, self.out_channels) != (3, 3) else "",
                         f", patch {self.patch}" if self.patch else ""])
        return [f"wrote {self.path} ({self.teacher}, task {self.task}, x{self.scale}, opset {self.opset}, IR "
                f"{self.ir_version}, {self.exporter} exporter, dynamic {'/'.join(self.dynamic or []) or 'none'}"
                f"{extra}); parity max |ort - torch| = {self.parity_max_abs_diff:.2e} <= {self.parity_tolerance:g} "
                f"at {shapes}"]


@dataclass
class _Plan:
    """What every exporter attempt shares: the checks' shapes and what the metadata records."""

    shapes: list  # (N, H, W) of the parity checks, the traced one first
    extra: list  # the caller's own input batches checked as well
    info: ExportInfo  # the metadata, less the exporter
    dynamic: list
    patches: list  # exporter/patches.py's patches applied while tracing
    atol: float
    opset: int


def export_model(model: torch.nn.Module, out: str | os.PathLike, parity_inputs: torch.Tensor | None = None, *,
                 teacher: str, task: str = "custom", scale: int | None = None, size_multiple: int = 1,
                 opset: int = DEFAULT_OPSET, atol: float = PARITY_ATOL, min_size: int | None = None,
                 exporter: str = "auto", static_batch: bool = False, static_size=None,
                 in_channels: int | None = None) -> ExportResult:
    """Export `model` to ONNX with dynamic batch, height and width; fail loudly if ONNX Runtime disagrees.

    The image's channels are `in_channels` (spandrel's) or detected (RGB, else the first convolution's); the
    minimum input side is `min_size` (spandrel's size requirements) or detected. Parity is checked on real
    photographs at the shapes of parity_shapes() (trace shape, batch 2, two more sizes), then on `parity_inputs`
    when given and the dims allow them. exporter "auto" tries the TorchScript exporter, then the dynamo exporter
    (when onnxscript is installed), and keeps the first whose parity holds everywhere. A known architecture whose
    code bakes the batch into the trace is traced under its patch (exporter/patches.py) when the batch is dynamic.
    static_batch: batch fixed to 1; static_size (H, W): height and width fixed. The file appears at `out` only
    after onnx.checker (full), shape inference and the parity checks pass. SIGTERM stops it cleanly (nothing left).
    """
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise AsvpError(f"opset must be between {MIN_OPSET} and {MAX_OPSET} (torch's TorchScript exporter), got {opset}")
    if exporter not in EXPORTERS:
        raise AsvpError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    if not isinstance(size_multiple, int) or size_multiple < 1:
        raise AsvpError(f"size multiple must be an integer >= 1, got {size_multiple!r}")
    if isinstance(static_size, str):
        static_size = parse_hw(static_size)
    with terminate_as_interrupt():
        model = model.eval()
        channels, min_side = detect_input(model, size_multiple, min_size, in_channels)
        if static_size is not None and (min(static_size) < min_side or static_size[0] % size_multiple
                                        or static_size[1] % size_multiple):
            raise AsvpError(f"--static-size {static_size[0]}x{static_size[1]}: the model needs sides >= {min_side} "
                            f"and multiples of {size_multiple}")
        shapes = parity_shapes(min_side, size_multiple, static_batch, static_size)
        inferred, out_channels = infer_output(model, *shapes[0][1:], channels)
        if scale is not None and scale != inferred:
            raise AsvpError(f"declared scale x{scale} but the model upscales x{inferred}")
        dynamic = [d for d, fixed in (("N", static_batch), ("H", static_size), ("W", static_size)) if not fixed]
        patches = patches_for(model) if "N" in dynamic else []
        info = ExportInfo(teacher=teacher, task=task, scale=inferred, value_range="[0, 1]",
                          layout=f"NCHW {kind_of(channels)} float32", size_multiple=size_multiple, min_size=min_side,
                          dynamic_dims=",".join(dynamic) or "none", in_channels=channels, out_channels=out_channels,
                          export_patch=",".join(p.name for p in patches) or None)
        plan = _Plan(shapes, _usable(parity_inputs, static_batch, static_size, min_side, size_multiple, channels),
                     info, dynamic, patches, atol, opset)
        failures = []
        for name in ["torchscript", "dynamo"] if exporter == "auto" else [exporter]:
            proto, failure = _attempt(name, model, plan)
            if proto is None:
                failures.append(failure)
                continue
            with atomic_output(out) as tmp:
                onnx.save(proto, str(tmp))
            used = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=opset)
            return ExportResult(str(out), teacher, task, inferred, used, proto.ir_version, failure[0], atol,
                                failure[1], name, size_multiple, min_side, dynamic, channels, out_channels,
                                info.export_patch)
        raise AsvpError(failure_message(failures, shapes, static_batch, static_size, channels))


def _usable(parity_inputs, static_batch, static_size, min_side, size_multiple, channels) -> list:
    """The caller's own inputs (a bundled teacher's degraded held-out images), where the dims allow them."""
    if parity_inputs is None or parity_inputs.ndim != 4:
        return []
    n, c, h, w = parity_inputs.shape
    fits = ((not static_batch or n == 1) and (static_size is None or (h, w) == tuple(static_size)) and c == channels
            and min(h, w) >= min_side and not h % size_multiple and not w % size_multiple)
    return [parity_inputs] if fits else []


def _attempt(name: str, model, plan: _Plan):
    """One exporter: (proto, (worst diff, shapes checked)) when its model passes every check, else
    (None, (exporter, failing shape or None, why))."""
    if name == "dynamo" and not dynamo_available():
        return None, (name, None, "not installed (pip install onnxscript)")
    dummy = photo_batch(*plan.shapes[0], plan.info.in_channels)
    try:
        with patched(plan.patches):
            proto = trace_onnx(name, model, dummy, plan.opset, plan.dynamic)
    except Exception as exc:
        return None, (name, None, f"export fails: {error_reason(exc)}")
    proto.producer_name = "asvp"
    rename_io(proto)
    write_export(proto, replace(plan.info, exporter=name))
    try:
        check_model(proto, "exported model")
        onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
        image_input(proto)
        sess = SessionFromOnnx(proto, plugins=False)()
    except AsvpError as exc:
        return None, (name, None, str(exc))
    except Exception as exc:
        return None, (name, None, error_reason(exc))
    worst, done, bad, why = parity_at(sess, model, plan.shapes + plan.extra, plan.atol, plan.info.in_channels)
    if bad is not None:
        return None, (name, bad, why)
    return proto, (worst, done)


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
    m = load_spandrel(pth)
    if m.square:
        raise AsvpError(f"{pth}: spandrel says {m.architecture} only takes square images; asvp exports models for "
                        "any H x W")
    if size_multiple is not None and (isinstance(size_multiple, bool) or not isinstance(size_multiple, int)
                                      or size_multiple < 1):
        raise AsvpError(f"size_multiple must be a positive integer, got {size_multiple!r}")
    mult = m.multiple if size_multiple is None else size_multiple
    if mult % m.multiple:
        raise AsvpError(f"--size-multiple {mult} is not a multiple of {m.architecture}'s own ({m.multiple})")
    return export_model(m.model, out, None, teacher=f"spandrel:{m.architecture}", task=task, scale=m.scale,
                        size_multiple=mult, min_size=m.minimum or None, in_channels=m.in_channels, **kw)

"""Trace a PyTorch restoration model to ONNX, annotate it, and prove parity with ONNX Runtime."""
from __future__ import annotations

import contextlib
import importlib
import io
import json
import logging
import os
import re
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch.export import Dim

from asvp.constants import EXPORTERS, MAX_OPSET, MIN_OPSET
from asvp.errors import AsvpError, first_line
from asvp.exporter.spandrel_loader import load_spandrel_model
from asvp.exporter.teachers.bundled import load_teacher
from asvp.graph_passes.metadata import ExportInfo, write_export
from asvp.io import atomic_output, require_file
from asvp.onnx_utils import MAX_IR_VERSION, check_model, image_io
from asvp.runtime.engines.sessions import SessionFromOnnx
from asvp.tasks.data import heldout_crops

DEFAULT_OPSET = MIN_OPSET
PARITY_ATOL = 1e-4  # max |onnx - torch| on [0, 1] images; float32 conv reordering stays ~1e-6
INPUT_NAME, OUTPUT_NAME = "input", "output"


_PROBE_SIDES = (1, 2, 4, 8, 12, 16, 24, 32, 40, 48, 64, 96, 128, 192, 256)


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


def _round_up(v: int, m: int) -> int:
    return -(-v // m) * m


def _forward(model: torch.nn.Module, x: torch.Tensor):
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model(x)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {_ANSI.sub('', first_line(exc))}"


@contextlib.contextmanager
def _quiet():
    """Silence what the exporters print (warnings, torch's logged tracebacks of optional registrations)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.disable(logging.CRITICAL)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


def detect_min_size(model: torch.nn.Module, size_multiple: int, minimum: int | None = None) -> int:
    """The smallest square side (a multiple of size_multiple) the model accepts: `minimum` when given (spandrel's
    size requirements) and the model runs there, else the first side of a short ladder that runs."""
    sides = sorted({_round_up(max(v, 1), size_multiple) for v in _PROBE_SIDES + ((minimum,) if minimum else ())})
    if minimum:
        sides = [v for v in sides if v >= minimum]
    errors = []
    for side in sides:
        try:
            _forward(model, torch.rand(1, 3, side, side))
            return side
        except Exception as exc:
            errors.append(f"{side}x{side}: {_why(exc)}")
    raise AsvpError(f"the model does not run on an NCHW RGB image of any side from {sides[0]} to {sides[-1]} "
                    f"(multiples of {size_multiple}); at {errors[-1]}")


def _infer_scale(model: torch.nn.Module, h: int, w: int) -> int:
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


def _images(n: int, h: int, w: int) -> torch.Tensor:
    """Real photographs (scikit-image's held-out images), cropped to n x 3 x h x w."""
    side = max(h, w)
    crops = heldout_crops(side, per_image=max(1, -(-n // 2)))
    return crops[:n, :, :h, :w].contiguous()


def _torchscript_export(model, dummy, path: Path, opset: int, dynamic: list[str]) -> None:
    axes = {0: "N", 2: "H", 3: "W"}
    in_axes = {a: n for a, n in axes.items() if n in dynamic}
    out_axes = {a: (n if a == 0 else n + "_out") for a, n in axes.items() if n in dynamic}
    with _quiet():
        torch.onnx.export(model, (dummy,), str(path), dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: in_axes, OUTPUT_NAME: out_axes} if in_axes else None)


def dynamo_available() -> bool:
    try:
        import onnxscript  # noqa: F401  (torch's dynamo exporter builds its graph with it)
    except Exception:
        return False
    return True


def _dynamo_export(model, dummy, path: Path, opset: int, dynamic: list[str]) -> None:
    # Dim.AUTO: dynamic where the model allows it, specialised (silently) where it does not; parity then tells
    dims = {axis: Dim.AUTO for axis, name in ((0, "N"), (2, "H"), (3, "W")) if name in dynamic}
    with _quiet():
        prog = torch.onnx.export(model, (dummy,), dynamo=True, opset_version=max(opset, 18),
                                 input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                 dynamic_shapes=({k: v for k, v in dims.items()},) if dims else None,
                                 optimize=True, verbose=False, report=False)
        prog.save(str(path))


def _to_proto(path: Path) -> onnx.ModelProto:
    proto = onnx.load(str(path))
    if proto.ir_version > MAX_IR_VERSION:
        proto.ir_version = MAX_IR_VERSION
    return proto


def _parity_at(sess, model, shapes, atol: float = PARITY_ATOL) -> tuple[float, list, tuple | None, str | None]:
    """Max diff over every shape; stops at the first failing shape: (worst, shapes checked, failing shape, why)."""
    worst, done = 0.0, []
    for item in shapes:
        x = item if isinstance(item, torch.Tensor) else _images(*item)
        shape = tuple(x.shape)
        try:
            got = sess.run(None, {sess.get_inputs()[0].name: x.numpy().astype(np.float32)})[0]
        except Exception as exc:
            return worst, done, shape, f"ONNX Runtime fails: {_why(exc)}"
        want = _forward(model, x).numpy()
        if got.shape != want.shape:
            return worst, done, shape, f"output shape {tuple(got.shape)} != torch's {tuple(want.shape)}"
        diff = float(np.max(np.abs(got - want)))
        done.append(list(shape))
        if not diff <= atol:
            return max(worst, diff), done, shape, f"max |onnxruntime - torch| = {diff:.3g} > {atol:g}"
        worst = max(worst, diff)
    return worst, done, None, None


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
    inferred = _infer_scale(model, *shapes[0][1:])
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
        with tempfile.TemporaryDirectory() as tmpdir:
            raw = Path(tmpdir) / "raw.onnx"
            dummy = _images(*shapes[0])
            try:
                (_torchscript_export if name == "torchscript" else _dynamo_export)(model, dummy, raw, opset, dynamic)
                proto = _to_proto(raw)
            except Exception as exc:
                failures.append((name, None, f"export fails: {_why(exc)}"))
                continue
        proto.producer_name = "asvp"
        _rename_io(proto)
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
            failures.append((name, None, _why(exc)))
            continue
        worst, done, bad, why = _parity_at(sess, model, shapes + extra, atol)
        if bad is None:
            with atomic_output(out) as tmp:
                onnx.save(proto, str(tmp))
            used = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=opset)
            return ExportResult(str(out), teacher, task, scale, used, proto.ir_version, worst, atol, done, name,
                                size_multiple, min_side, dynamic)
        failures.append((name, bad, why))
    raise AsvpError(_failure_message(failures, shapes, static_batch, static_size))


def _failure_message(failures, shapes, static_batch, static_size) -> str:
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


def parse_hw(text: str) -> tuple[int, int]:
    """'256x384' -> (256, 384)."""
    m = re.fullmatch(r"\s*(\d+)\s*[x,]\s*(\d+)\s*", str(text))
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise AsvpError(f"--static-size {text!r} is not a size like 256x256 (HxW)")
    return int(m.group(1)), int(m.group(2))


def _rename_io(proto: onnx.ModelProto) -> None:
    """The dynamo exporter may name the graph's input/output after the forward's arguments: use input/output."""
    inits = {i.name for i in proto.graph.initializer}
    ins = [i for i in proto.graph.input if i.name not in inits]
    for vi, want in ((ins[0] if len(ins) == 1 else None, INPUT_NAME), (proto.graph.output[0], OUTPUT_NAME)):
        if vi is None or vi.name == want:
            continue
        old = vi.name
        for node in proto.graph.node:
            node.input[:] = [want if i == old else i for i in node.input]
            node.output[:] = [want if o == old else o for o in node.output]
        vi.name = want


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


# ---- sources of models -------------------------------------------------------------------------------

def _real_images(size_multiple: int, side: int = 64) -> torch.Tensor:
    """Real photographs (scikit-image's held-out images) for parity checks of models of unknown task."""
    side = side - side % max(size_multiple, 1)
    return heldout_crops(side, per_image=1)[:2]


def export_bundled(task: str, out: str | os.PathLike, **kw) -> ExportResult:
    model, spec = load_teacher(task)
    inp, _ = spec.heldout(size=96)
    return export_model(model, out, inp[:2], teacher=spec.teacher_name, task=spec.name, scale=spec.scale,
                        size_multiple=spec.size_multiple, **kw)


def load_user_module(target: str, weights: str | os.PathLike | None = None, kwargs: str | dict | None = None) -> torch.nn.Module:
    """Instantiate `package.module:Class(**kwargs)` and load a state dict (.pt/.pth or .safetensors)."""
    if ":" not in target:
        raise AsvpError(f"expected module:Class, got {target!r}")
    mod_name, cls_name = target.split(":", 1)
    try:
        cls = getattr(importlib.import_module(mod_name), cls_name)
    except (ImportError, AttributeError) as exc:
        raise AsvpError(f"cannot import {target}: {exc}") from None
    if isinstance(kwargs, str):
        try:
            kwargs = json.loads(kwargs)
        except json.JSONDecodeError as exc:
            raise AsvpError(f"--kwargs is not valid JSON: {exc}") from None
    if kwargs is not None and not isinstance(kwargs, dict):
        raise AsvpError(f"--kwargs must be a JSON object of constructor arguments, got {type(kwargs).__name__}")
    try:
        model = cls(**(kwargs or {}))
    except Exception as exc:
        raise AsvpError(f"cannot construct {target}(**{json.dumps(kwargs or {})}): {type(exc).__name__}: "
                        f"{first_line(exc)}") from None
    if not isinstance(model, torch.nn.Module):
        raise AsvpError(f"{target} is not a torch.nn.Module class (it made a {type(model).__name__})")
    if weights is not None:
        w = require_file(weights, "weights file")
        try:
            if w.suffix == ".safetensors":
                from safetensors.torch import load_file

                state = load_file(str(w))
            else:
                state = torch.load(str(w), map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
                state = state["state_dict"]
            model.load_state_dict(state)
        except AsvpError:
            raise
        except Exception as exc:
            raise AsvpError(f"cannot load weights {w} into {target}: {str(exc).splitlines()[0]}") from None
    return model.eval()


def export_user_module(target: str, out, weights=None, kwargs=None, task: str = "custom", size_multiple: int = 1, **kw) -> ExportResult:
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

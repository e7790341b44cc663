"""Trace a PyTorch restoration model to ONNX, annotate it, and prove parity with ONNX Runtime."""
from __future__ import annotations

import importlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from asvp.errors import AsvpError, first_line
from asvp.exporter.spandrel_loader import load_spandrel_model
from asvp.exporter.teachers.bundled import load_teacher
from asvp.io import atomic_output, require_file
from asvp.onnx_utils import MAX_IR_VERSION, META_PREFIX, check_model, image_io, set_metadata
from asvp.runtime.engines.sessions import SessionFromOnnx
from asvp.tasks.data import heldout_crops

DEFAULT_OPSET = MIN_OPSET = 17
MAX_OPSET = 20  # the TorchScript exporter's highest (torch.onnx._constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET)
PARITY_ATOL = 1e-4  # max |onnx - torch| on [0, 1] images; float32 conv reordering stays ~1e-6
INPUT_NAME, OUTPUT_NAME = "input", "output"


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
    parity_inputs: list

    def to_dict(self) -> dict:
        return asdict(self)

    def summary_lines(self) -> list[str]:
        return [f"wrote {self.path} ({self.teacher}, task {self.task}, x{self.scale}, opset {self.opset}, IR "
                f"{self.ir_version}); parity max |ort - torch| = {self.parity_max_abs_diff:.2e} <= {self.parity_tolerance:g}"]


def _infer_scale(model: torch.nn.Module, size_multiple: int) -> int:
    side = 16 * size_multiple
    try:
        with torch.no_grad():
            out = model(torch.rand(1, 3, side, side))
    except Exception as exc:
        raise AsvpError(f"the model does not accept an NCHW RGB image [1, 3, {side}, {side}] ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 4 or out.shape[1] != 3:
        raise AsvpError("the model must return one NCHW RGB image tensor")
    if out.shape[-1] % side or out.shape[-2] % side:
        raise AsvpError(f"output size {tuple(out.shape[-2:])} is not an integer multiple of input size {side}")
    return out.shape[-1] // side


def export_model(model: torch.nn.Module, out: str | os.PathLike, parity_inputs: torch.Tensor, *, teacher: str,
                 task: str = "custom", scale: int | None = None, size_multiple: int = 1, opset: int = DEFAULT_OPSET,
                 atol: float = PARITY_ATOL) -> ExportResult:
    """Export `model` to ONNX with dynamic batch, height and width; fail loudly if ONNX Runtime disagrees.

    The file appears at `out` only after onnx.checker (full), shape inference and the parity check pass.
    """
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise AsvpError(f"opset must be between {MIN_OPSET} and {MAX_OPSET} (torch's TorchScript exporter), got {opset}")
    model = model.eval()
    inferred = _infer_scale(model, size_multiple)
    if scale is not None and scale != inferred:
        raise AsvpError(f"declared scale x{scale} but the model upscales x{inferred}")
    scale = inferred
    dummy = parity_inputs[:1]
    with tempfile.TemporaryDirectory() as tmpdir:
        raw = Path(tmpdir) / "raw.onnx"
        try:
            torch.onnx.export(model, (dummy,), str(raw), dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "N", 2: "H", 3: "W"},
                                            OUTPUT_NAME: {0: "N", 2: "H_out", 3: "W_out"}})
        except Exception as exc:
            raise AsvpError(f"torch.onnx.export failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
        proto = onnx.load(str(raw))
    if proto.ir_version > MAX_IR_VERSION:
        proto.ir_version = MAX_IR_VERSION
    proto.producer_name = "asvp"
    set_metadata(proto, {
        META_PREFIX + "teacher": teacher, META_PREFIX + "task": task, META_PREFIX + "scale": scale,
        META_PREFIX + "value_range": "[0, 1]", META_PREFIX + "layout": "NCHW RGB float32",
        META_PREFIX + "size_multiple": size_multiple,
    })
    check_model(proto, "exported model")
    onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    image_io(proto)
    max_diff = parity(proto, model, parity_inputs)
    if not max_diff <= atol:
        raise AsvpError(f"parity check failed: max |onnxruntime - torch| = {max_diff:.3g} > tolerance {atol:g}")
    with atomic_output(out) as tmp:
        onnx.save(proto, str(tmp))
    return ExportResult(str(out), teacher, task, scale, opset, proto.ir_version, max_diff, atol,
                        [list(parity_inputs.shape)])


def parity(proto: onnx.ModelProto, model: torch.nn.Module, inputs: torch.Tensor) -> float:
    """Max abs difference between ONNX Runtime (CPU) and torch on `inputs`."""
    sess = SessionFromOnnx(proto, plugins=False)()
    got = sess.run(None, {sess.get_inputs()[0].name: inputs.numpy().astype(np.float32)})[0]
    with torch.no_grad():
        want = model(inputs).numpy()
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


def export_spandrel(pth: str | os.PathLike, out, task: str = "custom", size_multiple: int = 1, **kw) -> ExportResult:
    require_file(pth, "checkpoint")
    model, scale, arch = load_spandrel_model(pth)
    return export_model(model, out, _real_images(size_multiple), teacher=f"spandrel:{arch}", task=task,
                        scale=scale, size_multiple=size_multiple, **kw)

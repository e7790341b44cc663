"""Inference backends behind one interface, built from Polygraphy's loaders and runners.

    runner = make_runner("model.onnx", backend="onnxrt-cpu")
    with runner:
        out = runner.infer({input_name: batch})[output_name]

`run_model` is the one-call convenience used by validation, profiling and attacks.
"""
from __future__ import annotations

import os

import numpy as np

from asvp.errors import AsvpError, MissingDependencyError

BACKENDS = ("onnxrt-cpu",)


def ort_session(model: str | os.PathLike | bytes, providers=("CPUExecutionProvider",)):
    """An onnxruntime.InferenceSession (through Polygraphy's SessionFromOnnx loader)."""
    from polygraphy.backend.onnxrt import SessionFromOnnx

    src = model if isinstance(model, bytes) else str(model)
    try:
        return SessionFromOnnx(src, providers=list(providers))()
    except Exception as exc:
        raise AsvpError(f"ONNX Runtime cannot load the model: {str(exc).strip().splitlines()[0]}") from None


def make_runner(model: str | os.PathLike, backend: str = "onnxrt-cpu"):
    """A Polygraphy runner for `model` on `backend`."""
    if backend not in BACKENDS:
        raise MissingDependencyError(f"backend {backend!r} is not available here; available: {', '.join(BACKENDS)}")
    from polygraphy.backend.onnxrt import OnnxrtRunner

    return OnnxrtRunner(ort_session(model), name=f"{backend}:{os.path.basename(str(model))}")


def run_model(model: str | os.PathLike, batch: np.ndarray, backend: str = "onnxrt-cpu") -> dict[str, np.ndarray]:
    """Run one batch through the model; returns every output by name."""
    batch = np.ascontiguousarray(batch, dtype=np.float32)
    if not np.all(np.isfinite(batch)):
        raise AsvpError("input images contain NaN or infinite values")
    runner = make_runner(model, backend)
    with runner:
        name = runner.get_input_metadata().keys()
        feed = {next(iter(name)): batch}
        return {k: np.asarray(v) for k, v in runner.infer(feed).items()}

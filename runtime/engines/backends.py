"""Inference backends behind one interface, built from Polygraphy's loaders and runners.

    runner = make_runner("model.onnx", backend="onnxrt-cpu")
    with runner:
        out = runner.infer({input_name: batch})[output_name]

`run_model` is the one-call convenience used by validation, profiling and attacks (returns the outputs);
`run` returns the same outputs plus what actually ran them (`RunResult.actual_provider`, from
`actual_provider(runner, backend)`, which profiling and validation use too). Sessions and ONNX
Runtime runners come from runtime.engines.sessions, TensorRT runners from runtime.engines.load.

Backends:
    onnxrt-cpu   ONNX Runtime, CPUExecutionProvider (always available)
    onnxrt-cuda  ONNX Runtime, CUDAExecutionProvider (onnxruntime-gpu + a CUDA device)
    onnxrt-trt   ONNX Runtime, TensorrtExecutionProvider (onnxruntime-gpu built with TensorRT + a CUDA device)
    tensorrt     TensorRT through Polygraphy's TrtRunner, over an engine file or an engine built on the fly

A model containing AsvpPerturb nodes (plugin mode) automatically gets a plugin-enabled session
(runtime/engines/plugin_ort.py) on the ONNX Runtime backends and the registered TensorRT plugin
(runtime/engines/plugin_trt.py) on `tensorrt`. onnxruntime-gpu silently falls back to CPU when CUDA cannot start; asvp checks the provider that
actually runs the session and refuses (MissingDependencyError, exit 3) rather than report a CPU run as CUDA.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field

import numpy as np
import onnx

from asvp.constants import BACKENDS
from asvp.errors import AsvpError, MissingDependencyError, first_line
from asvp.runtime.engines import plugin_trt
from asvp.runtime.engines.load import trt_runner
from asvp.runtime.engines.reduced import reduced_runner
from asvp.runtime.engines.sessions import AsvpOnnxrtRunner, INSTALL_ORT_GPU, SessionFromOnnx, count_plugin_nodes
from asvp.runtime.engines.sidecar import is_engine_path


ORT_PROVIDERS = {
    "onnxrt-cpu": ("CPUExecutionProvider",),
    "onnxrt-cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "onnxrt-trt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}


# ---- availability ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BackendStatus:
    name: str
    available: bool
    detail: str  # what runs it when available, what is missing (and how to get it) when not

    def to_dict(self) -> dict:
        return {"name": self.name, "available": self.available, "detail": self.detail}


def _probe_model() -> bytes:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


@functools.lru_cache(maxsize=None)
def _ort_status(backend: str) -> BackendStatus:
    import onnxruntime as ort

    want = ORT_PROVIDERS[backend][0]
    if want == "CPUExecutionProvider":
        return BackendStatus(backend, True, f"onnxruntime {ort.__version__}, CPUExecutionProvider")
    if want not in ort.get_available_providers():
        return BackendStatus(backend, False, f"onnxruntime {ort.__version__} has no {want}: {INSTALL_ORT_GPU}")
    try:
        got = SessionFromOnnx(_probe_model(), ORT_PROVIDERS[backend], plugins=False)().get_providers()[0]
    except Exception as exc:
        return BackendStatus(backend, False, f"{want} failed to start: {first_line(exc)}")
    if got != want:
        return BackendStatus(backend, False, f"{want} is built in but falls back to {got} "
                                             "(no usable CUDA device, or CUDA/cuDNN/TensorRT libraries missing)")
    return BackendStatus(backend, True, f"onnxruntime {ort.__version__}, {want}")


def backend_status(name: str) -> BackendStatus:
    if name not in BACKENDS:
        raise AsvpError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name in ORT_PROVIDERS:
        return _ort_status(name)
    ok, detail = plugin_trt.tensorrt_status()
    return BackendStatus(name, ok, detail)


def backends_table(rows: list[dict]) -> str:
    """`asvp backends` for people: name, yes/no, what runs it or what is missing (rows: BackendStatus.to_dict())."""
    width = max(len(r["name"]) for r in rows)
    return "\n".join(f"{r['name'].ljust(width)}  {'yes' if r['available'] else 'no '}  {r['detail']}" for r in rows)


def backends_status() -> list[BackendStatus]:
    """Every backend, with whether it can run here and why (not)."""
    return [backend_status(b) for b in BACKENDS]


def available_backends() -> tuple[str, ...]:
    """Names of the backends that can run here (onnxrt-cpu always)."""
    return tuple(s.name for s in backends_status() if s.available)


def require_backend(name: str) -> BackendStatus:
    status = backend_status(name)
    if not status.available:
        raise MissingDependencyError(f"backend {name} is not available here: {status.detail}")
    return status


# ---- runners -----------------------------------------------------------------------------------------------

def _label(model) -> str:
    if isinstance(model, (bytes, bytearray, onnx.ModelProto)):
        return "model"
    return os.path.basename(str(model))


def make_runner(model, backend: str = "onnxrt-cpu", *, input_shape=None, name: str | None = None,
                threads: int | None = None, precision: str = "fp32"):
    """A Polygraphy runner for `model` (ONNX path/bytes/ModelProto, or an engine file for `tensorrt`).

    precision: "fp32" (default) or "fp16"/"bf16", which run the ONNX model converted to torch in that dtype
    (runtime/engines/reduced.py; onnxrt-cpu and onnxrt-cuda only).
    input_shape: for `tensorrt` over an ONNX model, the shape the engine built on the fly is optimised for
    (default: the build defaults, see asvp.runtime.engines.shapes.make_profile). threads: ONNX Runtime's
    intra-op threads (default: the CPUs this process may use; ignored by TensorRT).
    """
    if backend not in BACKENDS:
        raise AsvpError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    label = name or f"{backend}:{_label(model)}"
    if precision != "fp32":
        return reduced_runner(model, backend, precision, name=label)
    if backend == "tensorrt":
        require_backend(backend)
        return trt_runner(model, input_shape=input_shape, name=label)
    if is_engine_path(model):
        raise AsvpError(f"{model} is a TensorRT engine; run it with backend 'tensorrt'")
    require_backend(backend)
    providers = ORT_PROVIDERS[backend]
    return AsvpOnnxrtRunner(SessionFromOnnx(model, providers, threads=threads), expected_provider=providers[0], name=label, backend=backend)


def actual_provider(runner, backend: str) -> str:
    """What really runs an *active* runner: the ONNX Runtime provider, or the TensorRT version."""
    try:
        p = getattr(runner, "actual_provider", None)
        if p:
            return str(p)
        if backend == "tensorrt":
            return plugin_trt.describe_tensorrt()
    except Exception:
        pass
    return backend


@dataclass
class RunResult:
    outputs: dict[str, np.ndarray]
    backend: str
    actual_provider: str  # what really ran the model (e.g. "CPUExecutionProvider", "TensorRT 10.9.0.34")
    plugin_nodes: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def description(self) -> str:
        extra = f"; {'; '.join(self.notes)}" if self.notes else ""
        return f"{self.backend} ran on {self.actual_provider}{extra}"

    def to_dict(self) -> dict:
        return {"backend": self.backend, "actual_provider": self.actual_provider, "plugin_nodes": self.plugin_nodes,
                "description": self.description, "outputs": {k: list(v.shape) for k, v in self.outputs.items()}}


def run(model, batch: np.ndarray, backend: str = "onnxrt-cpu") -> RunResult:
    """Run one batch; returns every output by name plus the provider that actually ran it."""
    batch = np.ascontiguousarray(batch, dtype=np.float32)
    if not np.all(np.isfinite(batch)):
        raise AsvpError("input images contain NaN or infinite values")
    runner = make_runner(model, backend, input_shape=batch.shape)
    n_plugin = 0 if is_engine_path(model) else count_plugin_nodes(model)
    notes = []
    with runner:
        feed = {next(iter(runner.get_input_metadata().keys())): batch}
        outputs = {k: np.asarray(v) for k, v in runner.infer(feed).items()}
        actual = actual_provider(runner, backend)
        if isinstance(runner, AsvpOnnxrtRunner) and n_plugin and actual != "CPUExecutionProvider":
            notes.append(f"{n_plugin} AsvpPerturb node(s) ran on CPU (onnxruntime-extensions Python custom op)")
    if n_plugin:
        notes.insert(0, f"{n_plugin} AsvpPerturb plugin node(s)")
    return RunResult(outputs, backend, actual, n_plugin, notes)


def run_model(model, batch: np.ndarray, backend: str = "onnxrt-cpu") -> dict[str, np.ndarray]:
    """Run one batch through the model; returns every output by name."""
    return run(model, batch, backend).outputs

"""Inference backends behind one interface, built from Polygraphy's loaders and runners.

    runner = make_runner("model.onnx", backend="onnxrt-cpu")
    with runner:
        out = runner.infer({input_name: batch})[output_name]

`run_model` is the one-call convenience used by validation, profiling and attacks (returns the outputs);
`run` returns the same outputs plus what actually ran them (`RunResult.actual_provider`).

Backends:
    onnxrt-cpu   ONNX Runtime, CPUExecutionProvider (always available)
    onnxrt-cuda  ONNX Runtime, CUDAExecutionProvider (onnxruntime-gpu + a CUDA device)
    onnxrt-trt   ONNX Runtime, TensorrtExecutionProvider (onnxruntime-gpu built with TensorRT + a CUDA device)
    tensorrt     TensorRT through Polygraphy's TrtRunner, over an engine file or an engine built on the fly

A model containing AsvpPerturb nodes (plugin mode) automatically gets a plugin-enabled session
(runtime/plugin_ort.py) on the ONNX Runtime backends and the registered TensorRT plugin (runtime/plugin_trt.py)
on `tensorrt`. onnxruntime-gpu silently falls back to CPU when CUDA cannot start; asvp checks the provider that
actually runs the session and refuses (MissingDependencyError, exit 3) rather than report a CPU run as CUDA.
"""
from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field

import numpy as np
import onnx
from polygraphy import util as pg_util
from polygraphy.backend.base import BaseLoader
from polygraphy.backend.onnxrt import OnnxrtRunner

from asvp.errors import AsvpError, MissingDependencyError

BACKENDS = ("onnxrt-cpu", "onnxrt-cuda", "onnxrt-trt", "tensorrt")
ORT_PROVIDERS = {
    "onnxrt-cpu": ("CPUExecutionProvider",),
    "onnxrt-cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "onnxrt-trt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
INSTALL_ORT_GPU = "pip install 'onnxruntime-gpu>=1.18,<1.33' (in place of onnxruntime) with matching CUDA/cuDNN"

_UNREGISTERED_OP = re.compile(r"([\w.\-]*):(\w+)\(-?\d+\) is not a registered function/op")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ---- ONNX Runtime sessions ---------------------------------------------------------------------------------

def _session_error(exc: BaseException) -> AsvpError:
    from asvp.runtime.plugin_ort import PLUGIN_DOMAIN, PLUGIN_OP

    m = _UNREGISTERED_OP.search(str(exc))
    if m:
        domain, op = m.group(1) or "ai.onnx", m.group(2)
        if (domain, op) == (PLUGIN_DOMAIN, PLUGIN_OP):
            return MissingDependencyError(f"{PLUGIN_DOMAIN}::{PLUGIN_OP} is not registered with this session; create it "
                                          "through asvp.runtime (ort_session / make_runner), which registers the plugin")
        return AsvpError(f"the model uses custom op {domain}::{op}, which neither ONNX Runtime nor an asvp plugin "
                         f"implements (asvp provides {PLUGIN_DOMAIN}::{PLUGIN_OP} only): register that op's custom-op "
                         "library yourself, or re-defend the original model with --mode subgraph")
    return AsvpError(f"ONNX Runtime cannot load the model: {_first_line(exc)}")


def _model_source(model):
    if isinstance(model, onnx.ModelProto):
        return model.SerializeToString()
    if isinstance(model, (bytes, bytearray)):
        return bytes(model)
    from asvp.io import require_file

    return str(require_file(model, "ONNX model"))


def resolve_providers(providers) -> list:
    """Exact ONNX Runtime provider names; like Polygraphy, a case-insensitive part ("cpu", "cuda") matches."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    out = []
    for p in providers:
        name, opts = (p[0], p[1]) if isinstance(p, tuple) else (p, None)
        match = name if name in available else next((a for a in available if name.lower() in a.lower()), None)
        if match is None:
            raise MissingDependencyError(f"ONNX Runtime here has no provider matching {name!r} "
                                         f"(available: {', '.join(available)}); {INSTALL_ORT_GPU}")
        out.append((match, opts) if opts is not None else match)
    return out


def create_session(model, providers=("CPUExecutionProvider",), plugins: bool | None = None):
    """An onnxruntime.InferenceSession; plugin-enabled when the model has AsvpPerturb nodes (plugins=None)."""
    import onnxruntime as ort

    from asvp.runtime import plugin_ort

    providers = resolve_providers(providers)

    if plugins is None or plugins:
        proto = plugin_ort.as_model(model)
        found = plugin_ort.plugin_nodes(proto)  # validates every node's attributes (one-line errors)
        if plugins is None:
            plugins = bool(found)
    if plugins:
        so = plugin_ort.session_options()
    else:
        so = ort.SessionOptions()
        try:
            so.intra_op_num_threads = len(os.sched_getaffinity(0))
        except AttributeError:
            pass
    so.log_severity_level = 4  # asvp reports failures itself, in one line
    try:
        return ort.InferenceSession(_model_source(model), sess_options=so, providers=list(providers))
    except AsvpError:
        raise
    except Exception as exc:
        raise _session_error(exc) from None


def check_provider(actual: list[str] | tuple[str, ...], expected: str | None, backend: str = "") -> str:
    """The provider that runs the session; MissingDependencyError when ONNX Runtime fell back from `expected`."""
    first = actual[0] if actual else "none"
    if expected and first != expected:
        what = f"backend {backend}" if backend else expected
        raise MissingDependencyError(f"{what} asked for {expected} but ONNX Runtime runs the session on {first} "
                                     f"(the provider failed to start: no usable CUDA device or libraries); "
                                     f"{INSTALL_ORT_GPU}, or use onnxrt-cpu")
    return first


def ort_session(model, providers=("CPUExecutionProvider",), *, plugins: bool | None = None):
    """An onnxruntime.InferenceSession for `model` (path, bytes or ModelProto).

    Plugin-enabled automatically when the model contains AsvpPerturb nodes. Raises MissingDependencyError
    when the first provider asked for is not the one that actually runs the session.
    """
    resolved = resolve_providers(providers)
    sess = create_session(model, resolved, plugins)
    first = resolved[0] if resolved else None
    check_provider(sess.get_providers(), first[0] if isinstance(first, tuple) else first)
    return sess


class SessionLoader(BaseLoader):
    """Polygraphy-style loader: builds the (plugin-enabled if needed) ONNX Runtime session when called.

    Polygraphy's own SessionFromOnnx cannot take SessionOptions, which the custom-op library needs.
    """

    def __init__(self, model, providers=("CPUExecutionProvider",), plugins: bool | None = None):
        self.model = model
        self.providers = tuple(providers)
        self.plugins = plugins

    def call_impl(self):
        return create_session(self.model, self.providers, self.plugins)


class AsvpOnnxrtRunner(OnnxrtRunner):
    """Polygraphy's OnnxrtRunner, refusing to run when ONNX Runtime fell back from the requested provider."""

    def __init__(self, sess, expected_provider: str | None = None, name: str | None = None, backend: str = ""):
        super().__init__(sess, name=name)
        self.expected_provider = expected_provider
        self.backend = backend

    def activate_impl(self):
        self.sess, _ = pg_util.invoke_if_callable(self._sess)
        try:
            check_provider(self.sess.get_providers(), self.expected_provider, self.backend)
        except MissingDependencyError:
            del self.sess
            raise

    @property
    def actual_provider(self) -> str:
        return self.sess.get_providers()[0]


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
        so = ort.SessionOptions()
        so.log_severity_level = 4
        sess = ort.InferenceSession(_probe_model(), sess_options=so, providers=list(ORT_PROVIDERS[backend]))
        got = sess.get_providers()[0]
    except Exception as exc:
        return BackendStatus(backend, False, f"{want} failed to start: {_first_line(exc)}")
    if got != want:
        return BackendStatus(backend, False, f"{want} is built in but falls back to {got} "
                                             "(no usable CUDA device, or CUDA/cuDNN/TensorRT libraries missing)")
    return BackendStatus(backend, True, f"onnxruntime {ort.__version__}, {want}")


def backend_status(name: str) -> BackendStatus:
    if name not in BACKENDS:
        raise AsvpError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name in ORT_PROVIDERS:
        return _ort_status(name)
    from asvp.runtime.plugin_trt import tensorrt_status

    ok, detail = tensorrt_status()
    return BackendStatus(name, ok, detail)


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


def is_engine_path(model) -> bool:
    return isinstance(model, (str, os.PathLike)) and str(model).lower().endswith(ENGINE_SUFFIXES)


def make_runner(model, backend: str = "onnxrt-cpu", *, input_shape=None, name: str | None = None):
    """A Polygraphy runner for `model` (ONNX path/bytes/ModelProto, or an engine file for `tensorrt`).

    input_shape: for `tensorrt` over an ONNX model, the shape the engine built on the fly is optimised for
    (default: the build defaults, see asvp.runtime.build).
    """
    if backend not in BACKENDS:
        raise AsvpError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    label = name or f"{backend}:{_label(model)}"
    if backend == "tensorrt":
        require_backend(backend)
        from asvp.runtime.build import trt_runner

        return trt_runner(model, input_shape=input_shape, name=label)
    if is_engine_path(model):
        raise AsvpError(f"{model} is a TensorRT engine; run it with backend 'tensorrt'")
    require_backend(backend)
    providers = ORT_PROVIDERS[backend]
    return AsvpOnnxrtRunner(SessionLoader(model, providers), expected_provider=providers[0], name=label, backend=backend)


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


def _count_plugin_nodes(model) -> int:
    from asvp.runtime import plugin_ort

    if is_engine_path(model):
        return 0
    return sum(1 for n in plugin_ort.as_model(model).graph.node if plugin_ort.is_plugin_node(n))


def run(model, batch: np.ndarray, backend: str = "onnxrt-cpu") -> RunResult:
    """Run one batch; returns every output by name plus the provider that actually ran it."""
    batch = np.ascontiguousarray(batch, dtype=np.float32)
    if not np.all(np.isfinite(batch)):
        raise AsvpError("input images contain NaN or infinite values")
    runner = make_runner(model, backend, input_shape=batch.shape)
    n_plugin = _count_plugin_nodes(model)
    notes = []
    with runner:
        feed = {next(iter(runner.get_input_metadata().keys())): batch}
        outputs = {k: np.asarray(v) for k, v in runner.infer(feed).items()}
        if isinstance(runner, AsvpOnnxrtRunner):
            actual = runner.actual_provider
            if n_plugin and actual != "CPUExecutionProvider":
                notes.append(f"{n_plugin} AsvpPerturb node(s) ran on CPU (onnxruntime-extensions Python custom op)")
        else:
            from asvp.runtime.plugin_trt import describe_tensorrt

            actual = describe_tensorrt()
    if n_plugin:
        notes.insert(0, f"{n_plugin} AsvpPerturb plugin node(s)")
    return RunResult(outputs, backend, actual, n_plugin, notes)


def run_model(model, batch: np.ndarray, backend: str = "onnxrt-cpu") -> dict[str, np.ndarray]:
    """Run one batch through the model; returns every output by name."""
    return run(model, batch, backend).outputs

"""Plugin mode on ONNX Runtime: `AsvpPerturb` as an onnxruntime-extensions Python custom op.

The node contract lives in graph_passes.plugin_contract (op type, domain, attributes, node checks). Here: the
kernel, `asvp.method.asvp_exact` (float64 Gram eigendecomposition) with an AsvpConfig built from the node's
attributes, and its registration with onnxruntime-extensions.

    so = session_options()                       # extensions library registered, AsvpPerturb declared
    sess = onnxruntime.InferenceSession(path, so, providers=["CPUExecutionProvider"])

Sessions are normally built by runtime.engines.sessions.SessionFromOnnx, which calls this when a model has plugin
nodes. ONNX Runtime reads the attributes once per node when it creates the kernel and passes them to the Python
function on every call, so several AsvpPerturb nodes with different k/h in one model each get their own
(tests check this). Python custom ops run on ONNX Runtime's CPU execution provider only.

Precision: float32 only, as the contract declares (inputs and outputs registered as dt_float); the kernel
computes in float64. A float16/bfloat16 model would need its own registration and a Cast around the node:
not offered, since this reference runs on the CPU, where reduced precision buys nothing.
"""
from __future__ import annotations

import functools
import os
import threading

import numpy as np

from asvp.config import AsvpConfig
from asvp.errors import MissingDependencyError
from asvp.graph_passes.plugin_contract import PLUGIN_OP, config_from_attrs
from asvp.method import asvp_exact_numpy

INSTALL_EXTENSIONS = "pip install 'onnxruntime-extensions>=0.12,<0.16'"

_LOCK = threading.Lock()
_REGISTERED = False


@functools.lru_cache(maxsize=256)
def _cached_config(k: int, h: float, tau: float, adaptive: int) -> AsvpConfig:
    return config_from_attrs(k, h, tau, adaptive)


def asvp_kernel(x: np.ndarray, k: int, h: float, tau: float, adaptive: int, **_ignored) -> np.ndarray:
    """The custom op's body: asvp_exact on one [N, C, H, W] float32 batch with the node's attributes."""
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"{PLUGIN_OP} expects a rank-4 NCHW input, got shape {x.shape}")
    out = asvp_exact_numpy(x.astype(np.float32, copy=False), _cached_config(int(k), float(h), float(tau), int(adaptive)))
    return out.astype(np.float32, copy=False)


def _import_extensions():
    try:
        import onnxruntime_extensions as ortx
    except ImportError:
        raise MissingDependencyError(f"plugin-mode models need onnxruntime-extensions: {INSTALL_EXTENSIONS}") from None
    return ortx


def register_ort_op() -> None:
    """Declare AsvpPerturb to onnxruntime-extensions (process-wide, idempotent)."""
    global _REGISTERED
    with _LOCK:
        if _REGISTERED:
            return
        ortx = _import_extensions()
        d = ortx.PyCustomOpDef
        ortx.onnx_op(op_type=PLUGIN_OP, inputs=[d.dt_float], outputs=[d.dt_float],
                     attrs={"k": d.dt_int64, "h": d.dt_float, "tau": d.dt_float, "adaptive": d.dt_int64})(asvp_kernel)
        _REGISTERED = True


def library_path() -> str:
    return _import_extensions().get_library_path()


def default_threads() -> int:
    """Like Polygraphy: the CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def session_options(options=None, threads: int | None = None):
    """onnxruntime.SessionOptions with the extensions library registered and AsvpPerturb declared.

    Register before the session is created: ONNX Runtime looks custom ops up while it builds the graph.
    threads: intra-op threads (default for new options: the CPUs this process may use; given options are kept).
    """
    import onnxruntime as ort

    register_ort_op()
    so = options if options is not None else ort.SessionOptions()
    if threads is None and options is None:
        threads = default_threads()
    if threads is not None:
        so.intra_op_num_threads = max(1, int(threads))
    so.register_custom_ops_library(library_path())
    return so

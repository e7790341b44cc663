"""Plugin mode on ONNX Runtime: `AsvpPerturb` as an onnxruntime-extensions Python custom op.

The contract (shared with graph_passes/plugin_node.py, which inserts the nodes, and runtime/plugin_trt.py,
the TensorRT side): one node per defended feature,

    op_type "AsvpPerturb", domain "ai.onnx.contrib"
    attributes  plugin_namespace="asvp" (string), plugin_version="1" (string),
                k (int), h (float), tau (float), adaptive (int 0/1), placement ("inline" | "tap")
    one float32 input [N, C, H, W]  ->  one float32 output of the same shape

and the kernel is `asvp.method.asvp_exact` (float64 Gram eigendecomposition) with an AsvpConfig built from the
node's attributes. The TensorRT ONNX parser finds the TensorRT plugin from the same node by op_type,
`plugin_namespace` and `plugin_version` (the domain is at most a fallback namespace), so one ONNX file serves
both runtimes.

    so = session_options()                       # extensions library registered, AsvpPerturb declared
    sess = onnxruntime.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    runner = make_plugin_runner(path)            # or a Polygraphy OnnxrtRunner over such a session

ONNX Runtime reads the attributes once per node when it creates the kernel and passes them to the Python
function on every call, so several AsvpPerturb nodes with different k/h in one model each get their own
(tests/test_plugin.py checks this). Python custom ops run on ONNX Runtime's CPU execution provider only.
"""
from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass

import numpy as np
import onnx

from asvp.config import AsvpConfig
from asvp.errors import AsvpError, MissingDependencyError

# One source of truth for the node contract: graph_passes/plugin_node.py (written in parallel). Until it
# exists these literal values, which the contract fixes, stand in; tests check that both agree.
try:
    from asvp.graph_passes.plugin_node import PLUGIN_DOMAIN, PLUGIN_NAMESPACE, PLUGIN_OP, PLUGIN_VERSION
except ModuleNotFoundError as _exc:  # only "the module is not there yet"; any other error surfaces
    if _exc.name not in ("asvp.graph_passes.plugin_node",):
        raise
    PLUGIN_OP = "AsvpPerturb"
    PLUGIN_DOMAIN = "ai.onnx.contrib"
    PLUGIN_NAMESPACE = "asvp"
    PLUGIN_VERSION = "1"

# attribute name -> (ONNX attribute type, python type). The kernel needs only k, h, tau, adaptive.
CONTRACT_ATTRS = {
    "plugin_namespace": onnx.AttributeProto.STRING,
    "plugin_version": onnx.AttributeProto.STRING,
    "k": onnx.AttributeProto.INT,
    "h": onnx.AttributeProto.FLOAT,
    "tau": onnx.AttributeProto.FLOAT,
    "adaptive": onnx.AttributeProto.INT,
    "placement": onnx.AttributeProto.STRING,
}
KERNEL_ATTRS = ("k", "h", "tau", "adaptive")
INSTALL_EXTENSIONS = "pip install 'onnxruntime-extensions>=0.12,<0.16'"


# ---- the contract, independent of any runtime ------------------------------------------------------------

def config_from_attrs(k: int, h: float, tau: float, adaptive: int, placement: str = "inline") -> AsvpConfig:
    """The AsvpConfig a node's attributes describe.

    h and tau are rounded to float32 first: ONNX stores FLOAT attributes as float32 and TensorRT hands them to
    the plugin as float32, so rounding here makes the ONNX Runtime and TensorRT kernels use identical values.
    """
    return AsvpConfig(h=float(np.float32(h)), k=int(k), k_mode="adaptive" if int(adaptive) else "fixed",
                      tau=float(np.float32(tau)), placement=str(placement))


@dataclass(frozen=True)
class PluginNode:
    """One AsvpPerturb node of a model, checked against the contract."""

    name: str
    input: str
    output: str
    config: AsvpConfig

    def to_dict(self) -> dict:
        return {"name": self.name, "input": self.input, "output": self.output, "config": self.config.to_dict()}


def is_plugin_node(node: onnx.NodeProto) -> bool:
    return node.op_type == PLUGIN_OP and node.domain == PLUGIN_DOMAIN


def _attr_value(node: onnx.NodeProto, attr: onnx.AttributeProto):
    value = onnx.helper.get_attribute_value(attr)
    return value.decode() if isinstance(value, bytes) else value


def check_plugin_node(node: onnx.NodeProto) -> PluginNode:
    """Validate one AsvpPerturb node; every problem is one AsvpError line naming the node."""
    ident = node.name or (node.output[0] if node.output else "?")
    label = f"{PLUGIN_OP} node {ident!r}"
    attrs = {a.name: a for a in node.attribute}
    missing = [n for n in CONTRACT_ATTRS if n not in attrs]
    if missing:
        raise AsvpError(f"{label} lacks attribute(s) {', '.join(missing)}; re-create it with asvp defend --mode plugin")
    for name, kind in CONTRACT_ATTRS.items():
        if attrs[name].type != kind:
            want = onnx.AttributeProto.AttributeType.Name(kind)
            got = onnx.AttributeProto.AttributeType.Name(attrs[name].type)
            raise AsvpError(f"{label}: attribute {name} must be {want}, got {got}")
    values = {name: _attr_value(node, attrs[name]) for name in CONTRACT_ATTRS}
    if values["plugin_namespace"] != PLUGIN_NAMESPACE or values["plugin_version"] != PLUGIN_VERSION:
        raise AsvpError(f"{label} asks for plugin {values['plugin_namespace']}::{PLUGIN_OP} version "
                        f"{values['plugin_version']!r}; this asvp provides {PLUGIN_NAMESPACE}::{PLUGIN_OP} "
                        f"version {PLUGIN_VERSION!r}")
    if values["adaptive"] not in (0, 1):
        raise AsvpError(f"{label}: adaptive must be 0 or 1, got {values['adaptive']}")
    if len(node.input) != 1 or len(node.output) != 1:
        raise AsvpError(f"{label} must have exactly one input and one output "
                        f"(has {len(node.input)} and {len(node.output)})")
    try:
        cfg = config_from_attrs(**{n: values[n] for n in KERNEL_ATTRS}, placement=values["placement"]).validate()
    except AsvpError as exc:
        raise AsvpError(f"{label}: {exc}") from None
    return PluginNode(node.name, node.input[0], node.output[0], cfg)


def plugin_nodes(model: onnx.ModelProto) -> list[PluginNode]:
    """Every AsvpPerturb node of the main graph, validated (empty for models without plugin nodes)."""
    return [check_plugin_node(n) for n in model.graph.node if is_plugin_node(n)]


def as_model(model) -> onnx.ModelProto:
    """A ModelProto from a path, serialized bytes or a ModelProto (external data is not loaded)."""
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (bytes, bytearray)):
        try:
            return onnx.load_from_string(bytes(model))
        except Exception as exc:
            raise AsvpError(f"the given bytes are not a readable ONNX model ({type(exc).__name__})") from None
    from asvp.io import require_file

    p = require_file(model, "ONNX model")
    try:
        return onnx.load(str(p), load_external_data=False)
    except Exception as exc:
        raise AsvpError(f"{p} is not a readable ONNX model ({type(exc).__name__})") from None


STANDARD_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "ai.onnx.training", "ai.onnx.preview.training"}


def foreign_custom_ops(model: onnx.ModelProto) -> list[str]:
    """"domain::op" of main-graph nodes that are neither standard ONNX/ORT ops, AsvpPerturb nor local functions."""
    local = {(f.domain, f.name) for f in model.functions}
    found = []
    for n in model.graph.node:
        key = f"{n.domain}::{n.op_type}"
        if n.domain not in STANDARD_DOMAINS and not is_plugin_node(n) and (n.domain, n.op_type) not in local \
                and key not in found:
            found.append(key)
    return found


def has_plugin_nodes(model) -> bool:
    return any(is_plugin_node(n) for n in as_model(model).graph.node)


# ---- ONNX Runtime registration ---------------------------------------------------------------------------

_LOCK = threading.Lock()
_REGISTERED = False


@functools.lru_cache(maxsize=256)
def _cached_config(k: int, h: float, tau: float, adaptive: int) -> AsvpConfig:
    return config_from_attrs(k, h, tau, adaptive)


def asvp_kernel(x: np.ndarray, k: int, h: float, tau: float, adaptive: int, **_ignored) -> np.ndarray:
    """The custom op's body: asvp_exact on one [N, C, H, W] float32 batch with the node's attributes."""
    from asvp.method import asvp_exact_numpy

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


def session_options(options=None, threads: int | None = None):
    """onnxruntime.SessionOptions with the extensions library registered and AsvpPerturb declared.

    Register before the session is created: ONNX Runtime looks custom ops up while it builds the graph.
    """
    import onnxruntime as ort

    register_ort_op()
    so = options if options is not None else ort.SessionOptions()
    if threads is None and options is None:  # like Polygraphy: the CPUs this process may use
        try:
            threads = len(os.sched_getaffinity(0))
        except AttributeError:
            threads = os.cpu_count() or 1
    if threads is not None:
        so.intra_op_num_threads = max(1, int(threads))
    so.register_custom_ops_library(library_path())
    return so


def make_plugin_runner(model, providers=("CPUExecutionProvider",), name: str | None = None):
    """A Polygraphy OnnxrtRunner over a plugin-enabled session (created lazily, on activation)."""
    from asvp.runtime.backends import SessionLoader, AsvpOnnxrtRunner

    shown = "model" if isinstance(model, (bytes, bytearray, onnx.ModelProto)) else os.path.basename(str(model))
    label = name or f"onnxrt-plugin:{shown}"
    return AsvpOnnxrtRunner(SessionLoader(model, providers=providers, plugins=True), expected_provider=providers[0],
                            name=label)

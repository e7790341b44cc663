"""ONNX Runtime sessions and Polygraphy runners over them: the one way asvp builds them.

    sess = SessionFromOnnx("model.onnx")()                      # a loader, called: an InferenceSession
    runner = AsvpOnnxrtRunner(SessionFromOnnx("model.onnx"), expected_provider="CPUExecutionProvider")
    with runner:
        out = runner.infer({input_name: batch})

`SessionFromOnnx` is Polygraphy's loader of the same name with what asvp needs on top: SessionOptions (thread
counts; Polygraphy's own loader cannot take them), the AsvpPerturb custom op registered automatically when the
model has plugin nodes (runtime.engines.plugin_ort), provider names matched like Polygraphy's ("cpu", "cuda"),
and one-line errors. onnxruntime-gpu silently falls back to CPU when CUDA cannot start; `ort_session` and
`AsvpOnnxrtRunner` check the provider that actually runs the session and refuse (MissingDependencyError, exit 3)
rather than report a CPU run as CUDA. Every other module (validation, profiling, the exporter's parity check,
the attacker's served model) builds its sessions here.
"""
from __future__ import annotations

import re

import onnx
from polygraphy import util as pg_util
from polygraphy.backend.base import BaseLoader
from polygraphy.backend.onnxrt import OnnxrtRunner

from asvp.errors import AsvpError, MissingDependencyError, first_line
from asvp.graph_passes.plugin_contract import PLUGIN_DOMAIN, PLUGIN_OP, is_plugin_node, plugin_nodes
from asvp.io import require_file
from asvp.onnx_utils import as_model
from asvp.runtime.engines import plugin_ort

CPU = ("CPUExecutionProvider",)
INSTALL_ORT_GPU = "pip install 'onnxruntime-gpu>=1.18,<1.33' (in place of onnxruntime) with matching CUDA/cuDNN"

_UNREGISTERED_OP = re.compile(r"([\w.\-]*):(\w+)\(-?\d+\) is not a registered function/op")


def _session_error(exc: BaseException) -> AsvpError:
    m = _UNREGISTERED_OP.search(str(exc))
    if m:
        domain, op = m.group(1) or "ai.onnx", m.group(2)
        if (domain, op) == (PLUGIN_DOMAIN, PLUGIN_OP):
            return MissingDependencyError(f"{PLUGIN_DOMAIN}::{PLUGIN_OP} is not registered with this session; create it "
                                          "through asvp.runtime.engines.sessions (SessionFromOnnx / ort_session), "
                                          "which registers the plugin")
        return AsvpError(f"the model uses custom op {domain}::{op}, which neither ONNX Runtime nor an asvp plugin "
                         f"implements (asvp provides {PLUGIN_DOMAIN}::{PLUGIN_OP} only): register that op's custom-op "
                         "library yourself, or re-defend the original model with --mode subgraph")
    return AsvpError(f"ONNX Runtime cannot load the model: {first_line(exc)}")


def _model_source(model):
    if isinstance(model, onnx.ModelProto):
        return model.SerializeToString()
    if isinstance(model, (bytes, bytearray)):
        return bytes(model)
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


def _first_provider(resolved) -> str | None:
    first = resolved[0] if resolved else None
    return first[0] if isinstance(first, tuple) else first


class SessionFromOnnx(BaseLoader):
    """Loader: an onnxruntime.InferenceSession for `model` (path, serialized bytes or ModelProto).

    providers: ONNX Runtime provider names (parts match, as in Polygraphy). threads: intra-op threads (default:
    the CPUs this process may use); inter_op_threads: left to ONNX Runtime unless given. plugins: None = register
    the AsvpPerturb custom op only when the model has plugin nodes (their attributes are checked first, one-line
    errors); True/False force it.
    """

    def __init__(self, model, providers=CPU, *, threads: int | None = None, inter_op_threads: int | None = None,
                 plugins: bool | None = None):
        self.model = model
        self.providers = tuple(providers)
        self.threads = threads
        self.inter_op_threads = inter_op_threads
        self.plugins = plugins

    def call_impl(self):
        import onnxruntime as ort

        providers = resolve_providers(self.providers)
        plugins = self.plugins
        if plugins is None or plugins:
            proto = as_model(self.model)
            found = plugin_nodes(proto)  # validates every node's attributes (one-line errors)
            if plugins is None:
                plugins = bool(found)
        threads = self.threads if self.threads is not None else plugin_ort.default_threads()
        so = plugin_ort.session_options(threads=threads) if plugins else ort.SessionOptions()
        so.intra_op_num_threads = max(1, int(threads))
        if self.inter_op_threads is not None:
            so.inter_op_num_threads = max(1, int(self.inter_op_threads))
        so.log_severity_level = 4  # asvp reports failures itself, in one line
        try:
            return ort.InferenceSession(_model_source(self.model), sess_options=so, providers=list(providers))
        except AsvpError:
            raise
        except Exception as exc:
            raise _session_error(exc) from None


def create_session(model, providers=CPU, plugins: bool | None = None, threads: int | None = None):
    """An onnxruntime.InferenceSession (SessionFromOnnx, called), without the provider check."""
    return SessionFromOnnx(model, providers, plugins=plugins, threads=threads)()


def check_provider(actual: list[str] | tuple[str, ...], expected: str | None, backend: str = "") -> str:
    """The provider that runs the session; MissingDependencyError when ONNX Runtime fell back from `expected`."""
    first = actual[0] if actual else "none"
    if expected and first != expected:
        what = f"backend {backend}" if backend else expected
        raise MissingDependencyError(f"{what} asked for {expected} but ONNX Runtime runs the session on {first} "
                                     f"(the provider failed to start: no usable CUDA device or libraries); "
                                     f"{INSTALL_ORT_GPU}, or use onnxrt-cpu")
    return first


def ort_session(model, providers=CPU, *, plugins: bool | None = None, threads: int | None = None,
                inter_op_threads: int | None = None):
    """An onnxruntime.InferenceSession for `model`, refusing (MissingDependencyError) when the first provider asked
    for is not the one that actually runs the session. Plugin-enabled automatically when the model needs it."""
    resolved = resolve_providers(providers)
    sess = SessionFromOnnx(model, resolved, threads=threads, inter_op_threads=inter_op_threads, plugins=plugins)()
    check_provider(sess.get_providers(), _first_provider(resolved))
    return sess


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


def count_plugin_nodes(model) -> int:
    """AsvpPerturb nodes in an ONNX model (path, bytes or ModelProto)."""
    return sum(1 for n in as_model(model).graph.node if is_plugin_node(n))

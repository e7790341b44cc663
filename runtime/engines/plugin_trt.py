"""Plugin mode on TensorRT: `AsvpPerturb` as a TensorRT plugin through the `tensorrt.plugin` Python API.

TensorRT >= 10.8 ("quickly deployable plugins", `import tensorrt.plugin as trtp`):

    @trtp.register("asvp::AsvpPerturb")   shape/dtype descriptor: output is like the input
    @trtp.autotune(...)                   FP32 in, FP32 out, linear (NCHW) layout
    @trtp.impl(...)                       asvp_exact on torch CUDA tensors that wrap TensorRT's buffers
                                          (torch.as_tensor over __cuda_array_interface__), on TensorRT's stream

The TensorRT ONNX parser maps an unknown node to a plugin by op_type ("AsvpPerturb") and the node attributes
`plugin_namespace` ("asvp") and `plugin_version` ("1"; QDP creators always have version "1"); the ONNX domain is
only a fallback namespace in newer parsers. It then passes the node attributes the creator declares (k, h, tau, adaptive) as plugin fields:
ONNX INT -> INT32, FLOAT -> FLOAT32. Attributes used by `impl` are serialized into the engine, so
deserialising needs only `register_asvp_plugin()` first, in the same process.

Everything importing tensorrt is lazy: importing this module never needs TensorRT. `run_plugin` is what the
JIT `impl` runs: the Triton ASVP kernels (asvp.runtime.engines.kernels.triton_asvp, three launches, no host
sync) when Triton and a CUDA device are there, else `run_plugin_kernel` (torch `asvp_exact`: float64 eigh,
which synchronises with the host). An engine built with the JIT implementation runs only in a Python process
that registered the plugin.

AOT route (UNVERIFIED: written against TensorRT's documented `tensorrt.plugin.aot_impl` API, never run; no
TensorRT or GPU was available): `register_asvp_plugin(aot=True)` also defines `@trtp.aot_impl`, which returns the
PTX of the single-launch `asvp_fused_kernel` (one program per sample; grid (N,), arguments (x, H*W, y)) with
k/h/tau/adaptive compiled in, so the engine embeds the kernel and loads without Python. It covers FP32 linear
NCHW inputs with a static channel count C <= 128. TensorRT needs a creation preference when a plugin has both
implementations: build the network with NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS (or
PREFER_JIT_...). The three-launch kernel sequence cannot be an AOT implementation (one kernel per plugin, no
workspace), so the AOT engine runs the slower fused kernel. See docs/plugin.md.

NB: no `from __future__ import annotations` in this file: tensorrt.plugin inspects the decorated functions'
annotations as real objects (issubclass(annotation, TensorDesc)); stringified annotations would break it.
"""
import threading
from typing import List, Tuple, Union

from asvp.errors import AsvpError, MissingDependencyError
from asvp.graph_passes.plugin_contract import PLUGIN_ID, PLUGIN_NAMESPACE, PLUGIN_OP, PLUGIN_VERSION, config_from_attrs
from asvp.method import asvp_exact
from asvp.runtime.engines.kernels import triton_asvp, triton_compile, triton_env

MIN_TRT_VERSION = (10, 8)
INSTALL_TRT = "pip install 'asvp[tensorrt]' (tensorrt>=10.8,<12: the full builder, which needs an NVIDIA GPU and driver)"

_LOCK = threading.Lock()
_REGISTERED = False
_AOT_DEFINED = False


def parse_version(text: str) -> Tuple[int, ...]:
    """'10.9.0.34' -> (10, 9, 0, 34); non-numeric tails are dropped ('10.8.0rc1' -> (10, 8, 0))."""
    parts = []
    for piece in str(text).split("."):
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        parts.append(int(digits))
        if len(digits) != len(piece):
            break
    return tuple(parts)


def import_tensorrt(need_builder: bool = False):
    """The `tensorrt` module, or a one-line MissingDependencyError saying what to install."""
    try:
        import tensorrt as trt
    except Exception as exc:  # ImportError, or the meta-package failing to find its libraries
        raise MissingDependencyError(f"TensorRT is not installed ({type(exc).__name__}): {INSTALL_TRT}") from None
    if need_builder and not hasattr(trt, "Builder"):
        raise MissingDependencyError(f"this TensorRT package ({getattr(trt, '__version__', '?')}) is a runtime-only "
                                     f"build without the builder: {INSTALL_TRT}")
    return trt


def import_plugin_api():
    """(`tensorrt`, `tensorrt.plugin`) for TensorRT >= 10.8, or MissingDependencyError."""
    trt = import_tensorrt()
    version = getattr(trt, "__version__", "0")
    if parse_version(version) < MIN_TRT_VERSION:
        raise MissingDependencyError(f"TensorRT {version} has no tensorrt.plugin API (needs >= "
                                     f"{'.'.join(map(str, MIN_TRT_VERSION))}): {INSTALL_TRT}")
    try:
        import tensorrt.plugin as trtp
    except Exception as exc:
        raise MissingDependencyError(f"tensorrt.plugin cannot be imported ({type(exc).__name__}: "
                                     f"{str(exc).splitlines()[0] if str(exc) else ''}): {INSTALL_TRT}") from None
    return trt, trtp


def cuda_status() -> Tuple[bool, str]:
    """Whether torch sees a real CUDA device (the plugin's kernel runs through torch on CUDA)."""
    try:
        import torch
    except Exception:  # pragma: no cover - torch is a core dependency
        return False, "torch is not importable"
    if not torch.cuda.is_available():
        build = "a CPU-only torch build" if torch.version.cuda is None else f"torch built for CUDA {torch.version.cuda}"
        return False, f"no CUDA device visible to torch ({build})"
    return True, f"CUDA device {torch.cuda.get_device_name(0)}"


def tensorrt_status() -> Tuple[bool, str]:
    """(available, detail) for the `tensorrt` backend: TensorRT >= 10.8 with its builder, plus a CUDA device."""
    try:
        trt = import_tensorrt(need_builder=True)
        import_plugin_api()
    except MissingDependencyError as exc:
        return False, str(exc)
    ok, detail = cuda_status()
    if not ok:
        return False, f"TensorRT {trt.__version__} is installed but {detail}"
    return True, f"TensorRT {trt.__version__} on {detail}"


def describe_tensorrt() -> str:
    trt = import_tensorrt()
    ok, detail = cuda_status()
    return f"TensorRT {trt.__version__}" + (f" ({detail})" if ok else "")


def require_plugin_runtime() -> None:
    """MissingDependencyError unless TensorRT's plugin API and a CUDA device are both there."""
    import_plugin_api()
    ok, detail = cuda_status()
    if not ok:
        raise MissingDependencyError(f"the TensorRT AsvpPerturb plugin runs its kernel through torch on CUDA, but {detail}")


# ---- the kernel (pure torch; CPU-testable) -----------------------------------------------------------------

def run_plugin_kernel(inp, out, k: int, h: float, tau: float, adaptive: int) -> None:
    """Write ASVP(inp) into `out` (both torch tensors [N, C, H, W] on the same device, same shape)."""
    if tuple(inp.shape) != tuple(out.shape):
        raise ValueError(f"{PLUGIN_OP}: output shape {tuple(out.shape)} differs from input shape {tuple(inp.shape)}")
    cfg = config_from_attrs(k, h, tau, adaptive)
    out.copy_(asvp_exact(inp, cfg).to(out.dtype))


def run_plugin(inp, out, k: int, h: float, tau: float, adaptive: int) -> str:
    """What the JIT impl runs: the Triton kernel when it takes `inp` (`triton_asvp.usable_for`: CUDA, C <= 128,
    Triton installed), else `run_plugin_kernel`.

    Returns the path taken, "triton" or "torch". Both follow `config_from_attrs` (h and tau rounded to float32).
    """
    if triton_asvp.usable_for(inp):
        cfg = config_from_attrs(k, h, tau, adaptive)
        if tuple(inp.shape) != tuple(out.shape):
            raise ValueError(f"{PLUGIN_OP}: output shape {tuple(out.shape)} differs from input shape {tuple(inp.shape)}")
        triton_asvp.asvp_triton(inp, *triton_asvp.config_args(cfg), out=out)
        return "triton"
    run_plugin_kernel(inp, out, k, h, tau, adaptive)
    return "torch"


def _constant(expr) -> int:
    """The value of a build-time-constant tensorrt.plugin ShapeExpr (a property or a method, by version)."""
    if not expr.is_constant:
        raise AsvpError(f"the {PLUGIN_OP} AOT kernel needs a static channel count; this network's C is dynamic")
    value = expr.constant_value
    return int(value() if callable(value) else value)


def aot_kernel(trtp, inp0, k: int, h: float, tau: float, adaptive: int, compile_fn=None):
    """(kernel name, PTX, KernelLaunchParams, SymIntExprs) for `tensorrt.plugin.aot_impl` (UNVERIFIED with TensorRT).

    The fused Triton kernel is compiled for this node's C and attributes (TensorRT does not serialise AOT plugin
    attributes, so they are compile-time constants); grid (N,), block num_warps * 32, one extra int32 argument
    H * W between the input and the output pointer: the argument order TensorRT uses.
    """
    dims = inp0.shape_expr
    cfg = config_from_attrs(k, h, tau, adaptive)
    compile_fn = compile_fn or triton_compile.compile_fused
    kern = compile_fn(_constant(dims[1]), *triton_asvp.config_args(cfg), dtype="fp32")
    params = trtp.KernelLaunchParams()
    params.grid_x = trtp.SymInt32(dims[0])
    params.block_x = kern.num_warps * 32
    params.shared_mem = kern.shared
    extra = trtp.SymIntExprs(1)
    extra[0] = trtp.SymInt32(dims[2] * dims[3])
    return kern.name, kern.ptx, params, extra


# ---- registration ------------------------------------------------------------------------------------------

def _define(trtp) -> None:
    """Register descriptor, autotune and the JIT impl with tensorrt.plugin (called once per process)."""

    @trtp.register(PLUGIN_ID)
    def asvp_desc(inp0: trtp.TensorDesc, k: int, h: float, tau: float, adaptive: int) -> trtp.TensorDesc:
        return inp0.like()

    @trtp.autotune(PLUGIN_ID)
    def asvp_autotune(inp0: trtp.TensorDesc, outputs: Tuple[trtp.TensorDesc]) -> List[trtp.AutoTuneCombination]:
        # FP32 only: the eigendecomposition runs in float64 anyway; under --fp16 TensorRT inserts the casts.
        return [trtp.AutoTuneCombination("FP32, FP32", "LINEAR")]

    @trtp.impl(PLUGIN_ID)
    def asvp_impl(inp0: trtp.Tensor, k: int, h: float, tau: float, adaptive: int,
                  outputs: Tuple[trtp.Tensor], stream: int) -> None:
        import torch

        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            x = torch.as_tensor(inp0, device="cuda")
            y = torch.as_tensor(outputs[0], device="cuda")
            run_plugin(x, y, k, h, tau, adaptive)


def _define_aot(trtp) -> None:
    """Add the AOT implementation (TensorRT >= 10.9, where tensorrt.plugin has aot_impl). UNVERIFIED."""

    @trtp.aot_impl(PLUGIN_ID)
    def asvp_aot_impl(inp0: trtp.TensorDesc, k: int, h: float, tau: float, adaptive: int,
                      outputs: Tuple[trtp.TensorDesc], tactic: int
                      ) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymIntExprs]:
        return aot_kernel(trtp, inp0, k, h, tau, adaptive)


def plugin_registered() -> bool:
    """Whether TensorRT's plugin registry has asvp::AsvpPerturb v1 (False when TensorRT is absent)."""
    try:
        trt = import_tensorrt()
    except MissingDependencyError:
        return False
    registry = trt.get_plugin_registry()
    getter = getattr(registry, "get_creator", None) or getattr(registry, "get_plugin_creator")
    try:
        return getter(PLUGIN_OP, PLUGIN_VERSION, PLUGIN_NAMESPACE) is not None
    except Exception:
        return False


def register_asvp_plugin(aot: bool = False) -> str:
    """Register the AsvpPerturb TensorRT plugin (idempotent); returns its id "asvp::AsvpPerturb".

    Call before parsing an ONNX model with AsvpPerturb nodes and before deserialising an engine built from one.
    aot=True also defines the AOT implementation (UNVERIFIED; needs tensorrt.plugin.aot_impl and Triton; build the
    network with NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS). Raises MissingDependencyError (one
    line) when TensorRT >= 10.8, or for aot=True the AOT API or Triton, is missing.
    """
    global _REGISTERED, _AOT_DEFINED
    with _LOCK:
        if not _REGISTERED:
            _, trtp = import_plugin_api()
            namespace = getattr(trtp.op, PLUGIN_NAMESPACE, None) if hasattr(trtp, "op") else None
            if namespace is None or not hasattr(namespace, PLUGIN_OP):  # not defined by an earlier import/reload
                _define(trtp)
            _REGISTERED = True
        if aot and not _AOT_DEFINED:
            trt, trtp = import_plugin_api()
            if not hasattr(trtp, "aot_impl"):
                raise MissingDependencyError(f"TensorRT {getattr(trt, '__version__', '?')} has no "
                                             f"tensorrt.plugin.aot_impl (AOT plugins need TensorRT >= 10.9): {INSTALL_TRT}")
            triton_env.require_triton()  # the AOT impl compiles the Triton kernel at build time
            _define_aot(trtp)
            _AOT_DEFINED = True
    return PLUGIN_ID

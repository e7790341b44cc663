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

Everything importing tensorrt is lazy: importing this module never needs TensorRT. The kernel math is
`run_plugin_kernel`, a plain torch function tested on CPU. This is the JIT (Python) implementation: an engine
that contains it runs only in a Python process that registered the plugin. See docs/plugin.md for the
AOT / C++ IPluginV3 route (not implemented here).

NB: no `from __future__ import annotations` in this file: tensorrt.plugin inspects the decorated functions'
annotations as real objects (issubclass(annotation, TensorDesc)); stringified annotations would break it.
"""
import threading
from typing import List, Tuple

from asvp.errors import MissingDependencyError
from asvp.graph_passes.plugin_contract import PLUGIN_ID, PLUGIN_NAMESPACE, PLUGIN_OP, PLUGIN_VERSION, config_from_attrs
from asvp.method import asvp_exact

MIN_TRT_VERSION = (10, 8)
INSTALL_TRT = "pip install 'asvp[tensorrt]' (tensorrt>=10.8,<12: the full builder, which needs an NVIDIA GPU and driver)"

_LOCK = threading.Lock()
_REGISTERED = False


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


# ---- registration ------------------------------------------------------------------------------------------

def _define(trtp) -> None:
    """Register descriptor, autotune and impl with tensorrt.plugin (called once per process)."""

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
            run_plugin_kernel(x, y, k, h, tau, adaptive)


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


def register_asvp_plugin() -> str:
    """Register the AsvpPerturb TensorRT plugin (idempotent); returns its id "asvp::AsvpPerturb".

    Call before parsing an ONNX model with AsvpPerturb nodes and before deserialising an engine built from one.
    Raises MissingDependencyError (one line) when TensorRT >= 10.8 is not installed.
    """
    global _REGISTERED
    with _LOCK:
        if _REGISTERED:
            return PLUGIN_ID
        _, trtp = import_plugin_api()
        namespace = getattr(trtp.op, PLUGIN_NAMESPACE, None) if hasattr(trtp, "op") else None
        if namespace is None or not hasattr(namespace, PLUGIN_OP):  # not defined by an earlier import/reload
            _define(trtp)
        _REGISTERED = True
    return PLUGIN_ID

"""Reduced-precision engines (issue 26.2): which layers `asvp build --fp16/--bf16/--int8` keeps in fp32, and how.

Under a reduced precision TensorRT may run any layer in fp16/bf16/int8. By default asvp pins the layers that
TensorRT's ONNX parser makes from the ASVP subgraph's nodes (named `asvp/<n>/...` by the graph passes) and from
the fingerprint mark's nodes (`asvp_fp/...`) to fp32: a Polygraphy PostprocessNetwork sets each such layer's
`precision` and the type of each of its floating outputs to `trt.DataType.FLOAT`, and the builder config gets
`precision_constraints="obey"` (BuilderFlag.OBEY_PRECISION_CONSTRAINTS). `asvp_precision="reduced"` leaves them
to TensorRT. The AsvpPerturb plugin is not touched: it declares fp32 I/O itself (runtime.engines.plugin_trt).

`--int8` is for explicitly quantized models only (QuantizeLinear/DequantizeLinear nodes): without a calibrator,
TensorRT would have nothing to set int8 scales from.

UNVERIFIED: written against TensorRT 10's Python API (ILayer.precision, ILayer.set_output_type, LayerType,
DataType) and Polygraphy's PostprocessNetwork; never run with a real TensorRT. Layers the parser names after
something other than their node or output tensor are not found; the sidecar lists what was pinned.
"""
from __future__ import annotations

from dataclasses import dataclass

import onnx

from asvp.constants import ASVP_PRECISIONS
from asvp.errors import AsvpError
from asvp.graph_passes.mark import PREFIX as MARK_PREFIX
from asvp.graph_passes.select import ASVP_PREFIX
from asvp.options import EngineOptions

VERIFIED = False  # no real TensorRT has built an engine with these constraints yet
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class PinGroup:
    """Nodes whose layers are pinned to fp32: the name prefix the graph passes give them, and why."""

    name: str
    prefix: str
    reason: str


PIN_GROUPS = (
    PinGroup("asvp", ASVP_PREFIX,
             "ASVP subgraph: its Gram-matrix and power-iteration products can leave fp16's range (max 65504) on "
             "large inputs or activations, and its top-k directions need fp32 accuracy"),
    PinGroup("mark", MARK_PREFIX,
             "fingerprint mark: its additive delta is small against the feature, of the order of fp16 rounding, "
             "so computing it in reduced precision could wash it out"),
)


def pinnable_nodes(model: onnx.ModelProto) -> dict[str, int]:
    """Number of ONNX nodes per pin group (by name prefix), e.g. {"asvp": 96, "mark": 0}."""
    return {g.name: sum(n.name.startswith(g.prefix) for n in model.graph.node) for g in PIN_GROUPS}


def qdq_nodes(model: onnx.ModelProto) -> int:
    """Number of QuantizeLinear/DequantizeLinear nodes in the main graph (an explicitly quantized model has some)."""
    return sum(n.op_type in QDQ_OPS for n in model.graph.node)


def check_options(opts: EngineOptions, model_path, qdq: int) -> None:
    """One-line AsvpError (exit 2, before TensorRT is touched) for precision options that cannot be honoured."""
    if opts.asvp_precision not in ASVP_PRECISIONS:
        raise AsvpError(f"--asvp-precision must be one of {', '.join(ASVP_PRECISIONS)}, not {opts.asvp_precision!r}")
    if opts.asvp_precision != ASVP_PRECISIONS[0] and not opts.reduced:
        raise AsvpError(f"--asvp-precision {opts.asvp_precision} needs a reduced precision (--fp16, --bf16 or --int8); "
                        "an fp32 engine runs everything in fp32")
    if opts.int8 and not qdq:
        raise AsvpError(f"--int8 is for explicitly quantized models, and {model_path} has no QuantizeLinear/"
                        "DequantizeLinear nodes: quantize it first (Q/DQ nodes), or build with --fp16 or --bf16")


def pins_wanted(opts: EngineOptions, pinnable: dict[str, int]) -> bool:
    """Whether this build pins layers: a reduced precision, ASVP layers kept in fp32, and something to pin."""
    return opts.reduced and opts.asvp_precision == ASVP_PRECISIONS[0] and any(pinnable.values())


def group_of(layer) -> PinGroup | None:
    """The pin group of a TensorRT layer: its name, or one of its output tensors' names, starts with the prefix.

    The ONNX parser names a node's layer after the node and its output tensors after the node's outputs (both keep
    the graph passes' prefixes); matching either catches helper layers named after their tensors."""
    names = [layer.name] + [layer.get_output(i).name for i in range(layer.num_outputs)]
    for g in PIN_GROUPS:
        if any(str(n).startswith(g.prefix) for n in names):
            return g
    return None


def _float_types(trt) -> tuple:
    return tuple(getattr(trt.DataType, t) for t in ("FLOAT", "HALF", "BF16") if hasattr(trt.DataType, t))


def pinnable_layer(trt, layer) -> bool:
    """A layer whose precision asvp may set: not a plugin (it declares its own types), not a shape computation,
    and with at least one floating output (integer and boolean tensors have no precision to choose)."""
    kind = str(getattr(layer.type, "name", layer.type)).upper()
    if "PLUGIN" in kind or kind.endswith("SHAPE"):
        return False
    floats = _float_types(trt)
    return any(layer.get_output(i).dtype in floats for i in range(layer.num_outputs))


def pin_layers(trt, network) -> list[dict]:
    """Set precision and floating output types to fp32 on every pinnable ASVP/mark layer; returns what was pinned."""
    floats = _float_types(trt)
    pinned = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        group = group_of(layer)
        if group is None or not pinnable_layer(trt, layer):
            continue
        layer.precision = trt.DataType.FLOAT
        for j in range(layer.num_outputs):
            if layer.get_output(j).dtype in floats:
                layer.set_output_type(j, trt.DataType.FLOAT)
        pinned.append({"layer": layer.name, "group": group.name})
    return pinned


def pin_network(network_loader, trt, pinned: list, model_path):
    """A Polygraphy PostprocessNetwork over `network_loader` that pins the ASVP/mark layers (appending them to
    `pinned`); refuses, in one line, a network where none of them is found (the model has such nodes: the plan
    checked), rather than building an engine whose defence runs in reduced precision unannounced."""
    from polygraphy.backend.trt import PostprocessNetwork

    def pin(network):
        pinned.extend(pin_layers(trt, network))
        if not pinned:
            raise AsvpError(f"TensorRT's network of {model_path} has no layer named after its ASVP or fingerprint "
                            "nodes, so they cannot be kept in fp32; build with --asvp-precision reduced to let them "
                            "run in the reduced precision")

    return PostprocessNetwork(network_loader, pin, name="asvp-pin-fp32")


def record(opts: EngineOptions, pinnable: dict[str, int], pinned: list[dict]) -> dict:
    """The sidecar's precision section beyond the flags: where the ASVP/mark layers run, what was pinned and why."""
    pinning = pins_wanted(opts, pinnable)
    groups = {g.name: {"onnx_nodes": pinnable.get(g.name, 0),
                       "layers": [p["layer"] for p in pinned if p["group"] == g.name],
                       "reason": g.reason} for g in PIN_GROUPS if pinnable.get(g.name)}
    return {"bf16": bool(opts.bf16), "asvp_precision": opts.asvp_precision,
            "constraints": "obey" if pinning else None, "pinned_fp32": groups if pinning else {},
            "verified": VERIFIED}

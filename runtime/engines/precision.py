"""Reduced-precision engines (issue 26.2): which layers `asvp build --fp16/--bf16/--int8` keeps in fp32, and how.

Under a reduced precision TensorRT may run any layer in fp16/bf16/int8. By default asvp pins the layers that
TensorRT's ONNX parser makes from the ASVP subgraph's nodes (named `asvp/<n>/...` by the graph passes) and from
the fingerprint mark's nodes (`asvp_fp/...`) to fp32: a Polygraphy PostprocessNetwork sets each such layer's
`precision` and the type of each of its floating outputs to `trt.DataType.FLOAT`, and the builder config gets
`precision_constraints="obey"` (BuilderFlag.OBEY_PRECISION_CONSTRAINTS). `asvp_precision="reduced"` leaves the
passes over the feature (the scaled Gram and the apply, graph_passes.subgraph.is_feature_pass) and the mark to
TensorRT, and still pins the ASVP block's small C x C solve to fp32: it raises the normalised Gram to high powers and
leaves fp16's range even when the feature passes do not (docs/method.md, "Reduced precision"). The AsvpPerturb plugin is not touched: it declares fp32 I/O itself (runtime.engines.plugin_trt).

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
from asvp.graph_passes.subgraph import is_feature_pass
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
# Under asvp_precision="reduced": only the ASVP block's C x C solve stays in fp32.
SOLVE_GROUP = PinGroup("asvp-solve", ASVP_PREFIX,
                       "ASVP's C x C solve: it raises the normalised Gram matrix to high powers, which leaves fp16's "
                       "range whatever the feature's scale; the passes over the feature are scaled and may run reduced")


def in_solve(name: str) -> bool:
    """Whether a node (or its output tensor, `node:k`) named `name` is in an ASVP block but not a pass over the feature.
    A name the subgraph did not emit (a parser's helper tensor) counts as solve: pinning too much is the safe side."""
    if not name.startswith(ASVP_PREFIX):
        return False
    parts = name.split(":")[0].split("/")
    return len(parts) < 3 or not is_feature_pass("/".join(parts), "/".join(parts[:2]))


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


def reduced_asvp(opts: EngineOptions) -> bool:
    """Whether the ASVP feature passes and the mark may run in the engine's reduced precision."""
    return opts.asvp_precision != ASVP_PRECISIONS[0]


def pins_wanted(opts: EngineOptions, pinnable: dict[str, int]) -> bool:
    """Whether this build pins layers: a reduced precision and something to pin (every ASVP and mark layer by
    default; only the ASVP solve under asvp_precision="reduced")."""
    if not opts.reduced:
        return False
    return bool(pinnable.get("asvp")) if reduced_asvp(opts) else any(pinnable.values())


def group_of(layer, reduced: bool = False) -> PinGroup | None:
    """The pin group of a TensorRT layer: its name, or one of its output tensors' names, starts with the prefix
    (`reduced`: only the ASVP solve's layers have one).

    The ONNX parser names a node's layer after the node and its output tensors after the node's outputs (both keep
    the graph passes' prefixes); matching either catches helper layers named after their tensors."""
    names = [layer.name] + [layer.get_output(i).name for i in range(layer.num_outputs)]
    if reduced:
        return SOLVE_GROUP if any(in_solve(str(n)) for n in names) else None
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


def pin_layers(trt, network, reduced: bool = False) -> list[dict]:
    """Set precision and floating output types to fp32 on every pinnable ASVP/mark layer (`reduced`: the ASVP
    solve's only); returns what was pinned."""
    floats = _float_types(trt)
    pinned = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        group = group_of(layer, reduced)
        if group is None or not pinnable_layer(trt, layer):
            continue
        layer.precision = trt.DataType.FLOAT
        for j in range(layer.num_outputs):
            if layer.get_output(j).dtype in floats:
                layer.set_output_type(j, trt.DataType.FLOAT)
        pinned.append({"layer": layer.name, "group": group.name})
    return pinned


def pin_network(network_loader, trt, pinned: list, model_path, reduced: bool = False):
    """A Polygraphy PostprocessNetwork over `network_loader` that pins the ASVP/mark layers (appending them to
    `pinned`); refuses, in one line, a network where none of them is found (the model has such nodes: the plan
    checked), rather than building an engine whose defence runs in reduced precision unannounced."""
    from polygraphy.backend.trt import PostprocessNetwork

    def pin(network):
        pinned.extend(pin_layers(trt, network, reduced))
        if not pinned:
            raise AsvpError(f"TensorRT's network of {model_path} has no layer named after its ASVP or fingerprint "
                            "nodes, so they cannot be kept in fp32; build with --asvp-precision reduced to let them "
                            "run in the reduced precision")

    return PostprocessNetwork(network_loader, pin, name="asvp-pin-fp32")


def record(opts: EngineOptions, pinnable: dict[str, int], pinned: list[dict]) -> dict:
    """The sidecar's precision section beyond the flags: where the ASVP/mark layers run, what was pinned and why."""
    pinning = pins_wanted(opts, pinnable)
    wanted = ((SOLVE_GROUP, pinnable.get("asvp", 0)),) if reduced_asvp(opts) else \
        tuple((g, pinnable.get(g.name, 0)) for g in PIN_GROUPS)
    groups = {g.name: {"onnx_nodes": n, "layers": [p["layer"] for p in pinned if p["group"] == g.name],
                       "reason": g.reason} for g, n in wanted if n}
    return {"bf16": bool(opts.bf16), "asvp_precision": opts.asvp_precision,
            "constraints": "obey" if pinning else None, "pinned_fp32": groups if pinning else {},
            "verified": VERIFIED}

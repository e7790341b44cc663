"""General graph-surgery functions shared by the passes that edit a model (graph_passes.defend inserts ASVP,
graph_passes.mark inserts the fingerprint mark): rewiring consumers to a new tensor, giving an edited model the
original's header and metadata, and the structural ONNX check every edited model must pass.

    y = ...                                   # a new tensor computed from x by nodes named prefix + "..."
    rewire_consumers(graph, x, y, prefix)     # every other reader of x (and the graph outputs) reads y
    graph.cleanup().toposort()
    out = gs.export_onnx(graph)
    finalize_like(out, model, plugin=False)
    check_graph(out, "marked model")
"""
from __future__ import annotations

import re

import onnx
import onnx_graphsurgeon as gs

from asvp.errors import AsvpError
from asvp.graph_passes import plugin_contract
from asvp.onnx_utils import capped_ir_version, check_model

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def default_opset(model: onnx.ModelProto) -> int:
    """The version of the default-domain ONNX opset the model imports; AsvpError when it imports none."""
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return o.version
    raise AsvpError("the model imports no default-domain opset")


def output_dims(shape: tuple, fresh: str) -> list:
    """Dims for a new tensor: ints and readable symbolic names kept, anything else (e.g. "floor(H/2 - 1/2) + 1")
    becomes the symbol f"{fresh}_d{axis}"."""
    return [d if isinstance(d, int) or (isinstance(d, str) and _IDENT.match(d)) else f"{fresh}_d{axis}"
            for axis, d in enumerate(shape)]


def next_free_index(names, pattern: re.Pattern) -> int:
    """One past the largest integer that `pattern`'s first group captures in `names` (0 when none matches): the
    next free block or output number."""
    used = [int(m.group(1)) for n in names if (m := pattern.match(n))]
    return max(used, default=-1) + 1


def rewire_consumers(graph: gs.Graph, x: gs.Variable, y: gs.Variable, block_prefix: str) -> str | None:
    """Every consumer of x outside the new block (and the graph outputs) reads y instead.

    If x is a graph output, y takes over its name and x is renamed; returns x's new name then, else None."""
    for node in list(x.outputs):
        if node.name.startswith(block_prefix):
            continue
        for i, t in enumerate(node.inputs):
            if t is x:
                node.inputs[i] = y
    if any(t is x for t in graph.outputs):
        graph.outputs = [y if t is x else t for t in graph.outputs]
        original = x.name
        x.name = f"{block_prefix}clean:0"
        y.name = original
        return x.name
    return None


def finalize_like(out: onnx.ModelProto, original: onnx.ModelProto, plugin: bool) -> None:
    """Give an edited model the original's IR version (capped, never below its opsets' minimum), producer, doc
    string, opsets and metadata."""
    out.producer_name = original.producer_name or "asvp"
    out.producer_version = original.producer_version
    out.doc_string = original.doc_string
    del out.opset_import[:]
    out.opset_import.extend(original.opset_import)
    if plugin:
        plugin_contract.ensure_domain(out)
    out.ir_version = capped_ir_version(out, original.ir_version)
    del out.metadata_props[:]
    out.metadata_props.extend(original.metadata_props)


def check_graph(model: onnx.ModelProto, what: str = "defended model") -> None:
    """The structural check of an edited model: onnx.checker (full) and strict ONNX shape inference; AsvpError on
    failure. (Not the fingerprint's statistical test, runtime.fingerprint.verify.)"""
    check_model(model, what)
    try:
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AsvpError(f"{what} fails ONNX shape inference: {first}") from None

"""Which feature nodes `asvp defend` perturbs: selector syntax and the automatic default.

Selectors (`--nodes`, `api.defend(nodes=...)`); each selects one or more feature nodes:

    auto              the automatic default (below); also what no selector at all means
    NAME              the node with exactly this name (as `asvp nodes` lists it), or else the node whose
                      output tensor has exactly this name
    re:PATTERN        every candidate whose node name matches the regular expression (re.search)
    OP#I              the I-th candidate (0-based) of operator type OP among the candidates in topological
                      order; negative I counts from the end: Conv#0 = first Conv, Relu#-1 = last Relu

Candidates are the nodes `asvp nodes` lists (graph_passes.candidates: rank-4 float outputs with >= 4 channels,
ASVP's own nodes excluded). NAME may also name a node whose output is a graph output (inline placement then
perturbs that output too). The selected feature must be rank 4 with more channels than k.

Automatic default: the LAST candidate (in topological order) among those with the MOST channels, excluding
graph outputs. That is the end of the widest stage of the trunk: the features every later layer reads and
the most channels to spread the singular values over. For the bundled teachers: sr /Add (global residual sum
before the upsampler, C=32), lowlight /mid/mid.2/Relu (U-Net bottleneck, C=96), underwater /Relu (end of the
residual body, C=32), dehaze /Concat_2 (the 64-channel concatenation read by the K-estimator, C=64),
derain /Relu_1 (the ReLU after the dilated body, C=32).
"""
from __future__ import annotations

import re

import onnx

from asvp.errors import AsvpError
from asvp.graph_passes.candidates import FeatureNode, MIN_CHANNELS, feature_candidates, symbolic_shapes
from asvp.graph_passes.plugin_contract import PLUGIN_OP, identity_surrogate

ASVP_PREFIX = "asvp/"  # every node asvp inserts is named asvp/<n>/...
AUTO = "auto"
_OP_INDEX = re.compile(r"^([A-Za-z][A-Za-z0-9_]*)#(-?\d+)$")


def is_asvp_node(node: onnx.NodeProto) -> bool:
    return node.name.startswith(ASVP_PREFIX) or node.op_type == PLUGIN_OP


def candidates(model: onnx.ModelProto) -> list[FeatureNode]:
    """Feature candidates, without ASVP's own inserted nodes."""
    return [c for c in feature_candidates(identity_surrogate(model)) if not is_asvp_node(model.graph.node[c.index])]


def _nodes_hint() -> str:
    return "list the candidate feature nodes with `asvp nodes MODEL` (or asvp.api.list_nodes)"


def automatic(cands: list[FeatureNode]) -> FeatureNode:
    if not cands:
        raise AsvpError(f"the model has no candidate feature node (rank-4 float output with >= {MIN_CHANNELS} channels)")
    widest = max(c.channels for c in cands)
    return [c for c in cands if c.channels == widest][-1]


def _by_name(model: onnx.ModelProto, sel: str, cands: list[FeatureNode], shapes: dict | None) -> tuple[FeatureNode, dict]:
    for c in cands:
        if c.name == sel:
            return c, shapes
    for c in cands:
        if c.output == sel:
            return c, shapes
    for i, node in enumerate(model.graph.node):
        if node.name == sel or (node.output and node.output[0] == sel):
            if is_asvp_node(node):
                raise AsvpError(f"node {node.name!r} is part of an inserted ASVP block, not a feature of the model")
            shapes = shapes if shapes is not None else symbolic_shapes(identity_surrogate(model))
            shape = shapes.get(node.output[0])
            if shape is None:
                raise AsvpError(f"node {node.name!r} ({node.op_type}) has no float tensor output of known shape; "
                                f"ASVP needs a rank-4 float32 NCHW feature; {_nodes_hint()}")
            if len(shape) != 4:
                raise AsvpError(f"node {node.name!r} ({node.op_type}) outputs a rank-{len(shape)} tensor {list(shape)}; "
                                f"ASVP needs a rank-4 NCHW feature; {_nodes_hint()}")
            if not isinstance(shape[1], int):
                raise AsvpError(f"node {node.name!r} has a dynamic channel dimension ({shape[1]!r}); ASVP needs a fixed C")
            return FeatureNode(i, node.name, node.op_type, node.output[0], tuple(shape), shape[1]), shapes
    raise AsvpError(f"no node or tensor named {sel!r} in the model; {_nodes_hint()}")


def resolve(model: onnx.ModelProto, selectors=None) -> list[FeatureNode]:
    """The feature nodes the selectors name, in topological order, without duplicates."""
    if isinstance(selectors, str):
        selectors = [selectors]
    selectors = [s for s in (selectors or []) if s is not None]
    cands = candidates(model)
    if not selectors:
        selectors = [AUTO]
    chosen: dict[str, FeatureNode] = {}
    shapes = None
    for raw in selectors:
        if not isinstance(raw, str) or not raw.strip():
            raise AsvpError(f"empty or invalid node selector {raw!r}; {_nodes_hint()}")
        sel = raw.strip()
        if sel == AUTO:
            found = [automatic(cands)]
        elif sel.startswith("re:"):
            try:
                pattern = re.compile(sel[3:])
            except re.error as exc:
                raise AsvpError(f"invalid regular expression in node selector {sel!r}: {exc}") from None
            found = [c for c in cands if pattern.search(c.name)]
            if not found:
                raise AsvpError(f"no candidate feature node matches {sel!r}; {_nodes_hint()}")
        elif (m := _OP_INDEX.match(sel)) and not any(c.name == sel for c in cands):
            op, idx = m.group(1), int(m.group(2))
            of_op = [c for c in cands if c.op_type == op]
            if not of_op:
                raise AsvpError(f"no candidate feature node of type {op!r} (selector {sel!r}); {_nodes_hint()}")
            if not -len(of_op) <= idx < len(of_op):
                raise AsvpError(f"{sel!r}: there are {len(of_op)} {op} candidates (indices 0..{len(of_op) - 1}); {_nodes_hint()}")
            found = [of_op[idx]]
        else:
            node, shapes = _by_name(model, sel, cands, shapes)
            found = [node]
        for f in found:
            chosen.setdefault(f.name or f.output, f)
    return sorted(chosen.values(), key=lambda f: f.index)


def check_feature(f: FeatureNode, k: int) -> None:
    """Refuse features ASVP cannot perturb with this k."""
    if len(f.shape) != 4:
        raise AsvpError(f"node {f.name!r} outputs a rank-{len(f.shape)} tensor; ASVP needs a rank-4 NCHW feature")
    if f.channels <= k:
        raise AsvpError(f"node {f.name!r} has {f.channels} channels; k={k} must be smaller than the channel count "
                        f"(choose a smaller --k or another node)")

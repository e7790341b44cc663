"""Which feature nodes `asvp defend` perturbs: selector syntax and the automatic default.

Selectors (`--nodes`, `api.defend(nodes=...)`); each selects one or more feature nodes:

    auto              the automatic default (below); also what no selector at all means
    NAME              the node with exactly this name (as `asvp nodes` lists it), or else the node whose
                      output tensor has exactly this name
    re:PATTERN        every candidate whose node name matches the regular expression (re.search)
    OP#I              the I-th candidate (0-based) of operator type OP among the candidates in topological
                      order; negative I counts from the end: Conv#0 = first Conv, Relu#-1 = last Relu

Candidates are the nodes `asvp nodes` lists: the model's spatial feature maps (graph_passes.candidates states the
rule: computed from the image input, [N, C, H', W'] with N the batch, C fixed and >= 4, H'/W' following the
input's height/width), ASVP's own nodes excluded. NAME may also name a node whose output is a graph output
(inline placement then perturbs that output too). A NAME that is not a candidate (a weight, an attention tensor,
a token sequence) is refused with the reason; `force_nodes=True` (`defend --force-nodes`) takes it anyway if it is
a rank-4 float tensor with a fixed channel count, for experts. The selected feature must have more channels than k.

Automatic default: among the candidates with the MOST channels, those at the COARSEST resolution (smallest
H'*W' relative to the input), and of these the LAST (in topological order); graph outputs excluded. That is the
end of the widest, deepest stage of the trunk: the features every later layer reads and the most channels to
spread the singular values over. (The coarsest-resolution tie-break keeps a U-Net's bottleneck ahead of a skip
concatenation of the same width.) For the bundled teachers: sr /Add (global residual sum
before the upsampler, C=32), lowlight /mid/mid.2/Relu (U-Net bottleneck, C=96), underwater /Relu (end of the
residual body, C=32), dehaze /Concat_2 (the 64-channel concatenation read by the K-estimator, C=64),
derain /Relu_1 (the ReLU after the dilated body, C=32).
"""
from __future__ import annotations

import re

import onnx

from asvp.errors import AsvpError
from asvp.graph_passes.candidates import Analysis, FeatureNode, MIN_CHANNELS, analyse, classify
from asvp.graph_passes.plugin_contract import PLUGIN_OP, identity_surrogate

ASVP_PREFIX = "asvp/"  # every node asvp inserts is named asvp/<n>/...
AUTO = "auto"
_OP_INDEX = re.compile(r"^([A-Za-z][A-Za-z0-9_]*)#(-?\d+)$")


def is_asvp_node(node: onnx.NodeProto) -> bool:
    return node.name.startswith(ASVP_PREFIX) or node.op_type == PLUGIN_OP


def _analysis(model: onnx.ModelProto, input_name: str | None) -> tuple[list[FeatureNode], Analysis]:
    found = analyse(identity_surrogate(model), input_name=input_name)
    return [c for c in found.candidates() if not is_asvp_node(model.graph.node[c.index])], found


def candidates(model: onnx.ModelProto, input_name: str | None = None) -> list[FeatureNode]:
    """Feature candidates, without ASVP's own inserted nodes; a model without any is refused with the reason (an
    empty list would read as "nothing to see"). input_name: the image input (default: detected)."""
    cands, found = _analysis(model, input_name)
    if not cands:
        raise AsvpError(_no_candidates(found.none_reason()))
    return cands


def _nodes_hint() -> str:
    return "list the candidate feature nodes with `asvp nodes MODEL` (or asvp.api.list_nodes)"


def _no_candidates(reason: str | None) -> str:
    return (f"the model has no candidate feature map (computed from the image, N,C,H,W with C >= {MIN_CHANNELS} "
            f"fixed and H, W following the input's){': ' + reason if reason else ''}; see `asvp nodes --help`")


def automatic(cands: list[FeatureNode], reason: str | None = None) -> FeatureNode:
    """The automatic choice (this module's docstring); `reason`: why there is no candidate, for the error."""
    if not cands:
        raise AsvpError(_no_candidates(reason))
    widest = max(c.channels for c in cands)
    wide = [c for c in cands if c.channels == widest]
    coarsest = min(c.area for c in wide)
    return [c for c in wide if c.area == coarsest][-1]


def _by_name(model: onnx.ModelProto, sel: str, cands: list[FeatureNode], input_name: str | None,
             force: bool) -> FeatureNode:
    for c in cands:
        if c.name == sel:
            return c
    for c in cands:
        if c.output == sel:
            return c
    for i, node in enumerate(model.graph.node):
        if node.name == sel or (node.output and node.output[0] == sel):
            if is_asvp_node(node):
                raise AsvpError(f"node {node.name!r} is part of an inserted ASVP block, not a feature of the model")
            rows = classify(identity_surrogate(model), input_name=input_name, only={sel})
            f, problem = next(((c, p) for c, p in rows if c.index == i), (None, "its output is not a float tensor"))
            shape = tuple(f.shape) if f is not None else ()
            if problem == "it is a graph output" or (problem and force):
                if len(shape) != 4:
                    raise AsvpError(f"node {node.name!r} ({node.op_type}) outputs a rank-{len(shape)} tensor "
                                    f"{list(shape)}; ASVP needs a rank-4 N,C,H,W tensor; {_nodes_hint()}")
                if not f.channels:
                    raise AsvpError(f"node {node.name!r} has no fixed channel count ({shape[1]!r}); ASVP needs a fixed C")
                return f
            if problem:
                raise AsvpError(f"node {node.name!r} ({node.op_type}, {list(shape) or 'shape unknown'}) is not a "
                                f"feature map: {problem}. {_nodes_hint()} "
                                "(--force-nodes takes it anyway, for experts)")
            return f
    raise AsvpError(f"no node or tensor named {sel!r} in the model; {_nodes_hint()}")


def resolve(model: onnx.ModelProto, selectors=None, *, input_name: str | None = None,
            force_nodes: bool = False) -> list[FeatureNode]:
    """The feature nodes the selectors name, in topological order, without duplicates.

    input_name: the image input (default: detected). force_nodes: take an exactly named non-candidate tensor
    (rank 4, fixed C) instead of refusing it."""
    if isinstance(selectors, str):
        selectors = [selectors]
    selectors = [s for s in (selectors or []) if s is not None]
    cands, analysis = _analysis(model, input_name)
    if not selectors:
        selectors = [AUTO]
    chosen: dict[str, FeatureNode] = {}
    for raw in selectors:
        if not isinstance(raw, str) or not raw.strip():
            raise AsvpError(f"empty or invalid node selector {raw!r}; {_nodes_hint()}")
        sel = raw.strip()
        if sel == AUTO:
            found = [automatic(cands, analysis.none_reason())]
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
            found = [_by_name(model, sel, cands, input_name, force_nodes)]
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

"""Feature nodes where ASVP can be inserted: the model's real spatial feature maps.

The rule (`asvp nodes`, `defend`'s automatic choice and its checks of explicit --nodes): a node output is a
candidate when it is

  1. computed from the image input: reachable from it through the graph's data flow (initializers, constants and
     tensors computed only from them are not; nor is what flows only through Shape/Size, which carry sizes);
  2. a float rank-4 tensor [N, C, H', W'] whose
     - dim 0 is the input's batch N (not N*windows as in window attention, not a batch fixed at export),
     - dim 1 is a fixed channel count C >= 4,
     - dim 2 follows the input's height only and dim 3 its width only (H, 2*H, H/2, H + 2 ...), so it is a
       spatial map;
  3. not a graph output;
  4. not inside an attention block: a node whose name's scope (the module path torch's exporters write, e.g.
     /layers.0/blocks.0/attn/...) has a part containing "attn" or "attention". Some blocks lay their q/k/v
     projections out as N,C,H,W maps (HAT's overlapping cross-attention), which the shape rule alone cannot
     tell from the trunk's features. Models whose node names carry no scope are judged by rules 1-3 only.

Rule 2 is checked by running the model (ONNX Runtime, CPU) on three small inputs that differ in batch, height
and width, with every rank-4 tensor computed from the image read out: a candidate's dim 0 must be 1, 2, 1, its
dim 1 the same each time, its dim 2 must change with the height only and dim 3 with the width only. The probe
sizes respect the model's asvp.size_multiple and asvp.min_size metadata. When the model cannot run at the probe
sizes (a model exported with a fixed size), the same rule is checked symbolically on ONNX Runtime's symbolic
shape inference (the image input's fixed N/H/W made symbolic first).

That excludes learned weights and attention-mask constants (rule 1), q/k/v and attention-score tensors whose dims
are windows, heads and tokens (rule 2), and feature maps reshaped to token sequences [N, H*W, C] (rank 3). In a
transformer restorer the candidates are therefore the N,C,H,W maps around its convolutions and patch
(un)embedding. A model whose input has fixed H and W is analysed as if they were symbolic.

This module states the rule and applies it (`classify`). The probes are graph_passes/probe.py, what is read from
the graph without running it (reachability, symbolic shapes) graph_passes/symbolic.py, the table for people
graph_passes/tables.py.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import onnx

from asvp.graph_passes.probe import probe_problem, probe_shapes
from asvp.graph_passes.symbolic import (SYMBOLS, analysis_copy, feature_problem, image_reachable,
                                        symbolic_shapes)

MIN_CHANNELS = 4  # ASVP needs k < C and k >= 1; fewer channels leave nothing worth perturbing
# Rule 4: scopes (module paths in node names, as torch's exporters write them) of attention blocks
ATTENTION_SCOPE = re.compile(r"attn|attention", re.IGNORECASE)


def attention_scope(node_name: str) -> str | None:
    """The attention module a node lies in, from its name's scope ('/layers.0/blocks.0/attn/Reshape' -> 'attn')."""
    for part in node_name.split("/")[:-1]:
        if ATTENTION_SCOPE.search(part):
            return part
    return None


@dataclass(frozen=True)
class FeatureNode:
    index: int  # position among all nodes in topological order
    name: str
    op_type: str
    output: str  # the tensor ASVP would replace / tap
    shape: tuple  # symbolic dims as strings, concrete dims as ints
    channels: int
    area: float = 1.0  # H'*W' / (H*W) at the probe input (1.0 when not measured): its resolution

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


def _fixed_batch(model: onnx.ModelProto, image: str | None) -> bool:
    """The image input's batch is fixed (an export with --static-batch): the probes then all use batch 1."""
    for vi in model.graph.input:
        if vi.name == image:
            dims = vi.type.tensor_type.shape.dim
            return len(dims) == 4 and dims[0].HasField("dim_value")
    return False



def _ratio_label(dim: int, side: int, sym: str) -> str:
    if dim == side:
        return sym
    r = dim / side
    if r > 1 and r.is_integer():
        return f"{int(r)}*{sym}"
    if r < 1 and (1 / r).is_integer():
        return f"{sym}/{int(1 / r)}"
    return f"~{r:.2g}*{sym}"


def _label(shape: tuple, probe: list[tuple] | None, sizes, symbols, batch_fixed: bool) -> tuple:
    """Shape for people: N (or the fixed batch), C, and H'/W' as ratios of the input's H/W measured by the probes;
    ONNX Runtime's symbolic dims (with asvp's own stand-in symbols renamed) when there is no probe."""
    if probe is None:
        rename = {sym: plain for sym, plain in zip(symbols, SYMBOLS) if isinstance(sym, str) and sym.startswith("asvp_")}
        return tuple(rename.get(d, d) if isinstance(d, str) else d for d in shape)
    a = probe[0]
    return (1 if batch_fixed else "N", a[1], _ratio_label(a[2], sizes[0][1], "H"), _ratio_label(a[3], sizes[0][2], "W"))


def feature_candidates(model: onnx.ModelProto, min_channels: int = MIN_CHANNELS, *,
                       input_name: str | None = None) -> list[FeatureNode]:
    """The spatial feature maps of the model (the rule is in this module's docstring), in topological order."""
    return [c for c, problem in classify(model, min_channels, input_name=input_name) if problem is None]


def classify(model: onnx.ModelProto, min_channels: int = MIN_CHANNELS, *, input_name: str | None = None,
             only: set | None = None) -> list[tuple[FeatureNode, str | None]]:
    """Every node with a float rank-4 first output (or those named in `only`), with why it is not a candidate
    (None for candidates)."""
    m, name, symbols = analysis_copy(model, input_name)
    shapes = symbolic_shapes(m)
    reached = image_reachable(m, name)
    graph_outputs = {o.name for o in model.graph.output}
    nodes = [(i, n) for i, n in enumerate(model.graph.node) if n.output and n.output[0]
             and (only is None or n.name in only or n.output[0] in only)]
    rank4 = [n.output[0] for _, n in nodes if n.output[0] in reached and len(shapes.get(n.output[0], ())) == 4]
    batch_fixed = _fixed_batch(model, name)
    probes, sizes = probe_shapes(m, name, rank4, batch2=not batch_fixed)
    out = []
    for i, node in nodes:
        t = node.output[0]
        shape = shapes.get(t)
        if only is None and (shape is None or len(shape) != 4):
            continue
        if t in graph_outputs:
            problem = "it is a graph output"
        elif t not in reached:
            problem = "it is not computed from the image input (a weight, a constant, or computed only from them)"
        elif probes is not None and t in probes:
            problem = probe_problem(probes[t], sizes, min_channels)
        else:
            problem = feature_problem(t, shapes, reached, symbols, min_channels)
        if problem is None and (scope := attention_scope(node.name)):
            problem = (f"it lies inside the attention block {scope!r} (q/k/v projections and their windows, even "
                       "when laid out N,C,H,W, are not the network's features)")
        shape = shape if shape is not None else ()
        label = (_label(shape, probes.get(t) if probes else None, sizes, symbols, batch_fixed)
                 if len(shape) == 4 and problem is None else shape)
        channels = (probes[t][0][1] if probes and t in probes and len(probes[t][0]) == 4 else
                    (shape[1] if len(shape) == 4 and isinstance(shape[1], int) else 0))
        area = 1.0
        if probes and t in probes and len(probes[t][0]) == 4:
            area = round(probes[t][0][2] * probes[t][0][3] / (sizes[0][1] * sizes[0][2]), 6)
        out.append((FeatureNode(i, node.name, node.op_type, t, label, channels, area), problem))
    return out

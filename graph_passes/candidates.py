"""Feature nodes where ASVP can be inserted: the model's real spatial feature maps.

The rule (`asvp nodes`, `defend`'s automatic choice and its checks of explicit --nodes): a node output is a
candidate when it is

  1. computed from the image input: reachable from it through the graph's data flow (initializers, constants and
     tensors computed only from them are not; nor is what flows only through Shape/Size, which carry sizes);
  2. a float rank-4 tensor [N, C, H', W'] whose
     - dim 0 is the input's batch N (not N*windows as in window attention, not a batch fixed at export),
     - dim 1 is a fixed channel count C >= 4,
     - dim 2 follows the input's height only and dim 3 its width only (H, 2*H, H/2, H + 2, ceil(H/8)*8 ...),
       so it is a spatial map;
  3. not a graph output;
  4. not an attention input, told by the graph's structure (graph_passes/structure.py): a tensor every use of
     which reaches, within a few reshape/split/scale/normalise steps, a MatMul of two image-computed tensors next
     to a Softmax (q @ k^T, softmax @ v) is a q/k/v projection, even when laid out N,C,H,W (OmniSR's and
     Restormer's qkv convolutions). As a secondary hint, a node whose name's scope (the module path torch's
     exporters write, e.g. /layers.0/blocks.0/attn/...) has a part containing "attn" or "attention", or named
     as a q/k/v projection (qkv, to_qv, kv ...), is not one either (HAT's overlapping cross-attention unfolds its
     q/k/v maps, which no short path follows; SeemoRe's to_qv modulates by a product, without a Softmax);
  5. not the node producing the output image: a tensor with 3 channels, or the output's channel count, that
     becomes an image output through elementwise, resize or crop ops only. Perturbing it perturbs the served image
     itself; an explicit --nodes NAME for it is refused unless --force-nodes.

Rule 2 is checked by running the model (ONNX Runtime, CPU) on three small inputs that differ in batch, height
and width, with every rank-4 tensor computed from the image read out (graph_passes/probe.py): a candidate's dim 0
must be 1, 2, 1, its dim 1 the same each time, its dim 2 must change with the height only and dim 3 with the width
only. A fourth input, whose sides are not multiples of 8, gives the labels `asvp nodes` shows (`ceil(H/8)*8` for a
model that pads inside). The probe sizes respect the model's asvp.size_multiple and asvp.min_size metadata. A
model exported with a fixed H and W that cannot run at other sizes is probed at its own size: H', W' must then be
its H, W at one scale, and the dims shown are those numbers. When the model runs at no probe size, the rule is
checked on ONNX Runtime's symbolic shape inference (the image input's fixed N/H/W made symbolic first), and when
that finds nothing either, the reason the model could not run is what `asvp nodes` and `defend` report.

An NHWC image input ([N, H, W, C] with C = 1, 3 or 4 last) is refused: asvp needs NCHW (symbolic.check_layout).
This module states the rule and applies it (`analyse`, `classify`). What is read from the graph without running
it (reachability, symbolic shapes, layout) is graph_passes/symbolic.py, the table for people graph_passes/tables.py.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import onnx

from asvp.graph_passes.probe import Probe, dim_label, fixed_problem, probe_problem, probe_shapes
from asvp.graph_passes.structure import GraphUses
from asvp.graph_passes.symbolic import (SYMBOLS, analysis_copy, feature_problem, fixed_hw, image_reachable,
                                        symbolic_shapes)

MIN_CHANNELS = 4  # ASVP needs k < C and k >= 1; fewer channels leave nothing worth perturbing
IMAGE_CHANNELS = 3  # rule 5: an RGB image, whatever the model's output says
TAP_OUTPUT_PREFIX = "asvp_tap_"  # graph_passes.defend's extra outputs: features, not images
# Rule 4's secondary hint: scopes (module paths in node names, as torch's exporters write them) of attention blocks
# and of q/k/v projections (SeemoRe's `to_qv` modulates by a product, not a Softmax, so no structure shows it)
ATTENTION_SCOPE = re.compile(r"attn|attention|^(to_)?(q|k|v|qk|qv|kv|qkv)(_dwconv)?$", re.IGNORECASE)
ATTENTION_PROBLEM = ("it feeds only attention products (a q/k/v projection: every use reaches a MatMul with a "
                     "Softmax through reshapes, splits and scales), not the network's features")
IMAGE_PROBLEM = ("it produces the output image {out!r} ({c} channels, through elementwise/resize ops only): "
                 "perturbing it perturbs the served image itself")


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


@dataclass
class Analysis:
    """Every rank-4 node with why it is not a candidate (None for candidates), and why the model could not be run
    at any probe size (None when it ran)."""
    rows: list  # (FeatureNode, problem or None)
    why: str | None = None

    def candidates(self) -> list[FeatureNode]:
        return [c for c, problem in self.rows if problem is None]

    def none_reason(self) -> str:
        """Why there is no candidate, for a one-line error."""
        if self.why:
            return self.why
        if not self.rows:
            return "no node outputs a float rank-4 tensor computed from the image input"
        last, problem = self.rows[-1]
        return f"every rank-4 node output is refused (e.g. {last.name or last.output}: {problem})"


def _fixed_batch(model: onnx.ModelProto, image: str | None) -> bool:
    """The image input's batch is fixed (an export with --static-batch): the probes then all use batch 1."""
    for vi in model.graph.input:
        if vi.name == image:
            dims = vi.type.tensor_type.shape.dim
            return len(dims) == 4 and dims[0].HasField("dim_value")
    return False


def _label(shape: tuple, runs: list[tuple] | None, probe: Probe, symbols, batch_fixed: bool) -> tuple:
    """Shape for people: N (or the fixed batch), C, and H'/W' as expressions of the input's H/W fitted to the
    probes (the numbers themselves for a model probed at its own fixed size); ONNX Runtime's symbolic dims (with
    asvp's own stand-in symbols renamed) when there is no probe."""
    if runs is None:
        rename = {s: plain for s, plain in zip(symbols, SYMBOLS) if isinstance(s, str) and s.startswith("asvp_")}
        return tuple(rename.get(d, d) if isinstance(d, str) else d for d in shape)
    a = runs[0]
    n = 1 if batch_fixed else "N"
    if probe.fixed:
        return (n, a[1], a[2], a[3])
    # the second probe changes the height (and batch), the third the width: each dim's points leave the other out
    hs = [(s[1], r[2]) for i, (s, r) in enumerate(zip(probe.sizes, runs)) if i != 2]
    ws = [(s[2], r[3]) for i, (s, r) in enumerate(zip(probe.sizes, runs)) if i != 1]
    return (n, a[1], dim_label(hs, "H"), dim_label(ws, "W"))


def _image_outputs(model: onnx.ModelProto, shapes: dict, image_channels) -> dict[str, object]:
    """Rule 5: the graph outputs that are images -> their channel count: rank 4, not an asvp tap, and the first
    output or one with 3 channels or the input image's (a feature that is also an output is not an image)."""
    out = {}
    for i, o in enumerate(model.graph.output):
        s = shapes.get(o.name)
        if s is None or len(s) != 4 or o.name.startswith(TAP_OUTPUT_PREFIX):
            continue
        c = s[1] if isinstance(s[1], int) else image_channels
        if i == 0 or c in (IMAGE_CHANNELS, image_channels):
            out[o.name] = c
    return out


def feature_candidates(model: onnx.ModelProto, min_channels: int = MIN_CHANNELS, *,
                       input_name: str | None = None) -> list[FeatureNode]:
    """The spatial feature maps of the model (the rule is in this module's docstring), in topological order."""
    return analyse(model, min_channels, input_name=input_name).candidates()


def classify(model: onnx.ModelProto, min_channels: int = MIN_CHANNELS, *, input_name: str | None = None,
             only: set | None = None) -> list[tuple[FeatureNode, str | None]]:
    """Every node with a float rank-4 first output (or those named in `only`), with why it is not a candidate
    (None for candidates)."""
    return analyse(model, min_channels, input_name=input_name, only=only).rows


def _problem(node, t: str, probe: Probe, shapes, reached, symbols, min_channels, uses: GraphUses,
             images: dict, graph_outputs: set) -> str | None:
    """Why node output `t` is not a candidate (rules 1-5), None if it is."""
    runs = probe.shapes.get(t) if probe.shapes else None
    if t not in reached:
        return "it is not computed from the image input (a weight, a constant, or computed only from them)"
    shape = shapes.get(t, ())
    channels = runs[0][1] if runs and len(runs[0]) == 4 else (shape[1] if len(shape) == 4 else None)
    image_like = channels == IMAGE_CHANNELS or channels in images.values()  # the walk only when it can matter
    out = uses.image_output(t, set(images)) if image_like else None
    if out is not None and channels in (IMAGE_CHANNELS, images[out]):
        return IMAGE_PROBLEM.format(out=out, c=channels)
    if t in graph_outputs:
        return "it is a graph output"
    if runs is not None:
        problem = (fixed_problem if probe.fixed else probe_problem)(runs, probe.sizes, min_channels)
    else:
        problem = feature_problem(t, shapes, reached, symbols, min_channels)
    if problem is None and uses.attention_input(t):
        problem = ATTENTION_PROBLEM
    if problem is None and (scope := attention_scope(node.name)):
        problem = (f"it lies inside the attention or q/k/v projection module {scope!r} (q/k/v projections and their "
                   "windows, even when laid out N,C,H,W, are not the network's features)")
    return problem


def analyse(model: onnx.ModelProto, min_channels: int = MIN_CHANNELS, *, input_name: str | None = None,
            only: set | None = None) -> Analysis:
    """The rule applied to every node with a float rank-4 first output (or those named in `only`)."""
    m, name, symbols = analysis_copy(model, input_name)
    shapes = symbolic_shapes(m)
    reached = image_reachable(m, name)
    graph_outputs = {o.name for o in model.graph.output}
    nodes = [(i, n) for i, n in enumerate(model.graph.node) if n.output and n.output[0]
             and (only is None or n.name in only or n.output[0] in only)]
    rank4 = [n.output[0] for _, n in nodes if n.output[0] in reached and len(shapes.get(n.output[0], ())) == 4]
    batch_fixed = _fixed_batch(model, name)
    probe = probe_shapes(m, name, rank4, batch2=not batch_fixed, fixed_hw=fixed_hw(model, name))
    uses = GraphUses(model, reached)
    image_c = shapes.get(name, (0, 0, 0, 0))[1] if len(shapes.get(name, ())) == 4 else IMAGE_CHANNELS
    images = _image_outputs(m, shapes, image_c)
    rows = []
    for i, node in nodes:
        t = node.output[0]
        shape = shapes.get(t)
        if only is None and (shape is None or len(shape) != 4):
            continue
        problem = _problem(node, t, probe, shapes, reached, symbols, min_channels, uses, images, graph_outputs)
        shape = shape if shape is not None else ()
        runs = probe.shapes.get(t) if probe.shapes else None
        label = _label(shape, runs, probe, symbols, batch_fixed) if len(shape) == 4 and problem is None else shape
        measured = runs is not None and len(runs[0]) == 4
        channels = runs[0][1] if measured else (shape[1] if len(shape) == 4 and isinstance(shape[1], int) else 0)
        area = 1.0
        if measured:
            area = round(runs[0][2] * runs[0][3] / (probe.sizes[0][1] * probe.sizes[0][2]), 6)
        rows.append((FeatureNode(i, node.name, node.op_type, t, label, channels, area), problem))
    return Analysis(rows, probe.why)

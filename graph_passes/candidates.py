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
"""
from __future__ import annotations

import copy
import logging
import os
import re
import tempfile
from dataclasses import asdict, dataclass

import numpy as np
import onnx
import onnxruntime as ort
import sympy

from asvp.graph_passes.metadata import read_export
from asvp.onnx_utils import image_input

MIN_CHANNELS = 4  # ASVP needs k < C and k >= 1; fewer channels leave nothing worth perturbing
SHAPE_ONLY_OPS = {"Shape", "Size"}  # their outputs describe the image's size, not its content
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


def symbolic_shapes(model: onnx.ModelProto) -> dict[str, tuple]:
    """Tensor name -> shape, using ONNX Runtime's symbolic shape inference (keeps N, H, 2*H, ...)."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    # On ops it does not know (custom domains) ORT's inference writes sym_shape_infer_temp.onnx into the
    # working directory; run it in a scratch directory so nothing is ever left beside the user's files.
    cwd = os.getcwd()
    log = logging.getLogger("onnxruntime.tools.symbolic_shape_infer")
    level = log.level
    log.setLevel(logging.ERROR)  # "Unable to determine if 2*H <= ..., treat as equal" is noise for users
    with tempfile.TemporaryDirectory() as scratch:
        os.chdir(scratch)
        try:
            inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
        except Exception:  # fall back to ONNX's own inference (loses symbolic arithmetic)
            try:
                inferred = onnx.shape_inference.infer_shapes(model)
            except Exception:
                inferred = model
        finally:
            os.chdir(cwd)
            log.setLevel(level)
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        t = vi.type.tensor_type
        if t.elem_type != onnx.TensorProto.FLOAT or not t.HasField("shape"):
            continue
        shapes[vi.name] = tuple(d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else "?")
                                for d in t.shape.dim)
    return shapes


_SYMBOLS = ("N", "H", "W")


def analysis_copy(model: onnx.ModelProto, input_name: str | None = None) -> tuple[onnx.ModelProto, str, tuple]:
    """(a copy of the model prepared for symbolic analysis, the image input's name, its (N, H, W) symbols).

    Fixed N/H/W of the image input become symbols, and stored intermediate/output shapes are dropped, so that the
    inference ties every shape to the input's symbols."""
    vi = image_input(model, input_name)
    m = copy.deepcopy(model)
    del m.graph.value_info[:]
    for o in m.graph.output:
        if o.type.HasField("tensor_type") and o.type.tensor_type.HasField("shape"):
            o.type.tensor_type.ClearField("shape")
    inp = next(i for i in m.graph.input if i.name == vi.name)
    dims = inp.type.tensor_type.shape.dim
    syms = []
    for axis, default in zip((0, 2, 3), _SYMBOLS):
        d = dims[axis]
        if axis == 0 and d.HasField("dim_value"):  # a fixed batch (--static-batch) stays what it is
            syms.append(d.dim_value)
            continue
        if not d.dim_param:
            d.Clear()
            d.dim_param = f"asvp_{default}"
        syms.append(d.dim_param)
    return m, vi.name, tuple(syms)


def image_reachable(model: onnx.ModelProto, input_name: str) -> set[str]:
    """Tensors computed from the image input's values (Shape/Size outputs are not: they only carry its size)."""
    reached = {input_name}
    for node in model.graph.node:  # ONNX graphs are stored in topological order
        if node.op_type in SHAPE_ONLY_OPS:
            continue
        if any(i in reached for i in node.input if i):
            reached.update(o for o in node.output if o)
    return reached


def _sym(expr, names: dict):
    if isinstance(expr, int):
        return sympy.Integer(expr)
    try:
        return sympy.sympify(expr, locals=names)
    except Exception:
        return None


def spatial_problem(shape: tuple, symbols: tuple, min_channels: int = MIN_CHANNELS) -> str | None:
    """Why a tensor of `shape` is not a spatial feature map of an input with (N, H, W) `symbols`; None if it is."""
    if len(shape) != 4:
        return f"it is a rank-{len(shape)} tensor, not an N,C,H,W feature map"
    n, h, w = symbols
    names = {s: sympy.Symbol(s) for s in symbols if isinstance(s, str)}
    plain = {s: p for s, p in zip(symbols, _SYMBOLS) if isinstance(s, str) and s.startswith("asvp_")}
    dim0, dim2, dim3 = (_sym(shape[a], names) for a in (0, 2, 3))
    if not isinstance(shape[1], int):
        return f"its channel dimension {shape[1]!r} is not a fixed number"
    if shape[1] < min_channels:
        return f"it has {shape[1]} channels (fewer than {min_channels})"
    want = sympy.Integer(n) if isinstance(n, int) else names[n]
    if dim0 is None or sympy.simplify(dim0 - want) != 0:
        return (f"its dim 0 ({plain.get(shape[0], shape[0])}) is not the input's batch {plain.get(n, n)} (attention "
                "windows or a batch fixed inside the graph)")
    for axis, dim, sym in ((2, dim2, h), (3, dim3, w)):
        free = {str(f) for f in dim.free_symbols} if dim is not None else set()
        if free != {sym}:
            return (f"its dim {axis} ({shape[axis]}) is not tied to the input's {'height' if axis == 2 else 'width'} "
                    f"{plain.get(sym, sym)} (tokens, heads or a fixed size)")
    return None


def feature_problem(tensor: str, shapes: dict, reached: set, symbols: tuple, min_channels: int = MIN_CHANNELS):
    """Why `tensor` is not a candidate feature map (None if it is)."""
    if tensor not in reached:
        return "it is not computed from the image input (a weight, a constant, or computed only from them)"
    shape = shapes.get(tensor)
    if shape is None:
        return "it has no float tensor output of known shape"
    return spatial_problem(shape, symbols, min_channels)


def _fixed_batch(model: onnx.ModelProto, image: str | None) -> bool:
    """The image input's batch is fixed (an export with --static-batch): the probes then all use batch 1."""
    for vi in model.graph.input:
        if vi.name == image:
            dims = vi.type.tensor_type.shape.dim
            return len(dims) == 4 and dims[0].HasField("dim_value")
    return False


def probe_sizes(model: onnx.ModelProto, attempt: int = 0, batch2: bool = True) -> list[tuple[int, int, int]]:
    """Three (batch, height, width) probes: base, batch 2 (1 if batch2 is False) with a taller image, a wider
    image."""
    info = read_export(model)
    mult = info.size_multiple
    step = max(mult, 8) * (2 ** attempt)
    step = -(-step // mult) * mult
    base = max(32, info.min_size)
    base = -(-base // step) * step
    # tripled sides: models that pad to a multiple internally (SCUNet: 64) must see the change in their features
    return [(1, base, base + step), (2 if batch2 else 1, 3 * base, base + step), (1, base, 3 * (base + step))]


def _feed(model: onnx.ModelProto, image: str, n: int, h: int, w: int, rng) -> dict:
    feed = {}
    vi_image = next(i for i in model.graph.input if i.name == image)
    idims = vi_image.type.tensor_type.shape.dim
    sym = {idims[0].dim_param: n, idims[2].dim_param: h, idims[3].dim_param: w} if len(idims) == 4 else {}
    sym.pop("", None)
    inits = {i.name for i in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        t = vi.type.tensor_type
        dims = []
        for axis, d in enumerate(t.shape.dim):
            if vi.name == image and len(t.shape.dim) == 4 and axis != 1:
                dims.append((n, None, h, w)[axis])
            elif d.HasField("dim_value"):
                dims.append(d.dim_value)
            elif d.dim_param in sym:
                dims.append(sym[d.dim_param])
            elif len(t.shape.dim) == 4:  # an extra N,C,H,W input (noise map, mask) of the image's size
                dims.append((n, 1, h, w)[axis])
            else:
                dims.append(1)
        if vi.name == image and not isinstance(dims[1], int):
            dims[1] = 3
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
        feed[vi.name] = (rng.random(dims) * (1.0 if vi.name == image else 0.1)).astype(dtype)
    return feed


def probe_shapes(model: onnx.ModelProto, image: str, tensors: list[str], batch2: bool = True):
    """tensor -> its shape at each of the probe_sizes, by running the model (CPU); None if it cannot run."""
    if not tensors:
        return {}, None
    m = copy.deepcopy(model)
    present = {o.name for o in m.graph.output}
    for t in tensors:
        if t not in present:
            m.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor readable
    try:
        sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception:
        return None, None
    rng = np.random.default_rng(0)
    for attempt in range(3):
        sizes = probe_sizes(model, attempt, batch2)
        try:
            runs = [sess.run(tensors, _feed(m, image, *size, rng)) for size in sizes]
        except Exception:
            continue
        return {t: [tuple(r[i].shape) for r in runs] for i, t in enumerate(tensors)}, sizes
    return None, None


def probe_problem(shapes: list[tuple], sizes: list[tuple], min_channels: int = MIN_CHANNELS) -> str | None:
    """Why a tensor with these shapes at the probe sizes is not a spatial feature map (None if it is)."""
    a, b, d = shapes
    if not len(a) == len(b) == len(d) == 4:
        return f"it is a rank-{len(a)} tensor, not an N,C,H,W feature map"
    if not a[1] == b[1] == d[1]:
        return f"its dim 1 changes with the input's size ({a[1]}, {b[1]}, {d[1]}): not a channel count"
    if a[1] < min_channels:
        return f"it has {a[1]} channels (fewer than {min_channels})"
    if (a[0], b[0], d[0]) != tuple(s[0] for s in sizes):
        return (f"its dim 0 is {a[0]}, {b[0]}, {d[0]} for batches {', '.join(str(s[0]) for s in sizes)}: not the "
                "input's batch (attention windows, or a batch fixed inside the graph)")
    if not (b[2] > a[2] and d[2] == a[2]):
        return "its dim 2 does not follow the input's height alone (tokens, heads or a fixed size)"
    if not (d[3] > a[3] and b[3] == a[3]):
        return "its dim 3 does not follow the input's width alone (tokens, heads or a fixed size)"
    return None


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
        rename = {sym: plain for sym, plain in zip(symbols, _SYMBOLS) if isinstance(sym, str) and sym.startswith("asvp_")}
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


def text_table(rows: list[tuple]) -> list[str]:
    """Fixed-width lines for people: the first row is the header, underlined with dashes; columns left-aligned, two
    spaces apart (the style of `asvp nodes`)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def candidates_table(nodes: list[FeatureNode]) -> str:
    """A fixed-width table for people."""
    rows = [("#", "name", "op", "output shape", "C")]
    rows += [(str(n.index), n.name, n.op_type, "[" + ", ".join(map(str, n.shape)) + "]", str(n.channels)) for n in nodes]
    return "\n".join(text_table(rows))

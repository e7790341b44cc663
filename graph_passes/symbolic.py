"""What the candidate rule (graph_passes/candidates.py) reads from the graph without running it: the image input's
layout (NCHW, or refused), which tensors are computed from the image input (rule 1), and their shapes from ONNX
Runtime's symbolic shape inference, with the shape rule (rule 2) checked on those symbolic dims when the model
cannot run at the probe sizes.
"""
from __future__ import annotations

import copy
import logging
import os
import tempfile

import onnx
import sympy

from asvp.errors import AsvpError
from asvp.onnx_utils import image_input

SHAPE_ONLY_OPS = {"Shape", "Size"}  # their outputs describe the image's size, not its content
SYMBOLS = ("N", "H", "W")  # the names people read for the image input's batch, height and width
CHANNELS_LAST = (1, 3, 4)  # an image input whose last dim is one of these, and whose dim 1 is not, is NHWC
MAX_CHANNELS_FIRST = 4  # a fixed dim 1 above this, with such a last dim, is a height, not a channel count


def _dims(vi) -> list:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in vi.type.tensor_type.shape.dim]


def check_layout(vi) -> None:
    """Refuse an NHWC image input ([N, H, W, C] with C = 1, 3 or 4 last and dim 1 dynamic or larger than 4): the
    probes and the defence read dim 1 as the channels."""
    dims = _dims(vi)
    if len(dims) == 4 and dims[3] in CHANNELS_LAST and not (isinstance(dims[1], int) and dims[1] <= MAX_CHANNELS_FIRST):
        raise AsvpError(f"the image input {vi.name!r} {dims} is NHWC (channels last); asvp needs NCHW [N, C, H, W]: "
                        "export the model channels-first (or add a Transpose at its input)")


def fixed_hw(model: onnx.ModelProto, image: str) -> tuple[int, int] | None:
    """The image input's fixed (H, W) (an export with --static-size), None when either is dynamic."""
    vi = next((i for i in model.graph.input if i.name == image), None)
    dims = _dims(vi) if vi is not None else []
    return (dims[2], dims[3]) if len(dims) == 4 and isinstance(dims[2], int) and isinstance(dims[3], int) else None


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



def analysis_copy(model: onnx.ModelProto, input_name: str | None = None) -> tuple[onnx.ModelProto, str, tuple]:
    """(a copy of the model prepared for symbolic analysis, the image input's name, its (N, H, W) symbols).

    Fixed N/H/W of the image input become symbols, and stored intermediate/output shapes are dropped, so that the
    inference ties every shape to the input's symbols."""
    vi = image_input(model, input_name)
    check_layout(vi)
    m = copy.deepcopy(model)
    del m.graph.value_info[:]
    for o in m.graph.output:
        if o.type.HasField("tensor_type") and o.type.tensor_type.HasField("shape"):
            o.type.tensor_type.ClearField("shape")
    inp = next(i for i in m.graph.input if i.name == vi.name)
    dims = inp.type.tensor_type.shape.dim
    syms = []
    for axis, default in zip((0, 2, 3), SYMBOLS):
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


def spatial_problem(shape: tuple, symbols: tuple, min_channels: int) -> str | None:
    """Why a tensor of `shape` is not a spatial feature map of an input with (N, H, W) `symbols`; None if it is."""
    if len(shape) != 4:
        return f"it is a rank-{len(shape)} tensor, not an N,C,H,W feature map"
    n, h, w = symbols
    names = {s: sympy.Symbol(s) for s in symbols if isinstance(s, str)}
    plain = {s: p for s, p in zip(symbols, SYMBOLS) if isinstance(s, str) and s.startswith("asvp_")}
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


def feature_problem(tensor: str, shapes: dict, reached: set, symbols: tuple, min_channels: int):
    """Why `tensor` is not a candidate feature map (None if it is)."""
    if tensor not in reached:
        return "it is not computed from the image input (a weight, a constant, or computed only from them)"
    shape = shapes.get(tensor)
    if shape is None:
        return "it has no float tensor output of known shape"
    return spatial_problem(shape, symbols, min_channels)

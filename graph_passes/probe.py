"""Rule 2 of the candidate rule (graph_passes/candidates.py) checked by running the model: ONNX Runtime (CPU) on
three small inputs that differ in batch, height and width, with every rank-4 tensor computed from the image read
out, and a fourth at sides that are not multiples of 8, from which the dims' labels are read (`dim_label`:
`H`, `2*H`, `ceil(H/8)*8` for a model that pads inside). The sizes respect the model's asvp.size_multiple and
asvp.min_size metadata. A model exported at one fixed size that cannot run at other sizes is probed at its own
size (`fixed_problem` judges the shapes there).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import onnx
import onnxruntime as ort

from asvp.graph_passes.metadata import read_export

QUIET = 4  # ONNX Runtime's FATAL only: a probe that fails is expected, and its error is reported in asvp's line
MAX_PAD = 256  # the largest multiple a model is taken to pad to inside (dim_label)


@dataclass
class Probe:
    """What running the model told: tensor -> its shape at each size (None when it could not run)."""
    shapes: dict | None
    sizes: list = field(default_factory=list)  # (batch, height, width) of each run; the first three the rule's
    fixed: bool = False  # probed only at the model's own fixed size
    why: str | None = None  # why the model could not run at any probe size (one line)


def probe_sizes(model: onnx.ModelProto, attempt: int = 0, batch2: bool = True) -> list[tuple[int, int, int]]:
    """Three (batch, height, width) probes: base, batch 2 (1 if batch2 is False) with a taller image, a wider
    image; and a fourth, for the labels, whose sides are off the multiples of 8 by the size multiple."""
    info = read_export(model)
    mult = info.size_multiple
    step = max(mult, 8) * (2 ** attempt)
    step = -(-step // mult) * mult
    base = max(32, info.min_size)
    base = -(-base // step) * step
    # tripled sides: models that pad to a multiple internally (SCUNet: 64) must see the change in their features
    return [(1, base, base + step), (2 if batch2 else 1, 3 * base, base + step), (1, base, 3 * (base + step)),
            (1, base + mult, base + step + mult)]


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


def _one_line(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return (text[:200] + "...") if len(text) > 200 else text or type(exc).__name__


def _session(model: onnx.ModelProto, tensors: list[str]):
    m = copy.deepcopy(model)
    present = {o.name for o in m.graph.output}
    for t in tensors:
        if t not in present:
            m.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.log_severity_level = QUIET
    opts.intra_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor readable
    return m, ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def probe_shapes(model: onnx.ModelProto, image: str, tensors: list[str], batch2: bool = True,
                 fixed_hw: tuple[int, int] | None = None) -> Probe:
    """Each tensor's shape at the probe_sizes, by running the model (CPU); at its own fixed size `fixed_hw` (the
    exported input's H, W) when it cannot run at the probe sizes. With no tensors, whether it runs at all (its
    outputs are read), so that a model with nothing to analyse still says why."""
    try:
        m, sess = _session(model, tensors)
    except Exception as exc:
        return Probe(None, why=f"ONNX Runtime cannot load it ({_one_line(exc)})")
    quiet = ort.RunOptions()
    quiet.log_severity_level = QUIET
    rng = np.random.default_rng(0)

    def run(size):
        return sess.run(tensors or None, _feed(m, image, *size, rng), quiet)

    why = None
    for attempt in range(3):
        sizes = probe_sizes(model, attempt, batch2)
        try:
            runs = [run(size) for size in sizes[:3]]
        except Exception as exc:
            why = why or _one_line(exc)
            continue
        try:
            runs.append(run(sizes[3]))
        except Exception:  # the labels then come from the first three
            sizes = sizes[:3]
        return Probe({t: [tuple(r[i].shape) for r in runs] for i, t in enumerate(tensors)}, sizes)
    if fixed_hw:
        sizes = [(1, *fixed_hw)] + ([(2, *fixed_hw)] if batch2 else [])
        try:
            runs = [run(size) for size in sizes]
            return Probe({t: [tuple(r[i].shape) for r in runs] for i, t in enumerate(tensors)}, sizes, fixed=True)
        except Exception as exc:
            why = f"it fails at its own size {fixed_hw[0]}x{fixed_hw[1]} too ({_one_line(exc)})"
    return Probe(None, why=f"ONNX Runtime cannot run it at the probe sizes: {why}")


def probe_problem(shapes: list[tuple], sizes: list[tuple], min_channels: int) -> str | None:
    """Why a tensor with these shapes at the (first three) probe sizes is not a spatial feature map (None if it is)."""
    a, b, d = shapes[:3]
    if not len(a) == len(b) == len(d) == 4:
        return f"it is a rank-{len(a)} tensor, not an N,C,H,W feature map"
    if not a[1] == b[1] == d[1]:
        return f"its dim 1 changes with the input's size ({a[1]}, {b[1]}, {d[1]}): not a channel count"
    if a[1] < min_channels:
        return f"it has {a[1]} channels (fewer than {min_channels})"
    if (a[0], b[0], d[0]) != tuple(s[0] for s in sizes[:3]):
        return (f"its dim 0 is {a[0]}, {b[0]}, {d[0]} for batches {', '.join(str(s[0]) for s in sizes[:3])}: not "
                "the input's batch (attention windows, or a batch fixed inside the graph)")
    if not (b[2] > a[2] and d[2] == a[2]):
        return "its dim 2 does not follow the input's height alone (tokens, heads or a fixed size)"
    if not (d[3] > a[3] and b[3] == a[3]):
        return "its dim 3 does not follow the input's width alone (tokens, heads or a fixed size)"
    return None


def fixed_problem(shapes: list[tuple], sizes: list[tuple], min_channels: int) -> str | None:
    """The same question for a model probed only at its own fixed size: H', W' must be the input's H, W at one
    scale (within internal padding), dim 0 the batch."""
    a = shapes[0]
    if any(len(s) != 4 for s in shapes):
        return f"it is a rank-{len(a)} tensor, not an N,C,H,W feature map"
    if len({s[1] for s in shapes}) > 1:
        return "its dim 1 changes with the batch: not a channel count"
    if a[1] < min_channels:
        return f"it has {a[1]} channels (fewer than {min_channels})"
    if [s[0] for s in shapes] != [s[0] for s in sizes]:
        return (f"its dim 0 is {', '.join(str(s[0]) for s in shapes)} for batches "
                f"{', '.join(str(s[0]) for s in sizes)}: not the input's batch (attention windows)")
    _, h, w = sizes[0]
    rh, rw = a[2] / h, a[3] / w
    if not (1 / 64 <= rh <= 16 and 1 / 64 <= rw <= 16) or abs(math.log(rh / rw)) > 0.3:
        return (f"its dims 2, 3 ({a[2]}, {a[3]}) are not the {h}x{w} input's height and width at one scale "
                "(tokens, heads or windows)")
    return None


def _ratio(r: Fraction, sym: str) -> str:
    if r == 1:
        return sym
    if r.denominator == 1:
        return f"{r.numerator}*{sym}"
    return f"{sym}/{r.denominator}" if r.numerator == 1 else f"{r.numerator}*{sym}/{r.denominator}"


def _padded(points: list[tuple[int, int]], sym: str) -> str | None:
    """ceil(x/q)*p (padding to a multiple q, then scaling) or floor(x/q)*p (cropping), with the smallest q; scales
    p/q that are powers of 2 first (a few probes fit other forms too: ceil(H/24)*32 fits what ceil(H/64)*64 does)."""
    def power_of_2(p: int, q: int) -> bool:
        r = Fraction(p, q)
        return (r.numerator & (r.numerator - 1)) == 0 and (r.denominator & (r.denominator - 1)) == 0

    for nice in (True, False):
        for q in range(2, MAX_PAD + 1):
            for rounding, name in ((lambda x: -(-x // q)), "ceil"), ((lambda x: x // q), "floor"):
                ks = [rounding(x) for x, _ in points]
                if 0 in ks or any(y % k for k, (_, y) in zip(ks, points)):
                    continue
                ps = {y // k for k, (_, y) in zip(ks, points)}
                if len(ps) == 1 and power_of_2(p := ps.pop(), q) == nice:
                    return _padded_label(name, sym, q, p)
    return None


def _padded_label(name: str, sym: str, q: int, p: int) -> str:
    if p == 1:
        return f"{name}({sym}/{q})"
    if p % q == 0:
        return f"{name}({sym}/{q})*{q}" if p == q else f"{p // q}*{name}({sym}/{q})*{q}"
    return f"{name}({sym}/{q})*{p}"


def dim_label(points: list[tuple[int, int]], sym: str) -> str:
    """An expression in `sym` (the input's H or W) that every (input side, feature side) point fits: `H`, `2*H`,
    `H/2`, `ceil(H/8)*8` (padding inside), `H + 2`; `~1.6*H` from the first point when none does."""
    ratios = {Fraction(y, x) for x, y in points}
    if len(ratios) == 1:
        return _ratio(ratios.pop(), sym)
    padded = _padded(points, sym)
    if padded:
        return padded
    (x0, y0), (x1, y1) = points[0], next(((x, y) for x, y in points if x != points[0][0]), points[0])
    if x1 != x0:
        r = Fraction(y1 - y0, x1 - x0)
        c = y0 - r * x0
        if c.denominator == 1 and r > 0 and all(r * x + c == y for x, y in points):
            return f"{_ratio(r, sym)} {'+' if c > 0 else '-'} {abs(c.numerator)}"
    return f"~{y0 / x0:.2g}*{sym}"

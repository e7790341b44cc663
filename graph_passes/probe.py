"""Rule 2 of the candidate rule (graph_passes/candidates.py) checked by running the model: ONNX Runtime (CPU) on
three small inputs that differ in batch, height and width, with every rank-4 tensor computed from the image read
out. The sizes respect the model's asvp.size_multiple and asvp.min_size metadata.
"""
from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort

from asvp.graph_passes.metadata import read_export


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


def probe_problem(shapes: list[tuple], sizes: list[tuple], min_channels: int) -> str | None:
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

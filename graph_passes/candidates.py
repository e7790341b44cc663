"""Feature nodes where ASVP can be inserted: rank-4 float outputs with enough channels to perturb."""
from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass

import onnx

MIN_CHANNELS = 4  # ASVP needs k < C and k >= 1; fewer channels leave nothing worth perturbing


@dataclass(frozen=True)
class FeatureNode:
    index: int  # position among all nodes in topological order
    name: str
    op_type: str
    output: str  # the tensor ASVP would replace / tap
    shape: tuple  # symbolic dims as strings, concrete dims as ints
    channels: int

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
    with tempfile.TemporaryDirectory() as scratch:
        os.chdir(scratch)
        try:
            inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
        except Exception:  # fall back to ONNX's own inference (loses symbolic arithmetic)
            inferred = onnx.shape_inference.infer_shapes(model)
        finally:
            os.chdir(cwd)
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        t = vi.type.tensor_type
        if t.elem_type != onnx.TensorProto.FLOAT or not t.HasField("shape"):
            continue
        shapes[vi.name] = tuple(d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else "?")
                                for d in t.shape.dim)
    return shapes


def feature_candidates(model: onnx.ModelProto, min_channels: int = MIN_CHANNELS) -> list[FeatureNode]:
    shapes = symbolic_shapes(model)
    graph_outputs = {o.name for o in model.graph.output}
    out = []
    for i, node in enumerate(model.graph.node):
        if not node.output or node.output[0] in graph_outputs:
            continue
        shape = shapes.get(node.output[0])
        if shape is None or len(shape) != 4 or not isinstance(shape[1], int) or shape[1] < min_channels:
            continue
        out.append(FeatureNode(i, node.name, node.op_type, node.output[0], shape, shape[1]))
    return out


def candidates_table(nodes: list[FeatureNode]) -> str:
    """A fixed-width table for people."""
    rows = [("#", "name", "op", "output shape", "C")]
    rows += [(str(n.index), n.name, n.op_type, "[" + ", ".join(map(str, n.shape)) + "]", str(n.channels)) for n in nodes]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)

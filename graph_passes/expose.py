"""Expose internal tensors as graph outputs (onnx-graphsurgeon): how validation reads clean features at the
defended nodes and how a feature-distillation attacker reads the tensors a served model would hand out."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from asvp.errors import AsvpError


def expose_tensors(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of the ONNX model with the named internal tensors added to graph.outputs.

    Missing names raise AsvpError. The IR version, opset and metadata are kept.
    """
    try:  # types and shapes of internal tensors (graph outputs must carry both)
        typed = onnx.shape_inference.infer_shapes(model)
    except Exception:
        typed = model
    graph = gs.import_onnx(typed)
    tensors = graph.tensors()
    missing = [n for n in names if n not in tensors]
    if missing:
        raise AsvpError(f"tensor(s) {missing} not found in the model")
    present = {o.name for o in graph.outputs}
    for n in names:
        if n in present:
            continue
        t = tensors[n]
        if t.dtype is None:
            t.dtype = np.float32
        if t.shape is None:  # ASVP features are NCHW
            t.shape = [f"{n}_{d}" for d in "nchw"]
        graph.outputs.append(t)
    out = gs.export_onnx(graph)
    out.ir_version = model.ir_version
    del out.metadata_props[:]
    out.metadata_props.extend(model.metadata_props)
    onnx.checker.check_model(out)
    return out

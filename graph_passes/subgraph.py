"""ASVP as a subgraph of standard ONNX ops (opset 17, default domain): runs on any ONNX runtime and TensorRT.

`build_asvp(graph, x, cfg, channels, prefix)` appends to an onnx-graphsurgeon graph the nodes computing
ASVP(x) for a rank-4 float32 tensor x [N, C, H, W] (N, H, W dynamic) and returns the output variable. It is,
operation for operation, `asvp.method.asvp_subspace` (the torch mirror; docs/method.md explains the algorithm):

    M = Reshape(x, [0, C, -1]);  G = M M^T / (trace + eps);  Gp = G^3
    Q = Q0 (initial_basis(C, kb), kb = min(k + 4, C));  repeat iters:  Q = MGS(Gp Q);   Q = MGS(Q)
    B = Q^T G Q;  repeat 3:  V = exp(A(B)) (simultaneous Jacobi angles);  B = V^T B V;  Q = Q V
    energies, idx = TopK(diag B, k);  U = GatherElements(Q, idx);  mask = CumSum(energies) - energies < tau
    out = Reshape(M + U diag((h - 1) mask) (U^T M), Shape(x))   (as (I + U diag(..) U^T) M when C <= 64)

Every node and tensor name starts with `prefix` (e.g. "asvp/0"), unique per insertion. Only operators on
TensorRT's ONNX-parser support list are emitted (graph_passes/data/trt_onnx_supported_ops.json, checked by
tests), with the inputs TensorRT requires constant (ReduceSum axes, CumSum axis, TopK K, Slice/Split sizes,
Unsqueeze axes) as initializers.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from asvp.config import AsvpConfig
from asvp.method import (DENSE_APPLY_MAX_C, EPS, EXP_SQUARINGS, EXP_TAYLOR_DEGREE, JACOBI_STEPS, TINY, block_width,
                         initial_basis)
from asvp.onnx_utils import MAX_IR_VERSION, check_model

OPSET = 17


class Emitter:
    """Appends uniquely named nodes and constants under one prefix to a gs.Graph."""

    def __init__(self, graph: gs.Graph, prefix: str):
        self.graph, self.prefix = graph, prefix.rstrip("/")
        self.opset = graph.opset or OPSET
        self._count = 0
        self._consts: dict[str, gs.Constant] = {}

    def const(self, label: str, value) -> gs.Constant:
        if label not in self._consts:
            arr = np.asarray(value)
            if arr.dtype == np.float64:
                arr = arr.astype(np.float32)
            self._consts[label] = gs.Constant(f"{self.prefix}/const/{label}", np.ascontiguousarray(arr))
        return self._consts[label]

    def scalar(self, value: float) -> gs.Constant:
        return self.const(f"scalar_{float(np.float32(value)):.9g}", np.array(value, np.float32))

    def axes(self, *axes: int) -> gs.Constant:
        return self.const("axes_" + "_".join(map(str, axes)), np.array(axes, np.int64))

    def op(self, op: str, inputs: list, attrs: dict | None = None, label: str | None = None, n_out: int = 1):
        name = f"{self.prefix}/{label or op}_{self._count}"
        self._count += 1
        outs = [gs.Variable(f"{name}:{i}" if n_out > 1 else f"{name}:0") for i in range(n_out)]
        self.graph.layer(op=op, name=name, inputs=inputs, outputs=outs, attrs=attrs or {})
        return outs if n_out > 1 else outs[0]

    # Shorthands for the ops used below (ReduceSum takes its axes as an input since opset 13).
    def reduce_sum(self, x, *axes: int, keepdims: int = 1):
        return self.op("ReduceSum", [x, self.axes(*axes)], {"keepdims": keepdims})

    def reduce_l2(self, x, *axes: int, keepdims: int = 1):
        if self.opset >= 18:  # axes moved from attribute to input in opset 18
            return self.op("ReduceL2", [x, self.axes(*axes)], {"keepdims": keepdims})
        return self.op("ReduceL2", [x], {"axes": list(axes), "keepdims": keepdims})

    def transpose(self, x):
        return self.op("Transpose", [x], {"perm": [0, 2, 1]})

    def matmul(self, a, b):
        return self.op("MatMul", [a, b])


def mgs(e: Emitter, z, kb: int):
    """Modified Gram-Schmidt over the columns of z [N, C, kb] (method.mgs)."""
    cols = []
    rest = z
    for j in range(kb):
        if j < kb - 1:
            zj, rest = e.op("Split", [rest, e.const(f"split_{kb - j}", np.array([1, kb - j - 1], np.int64))],
                            {"axis": 2}, n_out=2)
        else:
            zj = rest
        norm = e.reduce_l2(zj, 1)
        qj = e.op("Div", [zj, e.op("Add", [norm, e.scalar(TINY)])])
        cols.append(qj)
        if j < kb - 1:
            coeff = e.reduce_sum(e.op("Mul", [qj, rest]), 1)
            rest = e.op("Sub", [rest, e.op("Mul", [qj, coeff])])
    return e.op("Concat", cols, {"axis": 2})


def jacobi_rotation(e: Emitter, b, kb: int):
    """Orthogonal V = exp(A) from the simultaneous Jacobi angles of symmetric b [N, kb, kb] (method.jacobi_rotation)."""
    eye = e.const(f"eye_{kb}", np.eye(kb, dtype=np.float32))
    bd = e.op("Mul", [b, eye])
    diff = e.op("Sub", [e.reduce_sum(bd, 1), e.reduce_sum(bd, 2)])  # [r, c] = d_c - d_r
    off2 = e.op("Mul", [b, e.const(f"offdiag2_{kb}", 2.0 * (1.0 - np.eye(kb, dtype=np.float32)))])
    root = e.op("Sqrt", [e.op("Sum", [e.op("Mul", [diff, diff]), e.op("Mul", [off2, off2]), e.scalar(TINY)])])
    tangent = e.op("Div", [e.op("Mul", [off2, e.op("Sign", [diff])]), e.op("Add", [e.op("Abs", [diff]), root])])
    angle = e.op("Atan", [tangent])
    x = e.op("Mul", [e.op("Sub", [angle, e.transpose(angle)]), e.scalar(0.5 * 0.5**EXP_SQUARINGS)])
    t = e.op("Add", [eye, e.op("Mul", [x, e.scalar(1.0 / EXP_TAYLOR_DEGREE)])])
    for j in range(EXP_TAYLOR_DEGREE - 1, 0, -1):
        xj = x if j == 1 else e.op("Mul", [x, e.scalar(1.0 / j)])
        t = e.op("Add", [eye, e.matmul(xj, t)])
    for _ in range(EXP_SQUARINGS):
        t = e.matmul(t, t)
    gram = e.matmul(e.transpose(t), t)
    polar = e.op("Sub", [e.const(f"eye1p5_{kb}", 1.5 * np.eye(kb, dtype=np.float32)), e.op("Mul", [gram, e.scalar(0.5)])])
    return e.matmul(t, polar)


def build_asvp(graph: gs.Graph, x: gs.Variable, cfg: AsvpConfig, channels: int, prefix: str) -> gs.Variable:
    """Append the ASVP subgraph for x [N, C, H, W] (C == channels) and return its output variable."""
    cfg.validate(channels)
    e = Emitter(graph, prefix)
    c, k = channels, cfg.k
    kb = block_width(c, k)

    m = e.op("Reshape", [x, e.const("shape_nc_", np.array([0, c, -1], np.int64))], label="to_matrix")
    gram = e.matmul(m, e.transpose(m))
    trace = e.reduce_sum(e.op("Mul", [gram, e.const(f"eye_{c}", np.eye(c, dtype=np.float32))]), 1, 2)
    g = e.op("Div", [gram, e.op("Add", [trace, e.scalar(EPS)])])
    gp = e.matmul(e.matmul(g, g), g)

    q = e.const("initial_basis", initial_basis(c, kb))
    for _ in range(cfg.iters):
        q = mgs(e, e.matmul(gp, q), kb)
    q = mgs(e, q, kb)

    b = e.matmul(e.transpose(q), e.matmul(g, q))
    for _ in range(JACOBI_STEPS):
        v = jacobi_rotation(e, b, kb)
        b = e.matmul(e.matmul(e.transpose(v), b), v)
        q = e.matmul(q, v)

    ritz = e.reduce_sum(e.op("Mul", [b, e.const(f"eye_{kb}", np.eye(kb, dtype=np.float32))]), 1, keepdims=0)
    energies, idx = e.op("TopK", [ritz, e.const("k", np.array([k], np.int64))],
                         {"axis": 1, "largest": 1, "sorted": 1}, n_out=2)
    idx = e.op("Expand", [e.op("Unsqueeze", [idx, e.axes(1)]), e.const("expand_c", np.array([1, c, 1], np.int64))])
    u = e.op("GatherElements", [q, idx], {"axis": 2})

    if cfg.k_mode == "adaptive":
        before = e.op("Sub", [e.op("CumSum", [energies, e.const("axis_1", np.array(1, np.int64))]), energies])
        mask = e.op("Cast", [e.op("Less", [before, e.scalar(cfg.tau)])], {"to": 1})  # 1 = FLOAT
        weight = e.op("Unsqueeze", [e.op("Mul", [mask, e.scalar(cfg.h - 1.0)]), e.axes(1)])
        scaled = e.op("Mul", [u, weight])
    else:
        scaled = e.op("Mul", [u, e.scalar(cfg.h - 1.0)])
    if c <= DENSE_APPLY_MAX_C:  # (I + U W U^T) M: one MatMul over M instead of two plus an Add
        p = e.op("Add", [e.matmul(scaled, e.transpose(u)), e.const(f"eye_{c}", np.eye(c, dtype=np.float32))])
        out = e.matmul(p, m)
    else:  # low rank, O(k C HW)
        out = e.op("Add", [m, e.matmul(scaled, e.matmul(e.transpose(u), m))])
    y = e.op("Reshape", [out, e.op("Shape", [x])], label="to_feature")
    return y


def emitted_op_types(cfg: AsvpConfig, channels: int) -> set[str]:
    """The operator types build_asvp emits for this configuration (tests check them against TensorRT's list)."""
    graph = gs.Graph(opset=OPSET)
    x = gs.Variable("x", dtype=np.float32, shape=["N", channels, "H", "W"])
    build_asvp(graph, x, cfg, channels, "probe")
    return {n.op for n in graph.nodes}


def standalone_model(channels: int, cfg: AsvpConfig, opset: int = OPSET):
    """An ONNX model that is only ASVP: x [N, C, H, W] -> ASVP(x) (for accuracy studies and benchmarks)."""
    graph = gs.Graph(opset=opset)
    x = gs.Variable("x", dtype=np.float32, shape=["N", channels, "H", "W"])
    graph.inputs = [x]
    y = build_asvp(graph, x, cfg, channels, "asvp/0")
    y.dtype, y.shape = np.float32, ["N", channels, "H", "W"]
    graph.outputs = [y]
    model = gs.export_onnx(graph.cleanup().toposort())
    model.ir_version = MAX_IR_VERSION
    check_model(model, "standalone ASVP model")
    return model

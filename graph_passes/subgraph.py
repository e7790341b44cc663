"""ASVP as a subgraph of standard ONNX ops (opset 17, default domain): runs on any ONNX runtime and TensorRT.

`build_asvp(graph, x, cfg, channels, prefix)` appends to an onnx-graphsurgeon graph the nodes computing
ASVP(x) for a rank-4 float32 tensor x [N, C, H, W] (N, H, W dynamic) and returns the output variable. It is,
operation for operation, `asvp.subspace.asvp_subspace` (the torch mirror; docs/method.md explains the algorithm):

    M = Reshape(x, [0, C, -1]);  r = GRAM_SCALE / Max(ReduceMax(Abs(M)), FEATURE_FLOOR);  G = (M r)(M r)^T + SIGMA I
    Gs = G / (trace(G) / sqrt(C)) + SHIFT sqrt(C) I        (r cancels here; the apply reads M itself)
    for j < kb - 1 (kb = block_width(C, k)):  P_j = I - sum_{i<j} v_i v_i^T,  A = P_j Gs (A = Gs for j = 0),
        A -> A^(2^s_j) by s_j MatMul squarings (Frobenius rescale where normalise_before says),
        v_j = LpNormalization(A x_j)                       (x = initial_basis(C, kb), a constant)
    v_{kb-1} = LpNormalization(P P A x_{kb-1}) with the last A;  Q = Concat(v)
    Rayleigh-Ritz: B = Q^T Gs Q, Q = Q jacobi_exp_step(B);  B = Q^T Gs Q, (V, d) = jacobi_polish_step(B), Q = Q V
    energies, idx = TopK(d, k);  U = GatherElements(Q, idx);  mask = CumSum_exclusive(energies) < thresholds
    out = Reshape((I + U diag((h - 1) mask) U^T) M, Shape(x))   (C <= 32)
        = x + Reshape(U diag((h - 1) mask) (U^T M), Shape(x))     (C > 32)

Every node and tensor name starts with `prefix` (e.g. "asvp/0"), unique per insertion. Only operators on
TensorRT's ONNX-parser support list are emitted (graph_passes/data/trt_onnx_supported_ops.json, checked by
tests), with the inputs TensorRT requires constant (CumSum axis, TopK K, Clip bounds, Expand
shape) as initializers. The small [N, C, C] and [N, kb, kb] contractions are Einsum (one node instead of a
Transpose and a MatMul); the two passes over the feature (Gram and apply) stay MatMul, which ONNX Runtime's CPU
provider runs about twice as fast as the equivalent Einsum. Diagonals, traces and the Jacobi angles' differences
d_c - d_r are Einsums with constant selection tensors (exact: their entries are 0, +-1, 2 or 1/sqrt(C) times one
term), one node each.

Precision: the nodes labelled in FEATURE_PASS_LABELS (the scaled Gram and the apply: the passes over the feature)
stay inside float16's range for any activation scale and up to 2^30 pixels, so they may run in float16 or bfloat16
(`is_feature_pass` tells them apart by name); every other node is the C x C solve, which must run in float32
(asvp.subspace.asvp_subspace says why; docs/method.md, "Reduced precision").
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from asvp.config import AsvpConfig
from asvp.subspace import (DENSE_APPLY_MAX_C, FEATURE_FLOOR, GRAM_SCALE, SHIFT, SIGMA, TINY, adaptive_thresholds,
                           block_width, column_squarings, initial_basis, normalise_before)
from asvp.onnx_utils import MAX_IR_VERSION, check_model

OPSET = 17
# Node labels of the passes over the feature (float16/bfloat16-safe); the rest of the subgraph is the C x C solve.
FEATURE_PASS_LABELS = ("to_matrix", "feature_abs", "feature_max", "gram_input", "gram_t", "gram", "apply", "apply_t",
                       "delta", "to_feature")


def is_feature_pass(node_name: str, prefix: str) -> bool:
    """Whether the node `node_name` of the ASVP block under `prefix` is a pass over the feature (see above)."""
    head = prefix.rstrip("/") + "/"
    return node_name.startswith(head) and node_name[len(head):].rsplit("_", 1)[0] in FEATURE_PASS_LABELS


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

    def reduce(self, op: str, x, *axes: int, keepdims: int = 1, label: str | None = None):
        """ReduceL2 / ReduceMax (not ReduceSum): their axes moved from attribute to input in opset 18."""
        if self.opset >= 18:
            return self.op(op, [x, self.axes(*axes)], {"keepdims": keepdims}, label)
        return self.op(op, [x], {"axes": list(axes), "keepdims": keepdims}, label)

    def reduce_l2(self, x, *axes: int, keepdims: int = 1):
        return self.reduce("ReduceL2", x, *axes, keepdims=keepdims)

    def transpose(self, x):
        return self.op("Transpose", [x], {"perm": [0, 2, 1]})

    def matmul(self, a, b):
        return self.op("MatMul", [a, b])

    def einsum(self, equation: str, *inputs):
        return self.op("Einsum", list(inputs), {"equation": equation})

    def lp_normalise(self, x, axis: int = 1):
        return self.op("LpNormalization", [x], {"axis": axis, "p": 2})

    def eye(self, n: int, scale: float = 1.0) -> gs.Constant:
        return self.const(f"eye_{n}_x{float(np.float32(scale)):.9g}", scale * np.eye(n, dtype=np.float32))


def deflated_basis(e: Emitter, gs_, c: int, kb: int, iters: int):
    """kb columns by sequentially deflated repeated squaring (subspace.deflated_basis), concatenated [N, C, kb]."""
    x = initial_basis(c, kb)
    squarings = column_squarings(iters, kb)
    cols, proj, p = [], None, None
    for j in range(kb):
        xj = e.const(f"initial_basis_{j}", x[:, j : j + 1])
        if j > 0:
            outer = e.einsum("nci,ndi->ncd", cols[-1], cols[-1])
            proj = e.op("Sub", [e.eye(c) if proj is None else proj, outer])
        if j == kb - 1 and j > 0:
            y = e.matmul(proj, e.matmul(proj, e.matmul(p, xj)))
        else:
            p = gs_ if j == 0 else e.matmul(proj, gs_)
            for i in range(squarings[j]):
                if normalise_before(j, i, c):
                    p = e.op("Div", [p, e.reduce_l2(p, 1, 2)])
                p = e.matmul(p, p)
            y = e.matmul(p, xj)
        cols.append(e.lp_normalise(y, 1))
    return cols[0] if kb == 1 else e.op("Concat", cols, {"axis": 2})


def diagonal_selector(n: int, scale: float) -> np.ndarray:
    """E [n, n, 1, n] with einsum("nij,ijac->nac", B, E) = scale * diag(B) as [N, 1, n]."""
    sel = np.zeros((n, n, 1, n))
    sel[np.arange(n), np.arange(n), 0, np.arange(n)] = scale
    return sel


def difference_selector(n: int, scale: float) -> np.ndarray:
    """D [n, n, n, n] with einsum("nij,ijrc->nrc", B, D) = scale * (B_cc - B_rr)."""
    sel = np.zeros((n, n, n, n))
    i = np.arange(n)
    sel[i, i, :, i] += scale  # term B_cc at column c = i
    sel[i, i, i, :] -= scale  # term -B_rr at row r = i (the diagonal r = c sums to 0)
    return sel


def _angles(e: Emitter, b, kb: int, diag_scale: float):
    """(d, S diff / (diff^2 + TINY)) for B: S = B + B^T (exactly symmetric), d = diag_scale * diag(S) [N, 1, kb],
    diff[r, c] = d_c - d_r, both read off B by Einsums (diag(S) = 2 diag(B) exactly). With diag_scale 0.5 the ratio
    is tan(2 phi) = 2 b / (d_c - d_r), with 1 it is the first-order angle b / (d_c - d_r). d is emitted only when
    the caller uses it (diag_scale 1)."""
    s = e.op("Add", [b, e.transpose(b)])
    scale = 2.0 * diag_scale
    d = e.einsum("nij,ijac->nac", b, e.const(f"diag_x{scale:g}", diagonal_selector(kb, scale))) \
        if diag_scale == 1.0 else None
    diff = e.einsum("nij,ijrc->nrc", b, e.const(f"diff_x{scale:g}", difference_selector(kb, scale)))
    num = e.op("Mul", [s, diff])
    den = e.op("Add", [e.op("Mul", [diff, diff]), e.scalar(TINY)])
    return d, e.op("Div", [num, den])


def jacobi_exp_step(e: Emitter, b, kb: int):
    """Orthogonal V = exp(Phi) from the exact 2 x 2 Jacobi angles of B (subspace.jacobi_exp_step)."""
    eye = e.eye(kb)
    _, tan2phi = _angles(e, b, kb, 0.5)
    a = e.op("Mul", [e.op("Atan", [tan2phi]), e.scalar(0.125)])  # phi / 4
    t = e.op("Add", [e.eye(kb, 0.5), e.matmul(a, e.op("Add", [eye, a]))])  # Taylor_2(phi / 2) / 2
    t = e.matmul(t, t)
    gram = e.einsum("nij,nik->njk", t, t)
    return e.matmul(t, e.op("Sub", [e.eye(kb, 6.0), e.op("Mul", [gram, e.scalar(32.0)])]))


def jacobi_polish_step(e: Emitter, b, kb: int):
    """First-order Jacobi rotation V and the doubled Ritz values 2 diag(B) (subspace.jacobi_polish_step)."""
    d, phi = _angles(e, b, kb, 1.0)
    phi = e.op("Clip", [phi, e.const("minus_one", np.array(-1.0, np.float32)), e.const("one", np.array(1.0, np.float32))])
    return e.lp_normalise(e.op("Add", [e.eye(kb), phi]), 1), d


def top_directions(e: Emitter, gram, cfg: AsvpConfig, c: int):
    """U [N, C, k] (the top-k Ritz vectors, descending) and the adaptive mask [N, 1, k] (bool; None for fixed k) from
    the Gram matrix M M^T + SIGMA I: scaled to trace sqrt(C) and shifted, then deflated repeated squaring and two
    Jacobi Rayleigh-Ritz steps."""
    k = cfg.k
    kb = block_width(c, k)
    trace_sel = (np.eye(c) / c**0.5).reshape(c, c, 1, 1)
    scale = e.einsum("nij,ijab->nab", gram, e.const("trace_sel", trace_sel))  # trace / sqrt(C), [N, 1, 1]
    gs_ = e.op("Add", [e.op("Div", [gram, scale]), e.eye(c, SHIFT * c**0.5)])
    q = deflated_basis(e, gs_, c, kb, cfg.iters)
    b = e.einsum("nci,ncj->nij", q, e.matmul(gs_, q))
    q = e.matmul(q, jacobi_exp_step(e, b, kb))
    b = e.einsum("nci,ncj->nij", q, e.matmul(gs_, q))
    v, ritz2 = jacobi_polish_step(e, b, kb)
    q = e.matmul(q, v)
    energies, idx = e.op("TopK", [ritz2, e.const("k", np.array([k], np.int64))],
                         {"axis": 2, "largest": 1, "sorted": 1}, n_out=2)
    idx = e.op("Expand", [idx, e.const("expand_c", np.array([1, c, 1], np.int64))])
    u = e.op("GatherElements", [q, idx], {"axis": 2})
    if cfg.k_mode != "adaptive":
        return u, None
    before = e.op("CumSum", [energies, e.const("axis_2", np.array(2, np.int64))], {"exclusive": 1})
    return u, e.op("Less", [before, e.const("thresholds", adaptive_thresholds(c, cfg))])


def build_asvp(graph: gs.Graph, x: gs.Variable, cfg: AsvpConfig, channels: int, prefix: str) -> gs.Variable:
    """Append the ASVP subgraph for x [N, C, H, W] (C == channels) and return its output variable."""
    cfg.validate(channels)
    e = Emitter(graph, prefix)
    c = channels

    m = e.op("Reshape", [x, e.const("shape_nc_", np.array([0, c, -1], np.int64))], label="to_matrix")
    gram = e.op("Add", [scaled_gram(e, m), e.eye(c, SIGMA)])
    u, amplified = top_directions(e, gram, cfg, c)
    weight = e.scalar(cfg.h - 1.0) if amplified is None else \
        e.op("Where", [amplified, e.scalar(cfg.h - 1.0), e.scalar(0.0)])
    return apply_update(e, x, m, u, e.op("Mul", [u, weight]), c)


def scaled_gram(e: Emitter, m):
    """(M r)(M r)^T with r = GRAM_SCALE / max(max|M|, FEATURE_FLOOR) per sample [N, 1, 1]: every entry of M r is at
    most GRAM_SCALE, so the product stays inside float16's range whatever the feature's scale (asvp.subspace)."""
    peak = e.reduce("ReduceMax", e.op("Abs", [m], label="feature_abs"), 1, 2, label="feature_max")
    r = e.op("Div", [e.scalar(GRAM_SCALE), e.op("Max", [peak, e.scalar(FEATURE_FLOOR)], label="gram_input")],
             label="gram_input")
    ms = e.op("Mul", [m, r], label="gram_input")
    return e.op("MatMul", [ms, e.op("Transpose", [ms], {"perm": [0, 2, 1]}, label="gram_t")], label="gram")


def apply_update(e: Emitter, x, m, u, scaled, c: int):
    """The perturbed feature (I + scaled U^T) M, shaped as x [N, C, H, W], from M = m [N, C, HW] (x as a matrix),
    U [N, C, k] and scaled = U diag(weights) [N, C, k]: dense up to DENSE_APPLY_MAX_C, low rank above (the forms
    faster on CPU; docs/method.md section 6)."""
    if c <= DENSE_APPLY_MAX_C:  # (I + U W U^T) M: one MatMul over M instead of two plus an Add
        p = e.op("Add", [e.einsum("nck,ndk->ncd", scaled, u), e.eye(c)])
        return e.op("Reshape", [e.op("MatMul", [p, m], label="apply"), e.op("Shape", [x])], label="to_feature")
    # Low rank, O(k C HW). The sum is taken with x itself (4-D), so the Add writes the output tensor directly: a
    # Reshape that produces a graph output (tap placement) is a full copy on ONNX Runtime, a Reshape inside is free.
    coeffs = e.op("MatMul", [e.op("Transpose", [u], {"perm": [0, 2, 1]}, label="apply_t"), m], label="apply")
    delta = e.op("Reshape", [e.op("MatMul", [scaled, coeffs], label="apply"), e.op("Shape", [x])], label="delta")
    return e.op("Add", [x, delta], label="to_feature")  # the block's output node is always named to_feature


def graph_depth(model) -> tuple[int, int]:
    """(node count, longest chain of data-dependent nodes) of an ONNX model: the chain bounds how many kernels a
    GPU must run one after another, whatever the parallelism inside each."""
    producer = {out: i for i, node in enumerate(model.graph.node) for out in node.output}
    depth: list[int] = []
    for node in model.graph.node:  # ONNX graphs are stored topologically sorted
        depth.append(1 + max((depth[producer[t]] for t in node.input if t in producer), default=0))
    return len(depth), max(depth, default=0)


def emitted_op_types(cfg: AsvpConfig, channels: int) -> set[str]:
    """The operator types build_asvp emits for this configuration (tests check them against TensorRT's list)."""
    graph = gs.Graph(opset=OPSET)
    x = gs.Variable("x", dtype=np.float32, shape=["N", channels, "H", "W"])
    build_asvp(graph, x, cfg, channels, "probe")
    return {n.op for n in graph.nodes}


def standalone_model(channels: int, cfg: AsvpConfig, opset: int = OPSET, build=None):
    """An ONNX model that is only ASVP: x [N, C, H, W] -> ASVP(x) (for accuracy studies and benchmarks). `build`:
    the block builder (default build_asvp; graph_passes.variants passes its own)."""
    graph = gs.Graph(opset=opset)
    x = gs.Variable("x", dtype=np.float32, shape=["N", channels, "H", "W"])
    graph.inputs = [x]
    y = (build or build_asvp)(graph, x, cfg, channels, "asvp/0")
    y.dtype, y.shape = np.float32, ["N", channels, "H", "W"]
    graph.outputs = [y]
    model = gs.export_onnx(graph.cleanup().toposort())
    model.ir_version = MAX_IR_VERSION
    check_model(model, "standalone ASVP model")
    return model

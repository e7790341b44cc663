"""The keyed defence variants (docs/variants.md) as standard ONNX ops: `build_defence` is what defend inserts.

`build_defence(graph, x, cfg, channels, prefix)` returns subgraph.build_asvp's block for the paper's ASVP and, for
a keyed variant (cfg.variant "keyed-h" or "keyed-rotation"), a block computing `asvp.variants.variant_reference` up to
float32 round-off and the subspace approximation:

    M, Gs, Q, U, energies, mask       as in subgraph.build_asvp (same helpers, same constants)
    u_q  = acos(Sin(freq @ log(C diag(Y Y^T) / trace(G)) + phase)) / pi, Y = proj M     (the keyed hash)
    keyed-h:        H = Where(mask, h + (h_max - h) u_q, 1);  out = (I + U diag(H - 1) U^T) M
    keyed-rotation: H = Where(mask, h, 1);  theta = angle_max (2 u_q - 1) sign(det(pair plane vs key vectors));
                    A = (I cos + S sin)(theta per column) H - I;  out = (I + U A U^T) M
    (as x + U (A (U^T M)) when C > DENSE_APPLY_MAX_C: subgraph.apply_update, the paper block's own apply)

The hash reads the feature's own statistics, so every sample of a batch gets its own value. Only operators on
TensorRT's ONNX-parser list are used (Sin, Cos, Acos, Sign, Log besides build_asvp's). Plugin mode has no
variants (graph_passes.defend refuses them).
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from asvp.config import DEFAULT_ANGLE_MAX, AsvpConfig
from asvp.subspace import SIGMA
from asvp.variants import key_constants, pair_selector, rotation_pairs, rotation_sign_pattern
from asvp.graph_passes.subgraph import Emitter, apply_update, build_asvp, standalone_model, top_directions


def build_defence(graph: gs.Graph, x: gs.Variable, cfg: AsvpConfig, channels: int, prefix: str) -> gs.Variable:
    """The block defend inserts for cfg: the paper's subgraph, or a keyed variant's."""
    if not cfg.keyed:
        return build_asvp(graph, x, cfg, channels, prefix)
    return build_keyed(graph, x, cfg, channels, prefix)


def keyed_uniforms(e: Emitter, m, gram, c: int, consts: dict):
    """[N, 1, n] in [0, 1]: the keyed hash of each sample's matrix m [N, C, P] (variants.keyed_uniforms), given its
    Gram matrix M M^T + SIGMA I. The sums come from MatMuls (blocked accumulation: ~1e-6 relative error in float32);
    a single ReduceSumSquare over all C x P elements is ~100x less accurate."""
    n_stats = consts["proj"].shape[0]
    y = e.matmul(e.const("key_proj", consts["proj"]), m)  # [N, L, P]
    num = e.reduce_sum(e.op("Mul", [e.matmul(y, e.transpose(y)), e.eye(n_stats)]), 2)  # [N, L, 1]
    num = e.op("Add", [num, e.scalar(SIGMA)])
    total = e.reduce_sum(e.op("Mul", [gram, e.eye(c, 1.0 / c)]), 1, 2)  # trace / C, [N, 1, 1]
    logq = e.op("Log", [e.op("Div", [num, total])])
    logq = e.transpose(logq)  # [N, 1, L]
    phases = e.op("Add", [e.matmul(logq, e.const("key_freq_t", consts["freq"].T)),
                          e.const("key_phase", consts["phase"].reshape(1, 1, -1))])
    return e.op("Mul", [e.op("Acos", [e.op("Sin", [phases])]), e.scalar(1.0 / np.pi)])


def _top_directions(e: Emitter, gram, cfg: AsvpConfig, c: int):
    """U [N, C, k] (descending) and the adaptive mask [N, 1, k] (bool) from the Gram matrix M M^T + SIGMA I, exactly
    as subgraph.build_asvp finds them (subgraph.top_directions); a fixed k amplifies all k."""
    u, mask = top_directions(e, gram, cfg, c)
    if mask is None:
        mask = e.const("all_amplified", np.ones((1, 1, cfg.k), dtype=bool))
    return u, mask


def _rotation_core(e: Emitter, uniforms, u, weight, cfg: AsvpConfig, c: int, consts: dict):
    """A = R_q H - I [N, k, k] (variants.keyed_rotation_core)."""
    k = cfg.k
    pairs = rotation_pairs(k)
    angle = np.deg2rad(cfg.angle_max if cfg.angle_max is not None else DEFAULT_ANGLE_MAX)
    theta = e.op("Mul", [e.op("Sub", [e.op("Mul", [uniforms, e.scalar(2.0)]), e.scalar(1.0)]), e.scalar(angle)])
    a_col = e.const("key_orient_a", (consts["orient_a"].T @ pairs).reshape(1, c, k))
    b_col = e.const("key_orient_b", (consts["orient_b"].T @ pairs).reshape(1, c, k))
    pa = e.reduce_sum(e.op("Mul", [u, a_col]), 1)  # [N, 1, k]
    pb = e.reduce_sum(e.op("Mul", [u, b_col]), 1)
    sel_e, sel_o = e.const("pair_first", pair_selector(k, 0)), e.const("pair_second", pair_selector(k, 1))
    det = e.op("Sub", [e.op("Mul", [e.matmul(pa, sel_e), e.matmul(pb, sel_o)]),
                       e.op("Mul", [e.matmul(pb, sel_e), e.matmul(pa, sel_o)])])  # [N, 1, n_pairs]
    theta_col = e.matmul(e.op("Mul", [theta, e.op("Sign", [det])]), e.const("pairs", pairs))  # [N, 1, k]
    rot = e.op("Add", [e.op("Mul", [e.eye(k), e.op("Cos", [theta_col])]),
                       e.op("Mul", [e.const("rotation_signs", rotation_sign_pattern(k)), e.op("Sin", [theta_col])])])
    return e.op("Sub", [e.op("Mul", [rot, weight]), e.eye(k)])


def build_keyed(graph: gs.Graph, x: gs.Variable, cfg: AsvpConfig, channels: int, prefix: str) -> gs.Variable:
    """Append a keyed variant's block for x [N, C, H, W] (C == channels) and return its output variable."""
    cfg.validate(channels)
    e = Emitter(graph, prefix)
    c = channels
    consts = key_constants(cfg, c)
    m = e.op("Reshape", [x, e.const("shape_nc_", np.array([0, c, -1], np.int64))], label="to_matrix")
    gram = e.op("Add", [e.matmul(m, e.transpose(m)), e.eye(c, SIGMA)])
    uniforms = keyed_uniforms(e, m, gram, c, consts)  # [N, 1, n]
    u, mask = _top_directions(e, gram, cfg, c)
    if cfg.variant == "keyed-h":
        h_q = e.op("Add", [e.op("Mul", [uniforms, e.scalar(cfg.h_max - cfg.h)]), e.scalar(cfg.h)])  # [N, 1, 1]
        weight = e.op("Where", [mask, e.op("Sub", [h_q, e.scalar(1.0)]), e.scalar(0.0)])  # [N, 1, k]
        left = e.op("Mul", [u, weight])  # U diag(H - 1)
    else:
        weight = e.op("Where", [mask, e.scalar(cfg.h), e.scalar(1.0)])
        left = e.matmul(u, _rotation_core(e, uniforms, u, weight, cfg, c, consts))  # U A
    return apply_update(e, x, m, u, left, c)  # (I + left U^T) M, as the paper's block applies it


def standalone_variant_model(channels: int, cfg: AsvpConfig):
    """An ONNX model that is only the defence block: x [N, C, H, W] -> block(x) (tests and accuracy studies)."""
    return standalone_model(channels, cfg, build=build_defence)

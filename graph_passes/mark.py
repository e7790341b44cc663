"""Insert the keyed fingerprint mark (asvp.fingerprint) into an ONNX model, and record where it is.

    F' = F + Conv1x1(F, A)      A = eps * W S_u W^T  (C x C), standard ONNX ops only (Conv, Add)

`mark_model(model, tensor, mix)` bakes a mix matrix in as a constant (the served, marked model);
`probe_model(model, tensor)` makes the mix a graph input `asvp_fp_mix` [C, C, 1, 1] instead, so the verifier can
run the clean model with any basis mark without rebuilding it. The mark replaces the feature for every consumer
(inline): the outputs carry it.

Metadata (`asvp.fingerprint`, JSON): version, node, tensor, channels, m, eps, basis (W, C x m, public), the
measured strength, basis_eps (the verifier's key-free scale), the equalizer R, the cost calibration and, where
the key space was chosen away from the bias of students of the clean model, which students (all key-free). The
key, and anything derived from it alone, is never written.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from asvp.errors import AsvpError
from asvp.fingerprint import MARK_VERSION
from asvp.graph_passes import select
from asvp.graph_passes.surgery import check_graph, finalize_like, rewire_consumers
from asvp.onnx_utils import META_PREFIX, get_metadata, set_metadata

META_FINGERPRINT = META_PREFIX + "fingerprint"
MIX_INPUT = "asvp_fp_mix"
PREFIX = "asvp_fp/"


@dataclass
class MarkInfo:
    """Where and how strongly a model is marked (public: what `asvp.fingerprint` records)."""

    node: str
    tensor: str
    channels: int
    m: int
    eps: float
    basis: list  # W, C x m (nested lists)
    strength_db: float | None = None  # PSNR of the marked vs the clean output on the calibration probes
    version: int = MARK_VERSION
    basis_eps: float | None = None  # the verifier's basis-mark scale (calibrated on a public direction, key-free)
    equalizer: list | None = None  # R, D x D' (nested lists): key directions -> symmetric-basis coefficients
    cost: dict | None = None  # how eps was derived from the teacher's budget (calibration data, drop), key-free
    bias: dict | None = None  # key space kept away from these students' deviations (mark time), key-free; or None

    def r(self) -> np.ndarray:
        d = self.m * (self.m + 1) // 2
        return np.asarray(self.equalizer, np.float64) if self.equalizer is not None else np.eye(d)

    @property
    def key_dim(self) -> int:
        return int(self.r().shape[1])

    @property
    def probe_eps(self) -> float:
        return float(self.basis_eps if self.basis_eps is not None else self.eps)

    def w(self) -> np.ndarray:
        return np.asarray(self.basis, np.float64)

    def to_dict(self) -> dict:
        return asdict(self)

    def public(self) -> dict:
        """For reports: everything but the basis matrices."""
        return {**{k: v for k, v in asdict(self).items() if k not in ("basis", "equalizer")}, "key_dim": self.key_dim}


def read_mark(model: onnx.ModelProto) -> MarkInfo | None:
    raw = get_metadata(model).get(META_FINGERPRINT)
    if raw is None:
        return None
    try:
        d = json.loads(raw)
        info = MarkInfo(**{k: d[k] for k in MarkInfo.__dataclass_fields__ if k in d})
        w = info.w()
    except (json.JSONDecodeError, TypeError, KeyError, ValueError) as exc:
        raise AsvpError(f"the model's {META_FINGERPRINT} metadata is not valid: {exc}") from None
    if w.shape != (info.channels, info.m):
        raise AsvpError(f"the model's {META_FINGERPRINT} basis has shape {list(w.shape)}, "
                        f"expected [{info.channels}, {info.m}]")
    d = info.m * (info.m + 1) // 2
    if info.r().ndim != 2 or info.r().shape[0] != d:
        raise AsvpError(f"the model's {META_FINGERPRINT} equalizer has shape {list(info.r().shape)}, expected [{d}, D']")
    if info.version != MARK_VERSION:
        raise AsvpError(f"fingerprint mark version {info.version} is not supported (this asvp reads {MARK_VERSION})")
    return info


def default_feature(model: onnx.ModelProto, m: int):
    """Where the mark goes when no node is named: the candidate closest to the output (last in topological order)
    with at least 2m channels, or else the widest candidate. Why the output end: a student has to reproduce the
    mark's output change, and a feature read by few layers changes the output by a near-linear function of itself,
    which a student's last layers learn; measured on lowlight, the mark at the U-Net bottleneck (defend's automatic
    node) was not learned even by a converged student (1024 queries, 3000 steps: p = 0.36), the same mark at the
    last decoder feature was (p = 4e-6). On the other bundled teachers this is defend's automatic node."""
    cands = select.candidates(model)
    if not cands:
        raise AsvpError("the model has no candidate feature map for the mark (see `asvp nodes`)")
    deep = [c for c in cands if c.channels >= 2 * m]
    return deep[-1] if deep else max(reversed(cands), key=lambda c: c.channels)


def resolve_feature(model: onnx.ModelProto, selector: str | None, m: int = 8):
    """The feature (FeatureNode) a selector names (as for defend; "auto" is defend's automatic choice); no selector:
    default_feature."""
    if selector is None:
        return default_feature(model, m)
    feats = select.resolve(model, [selector])
    if len(feats) != 1:
        raise AsvpError(f"the fingerprint mark goes at exactly one feature; {selector!r} selects {len(feats)}")
    return feats[0]


def check_unmarked(model: onnx.ModelProto) -> None:
    """AsvpError when the model already carries a mark: one mark per model."""
    if get_metadata(model).get(META_FINGERPRINT) is not None:
        raise AsvpError("the model is already fingerprinted (metadata asvp.fingerprint); mark the clean or the "
                        "ASVP-defended model, not a marked one")


def add_mark(graph: gs.Graph, tensor: str, weight) -> None:
    """The edit on the graph: F' = F + Conv1x1(F, weight) replaces `tensor` for every consumer; `weight` is a
    constant (the served mark) or a new graph input (the probe model)."""
    x = graph.tensors().get(tensor)
    if not isinstance(x, gs.Variable):
        raise AsvpError(f"tensor {tensor!r} is not a variable tensor of the graph")
    delta = gs.Variable(PREFIX + "delta", dtype=np.float32)
    y = gs.Variable(PREFIX + "marked", dtype=np.float32, shape=x.shape)
    graph.nodes.append(gs.Node("Conv", PREFIX + "mix", inputs=[x, weight], outputs=[delta],
                               attrs={"kernel_shape": [1, 1]}))
    graph.nodes.append(gs.Node("Add", PREFIX + "add", inputs=[x, delta], outputs=[y]))
    rewire_consumers(graph, x, y, PREFIX)
    if isinstance(weight, gs.Variable):
        graph.inputs.append(weight)


def _insert(model: onnx.ModelProto, tensor: str, weight) -> onnx.ModelProto:
    check_unmarked(model)
    graph = gs.import_onnx(model)
    add_mark(graph, tensor, weight)
    graph.cleanup().toposort()
    out = gs.export_onnx(graph)
    finalize_like(out, model, plugin=False)
    return out


def mark_model(model: onnx.ModelProto, info: MarkInfo, mix: np.ndarray) -> onnx.ModelProto:
    """The marked copy: mix [C, C] baked in as a constant 1x1 convolution; `info` recorded in the metadata."""
    mix = np.asarray(mix, np.float32)
    if mix.shape != (info.channels, info.channels):
        raise AsvpError(f"mix matrix shape {list(mix.shape)} does not match {info.channels} channels")
    out = _insert(model, info.tensor, gs.Constant(PREFIX + "A", mix.reshape(info.channels, info.channels, 1, 1)))
    set_metadata(out, {META_FINGERPRINT: json.dumps(info.to_dict())})
    check_graph(out, "fingerprinted model")
    return out


def probe_model(model: onnx.ModelProto, tensor: str, channels: int) -> onnx.ModelProto:
    """The clean model with the mark's matrix as an extra input `asvp_fp_mix` [C, C, 1, 1] (zeros = the clean model)."""
    w = gs.Variable(MIX_INPUT, dtype=np.float32, shape=[channels, channels, 1, 1])
    return _insert(model, tensor, w)

"""Plugin mode: ASVP as ONE custom node instead of the standard-op subgraph.

The contract shared with runtime/plugin_ort.py (onnxruntime-extensions Python custom op) and
runtime/plugin_trt.py (TensorRT plugin):

    op_type  "AsvpPerturb" (PLUGIN_OP), domain "ai.onnx.contrib" (PLUGIN_DOMAIN: the only domain the
             onnxruntime-extensions Python custom ops accept), opset_import {"ai.onnx.contrib": 1}
    attributes  plugin_namespace="asvp" (string), plugin_version="1" (string): TensorRT's ONNX parser looks the
                plugin creator up by op_type + these two; k (int), h (float), tau (float), adaptive (int 0/1),
                placement (string, "inline" | "tap", informational)
    one float32 input [N, C, H, W] -> one float32 output of the same shape (declared in value_info / as the
    graph output, so ONNX shape inference downstream of the node still works)

The kernels compute ASVP exactly (asvp.method.asvp_exact); `iters` does not apply to plugin mode.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from asvp.config import AsvpConfig

PLUGIN_OP = "AsvpPerturb"
PLUGIN_DOMAIN = "ai.onnx.contrib"
PLUGIN_DOMAIN_VERSION = 1
PLUGIN_NAMESPACE = "asvp"
PLUGIN_VERSION = "1"


def plugin_attrs(cfg: AsvpConfig) -> dict:
    """The node attributes for a configuration (ordered as the contract lists them)."""
    return {
        "plugin_namespace": PLUGIN_NAMESPACE,
        "plugin_version": PLUGIN_VERSION,
        "k": int(cfg.k),
        "h": float(cfg.h),
        "tau": float(cfg.tau),
        "adaptive": 1 if cfg.k_mode == "adaptive" else 0,
        "placement": str(cfg.placement),
    }


def build_plugin(graph: gs.Graph, x: gs.Variable, cfg: AsvpConfig, channels: int, prefix: str,
                 shape: list | None = None) -> gs.Variable:
    """Append one AsvpPerturb node reading x [N, C, H, W]; returns its float32 output (shape = x's)."""
    cfg.validate(channels)
    name = f"{prefix.rstrip('/')}/{PLUGIN_OP}"
    out = gs.Variable(f"{name}:0", dtype=np.float32, shape=list(shape) if shape is not None else x.shape)
    graph.layer(op=PLUGIN_OP, name=name, domain=PLUGIN_DOMAIN, inputs=[x], outputs=[out], attrs=plugin_attrs(cfg))
    return out


def ensure_domain(model: onnx.ModelProto) -> None:
    """Declare the plugin domain in opset_import (onnx.checker requires every node domain to be imported)."""
    if not any(o.domain == PLUGIN_DOMAIN for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(PLUGIN_DOMAIN, PLUGIN_DOMAIN_VERSION))


def plugin_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == PLUGIN_OP and n.domain == PLUGIN_DOMAIN]


def node_config(node: onnx.NodeProto, iters: int | None = None) -> AsvpConfig:
    """The AsvpConfig an AsvpPerturb node encodes (iters is not part of the contract)."""
    a = {attr.name: onnx.helper.get_attribute_value(attr) for attr in node.attribute}
    kw = dict(h=float(a["h"]), k=int(a["k"]), k_mode="adaptive" if int(a["adaptive"]) else "fixed", tau=float(a["tau"]))
    if "placement" in a:
        p = a["placement"]
        kw["placement"] = p.decode() if isinstance(p, bytes) else str(p)
    if iters is not None:
        kw["iters"] = iters
    return AsvpConfig(**kw)

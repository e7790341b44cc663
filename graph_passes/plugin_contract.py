"""The AsvpPerturb plugin contract: the one home of what a plugin node is, for the pass that inserts it
(graph_passes.defend, plugin mode) and the runtimes that execute it (runtime.engines.plugin_ort for ONNX
Runtime, runtime.engines.plugin_trt for TensorRT).

    op_type  "AsvpPerturb" (PLUGIN_OP), domain "ai.onnx.contrib" (PLUGIN_DOMAIN: the only domain the
             onnxruntime-extensions Python custom ops accept), opset_import {"ai.onnx.contrib": 1}
    attributes  plugin_namespace="asvp" (string), plugin_version="1" (string): TensorRT's ONNX parser looks the
                plugin creator up by op_type + these two (the domain is at most a fallback namespace);
                k (int), h (float), tau (float), adaptive (int 0/1), placement (string, "inline" | "tap",
                informational)
    one float32 input [N, C, H, W] -> one float32 output of the same shape (declared in value_info / as the
    graph output, so ONNX shape inference downstream of the node still works)
    (float32 only: float16/bfloat16 tensors are not part of the contract; the TensorRT plugin also declares FP32
    and, under --fp16, TensorRT inserts the casts around it)

The kernels compute ASVP exactly (asvp.method.asvp_exact); `iters` does not apply to plugin mode. One ONNX file
serves both runtimes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from asvp.config import AsvpConfig
from asvp.errors import AsvpError

PLUGIN_OP = "AsvpPerturb"
PLUGIN_DOMAIN = "ai.onnx.contrib"
PLUGIN_DOMAIN_VERSION = 1
PLUGIN_NAMESPACE = "asvp"
PLUGIN_VERSION = "1"
PLUGIN_ID = f"{PLUGIN_NAMESPACE}::{PLUGIN_OP}"

# attribute name -> ONNX attribute type. The kernels need only KERNEL_ATTRS.
CONTRACT_ATTRS = {
    "plugin_namespace": onnx.AttributeProto.STRING,
    "plugin_version": onnx.AttributeProto.STRING,
    "k": onnx.AttributeProto.INT,
    "h": onnx.AttributeProto.FLOAT,
    "tau": onnx.AttributeProto.FLOAT,
    "adaptive": onnx.AttributeProto.INT,
    "placement": onnx.AttributeProto.STRING,
}
KERNEL_ATTRS = ("k", "h", "tau", "adaptive")
STANDARD_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "ai.onnx.training", "ai.onnx.preview.training"}


# ---- writing nodes ---------------------------------------------------------------------------------------

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


# ---- reading nodes ---------------------------------------------------------------------------------------

def config_from_attrs(k: int, h: float, tau: float, adaptive: int, placement: str = "inline") -> AsvpConfig:
    """The AsvpConfig a node's attributes describe.

    h and tau are rounded to float32 first: ONNX stores FLOAT attributes as float32 and TensorRT hands them to
    the plugin as float32, so rounding here makes the ONNX Runtime and TensorRT kernels use identical values.
    """
    return AsvpConfig(h=float(np.float32(h)), k=int(k), k_mode="adaptive" if int(adaptive) else "fixed",
                      tau=float(np.float32(tau)), placement=str(placement))


@dataclass(frozen=True)
class PluginNode:
    """One AsvpPerturb node of a model, checked against the contract."""

    name: str
    input: str
    output: str
    config: AsvpConfig

    def to_dict(self) -> dict:
        return {"name": self.name, "input": self.input, "output": self.output, "config": self.config.to_dict()}


def is_plugin_node(node: onnx.NodeProto) -> bool:
    return node.op_type == PLUGIN_OP and node.domain == PLUGIN_DOMAIN


def _attr_value(attr: onnx.AttributeProto):
    value = onnx.helper.get_attribute_value(attr)
    return value.decode() if isinstance(value, bytes) else value


def check_plugin_node(node: onnx.NodeProto) -> PluginNode:
    """Validate one AsvpPerturb node; every problem is one AsvpError line naming the node."""
    ident = node.name or (node.output[0] if node.output else "?")
    label = f"{PLUGIN_OP} node {ident!r}"
    attrs = {a.name: a for a in node.attribute}
    missing = [n for n in CONTRACT_ATTRS if n not in attrs]
    if missing:
        raise AsvpError(f"{label} lacks attribute(s) {', '.join(missing)}; re-create it with asvp defend --mode plugin")
    for name, kind in CONTRACT_ATTRS.items():
        if attrs[name].type != kind:
            want = onnx.AttributeProto.AttributeType.Name(kind)
            got = onnx.AttributeProto.AttributeType.Name(attrs[name].type)
            raise AsvpError(f"{label}: attribute {name} must be {want}, got {got}")
    values = {name: _attr_value(attrs[name]) for name in CONTRACT_ATTRS}
    if values["plugin_namespace"] != PLUGIN_NAMESPACE or values["plugin_version"] != PLUGIN_VERSION:
        raise AsvpError(f"{label} asks for plugin {values['plugin_namespace']}::{PLUGIN_OP} version "
                        f"{values['plugin_version']!r}; this asvp provides {PLUGIN_NAMESPACE}::{PLUGIN_OP} "
                        f"version {PLUGIN_VERSION!r}")
    if values["adaptive"] not in (0, 1):
        raise AsvpError(f"{label}: adaptive must be 0 or 1, got {values['adaptive']}")
    if len(node.input) != 1 or len(node.output) != 1:
        raise AsvpError(f"{label} must have exactly one input and one output "
                        f"(has {len(node.input)} and {len(node.output)})")
    try:
        cfg = config_from_attrs(**{n: values[n] for n in KERNEL_ATTRS}, placement=values["placement"]).validate()
    except AsvpError as exc:
        raise AsvpError(f"{label}: {exc}") from None
    return PluginNode(node.name, node.input[0], node.output[0], cfg)


def plugin_nodes(model: onnx.ModelProto) -> list[PluginNode]:
    """Every AsvpPerturb node of the main graph, validated (empty for models without plugin nodes)."""
    return [check_plugin_node(n) for n in model.graph.node if is_plugin_node(n)]


def has_plugin_nodes(model: onnx.ModelProto) -> bool:
    return any(is_plugin_node(n) for n in model.graph.node)


def foreign_custom_ops(model: onnx.ModelProto) -> list[str]:
    """"domain::op" of main-graph nodes that are neither standard ONNX/ORT ops, AsvpPerturb nor local functions."""
    local = {(f.domain, f.name) for f in model.functions}
    found = []
    for n in model.graph.node:
        key = f"{n.domain}::{n.op_type}"
        if n.domain not in STANDARD_DOMAINS and not is_plugin_node(n) and (n.domain, n.op_type) not in local \
                and key not in found:
            found.append(key)
    return found


def identity_surrogate(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with AsvpPerturb nodes read as Identity (same shape), so that shape inference completes
    (ONNX Runtime's symbolic inference stops at unknown ops and leaves a temporary file in the working directory).
    Returns `model` itself when it has no plugin nodes."""
    if not has_plugin_nodes(model):
        return model
    surrogate = onnx.ModelProto()
    surrogate.CopyFrom(model)
    for n in surrogate.graph.node:
        if is_plugin_node(n):
            n.op_type, n.domain = "Identity", ""
            del n.attribute[:]
    kept = [o for o in surrogate.opset_import if o.domain != PLUGIN_DOMAIN]
    del surrogate.opset_import[:]
    surrogate.opset_import.extend(kept)
    return surrogate

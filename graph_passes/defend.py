"""Insert ASVP into an ONNX model at selected feature nodes (onnx-graphsurgeon), as a standard-op subgraph or as
one AsvpPerturb plugin node.

    model, info = defend_model(onnx.load("sr.onnx"), ["auto"], AsvpConfig(), mode="subgraph")
    info = defend_file("sr.onnx", "sr.asvp.onnx", nodes=["/Add"], config=AsvpConfig(placement="tap"))

Placements: "inline" replaces the feature by its perturbation for every consumer (a graph output too: the
perturbed tensor then takes the output's name); "tap" leaves the network unchanged and adds the perturbed
feature as an extra float32 graph output `asvp_tap_<i>` [N, C, H, W].

The defence is recorded in the model's metadata (graph_passes.metadata: asvp.defended, asvp.mode, asvp.placement,
asvp.nodes, asvp.config, asvp.config_digest). A node already listed in asvp.nodes (or any ASVP-inserted node) is
refused unless allow_redefend: the new block then perturbs the already-perturbed feature again.
"""
from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from asvp.config import AsvpConfig
from asvp.constants import DEFEND_MODES
from asvp.errors import AsvpError
from asvp.graph_passes import plugin_contract, select
from asvp.graph_passes.metadata import META_NODES, read_defence, write_defence
from asvp.graph_passes.surgery import (check_graph, default_opset, finalize_like, next_free_index, output_dims,
                                      rewire_consumers)
from asvp.graph_passes.variants import build_defence
from asvp.onnx_utils import image_input, load_model, save_model

MODES = DEFEND_MODES
MIN_OPSET = 13  # ReduceSum/Split/Unsqueeze take axes/sizes as inputs from opset 13
TAP_PREFIX = "asvp_tap_"
_BLOCK = re.compile(r"^asvp/(\d+)/")


@dataclass
class DefendInfo:
    mode: str
    placement: str
    nodes: list  # records of the nodes defended by this call
    config: dict
    digest: str
    all_nodes: list = field(default_factory=list)  # every record in asvp.nodes after this call
    inserted_nodes: int = 0  # ONNX nodes added

    def to_dict(self) -> dict:
        return asdict(self)


def previous_records(model: onnx.ModelProto) -> list[dict]:
    """The asvp.nodes records of every earlier defence of this model (as stored)."""
    return [n.record() for n in read_defence(model).nodes]


def _check_mode(mode: str, cfg: AsvpConfig | None = None) -> None:
    if mode not in MODES:
        raise AsvpError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "plugin" and cfg is not None and cfg.variant != "paper":
        raise AsvpError(f"variant {cfg.variant} exists only in subgraph mode; the plugin computes the paper's ASVP")


def _as_config(config) -> AsvpConfig:
    if config is None:
        return AsvpConfig()
    if isinstance(config, dict):
        unknown = set(config) - set(AsvpConfig.__dataclass_fields__)
        if unknown:
            raise AsvpError(f"unknown config field(s): {', '.join(sorted(unknown))}")
        return AsvpConfig.from_dict(config)
    if not isinstance(config, AsvpConfig):
        raise AsvpError(f"config must be an AsvpConfig or a dict, got {type(config).__name__}")
    return config


def defend_model(model: onnx.ModelProto, selectors=None, config: AsvpConfig | dict | None = None,
                 mode: str = "subgraph", allow_redefend: bool = False, *, input_name: str | None = None,
                 force_nodes: bool = False) -> tuple[onnx.ModelProto, DefendInfo]:
    """A defended copy of `model` (the input is not modified) and what was done.

    input_name: the image input of a model with extra inputs (default: detected). force_nodes: take exactly
    named tensors that are not feature maps (see graph_passes.select)."""
    cfg = _as_config(config).validate()
    _check_mode(mode, cfg)
    opset = default_opset(model)
    if opset < MIN_OPSET:
        raise AsvpError(f"the model uses opset {opset}; asvp defend needs opset >= {MIN_OPSET} (re-export with a newer opset)")

    features = select.resolve(model, selectors, input_name=input_name, force_nodes=force_nodes)
    for f in features:
        select.check_feature(f, cfg.k)
        cfg.validate(f.channels)

    previous = previous_records(model)
    done = {r.get("node") for r in previous} | {r.get("tensor") for r in previous}
    if not allow_redefend:
        again = [f.name or f.output for f in features if f.name in done or f.output in done]
        if again:
            raise AsvpError(f"node {again[0]!r} is already defended (recorded in {META_NODES}); "
                            "pass --allow-redefend (allow_redefend=True) to perturb it again")

    graph = gs.import_onnx(model)
    tensors = graph.tensors()
    block = next_free_index([n.name for n in graph.nodes], _BLOCK)
    tap = next_free_index([t.name for t in graph.outputs], re.compile(rf"^{TAP_PREFIX}(\d+)$"))
    before = len(graph.nodes)
    records = []
    for f in features:
        x = tensors.get(f.output)
        if not isinstance(x, gs.Variable):
            raise AsvpError(f"tensor {f.output!r} of node {f.name!r} is not a variable tensor of the graph")
        prefix = f"asvp/{block}/"
        tap_name = f"{TAP_PREFIX}{tap}" if cfg.placement == "tap" else None
        dims = output_dims(f.shape, tap_name or f"asvp_{block}")
        if mode == "subgraph":
            y = build_defence(graph, x, cfg, f.channels, prefix)  # the paper's subgraph or a keyed variant
        else:
            y = plugin_contract.build_plugin(graph, x, cfg, f.channels, prefix, shape=dims)
        y.dtype, y.shape = np.float32, dims
        if tap_name:
            y.name = tap_name
            graph.outputs.append(y)
            tap += 1
            renamed = None
        else:
            renamed = rewire_consumers(graph, x, y, prefix)
        records.append({"node": f.name, "tensor": f.output, "channels": f.channels, "tap_output": tap_name,
                        "mode": mode, "placement": cfg.placement, "block": prefix.rstrip("/"),
                        "config_digest": cfg.digest()})
        if renamed:  # the feature was a graph output: its name now carries the perturbed tensor
            records[-1]["clean_tensor"] = renamed
        block += 1

    graph.cleanup().toposort()
    inserted = len(graph.nodes) - before
    out = gs.export_onnx(graph)
    finalize_like(out, model, plugin=mode == "plugin" or any(r.get("mode") == "plugin" for r in previous))

    all_records = previous + records
    write_defence(out, all_records, cfg, mode)
    check_graph(out)
    info = DefendInfo(mode, cfg.placement, records, cfg.to_dict(), cfg.digest(), all_records, inserted)
    return out, info


def defend_file(model_path: str | os.PathLike, out_path: str | os.PathLike, *, nodes=None, config=None,
                mode: str = "subgraph", allow_redefend: bool = False, input_name: str | None = None,
                force_nodes: bool = False) -> DefendInfo:
    """Load, defend, check and atomically write; nothing is written if anything fails."""
    cfg = _as_config(config).validate()
    _check_mode(mode, cfg)
    model = load_model(model_path)
    image_input(model, input_name)
    out, info = defend_model(model, nodes, cfg, mode=mode, allow_redefend=allow_redefend, input_name=input_name,
                             force_nodes=force_nodes)
    save_model(out, out_path)
    return info

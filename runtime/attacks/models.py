"""The models an attack runs against: the clean and the defended ONNX file of a task (made when missing), and the
features the attacker reads from them (feature_plan).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from asvp.config import AsvpConfig
from asvp.errors import AsvpError
from asvp.exporter.export import export_bundled
from asvp.graph_passes.candidates import feature_candidates
from asvp.graph_passes.defend import defend_file
from asvp.graph_passes.metadata import DefenceInfo, read_defence
from asvp.io import require_file
from asvp.onnx_utils import load_model


@dataclass
class Feature:
    """One feature map the attacker receives: `key` (the clean tensor name, shared by clean and defended
    models), `output` (the graph output that carries it), and its relative depth among candidate nodes."""

    key: str
    output: str | None
    channels: int | None = None
    depth: float = 0.5


def defence_of(path: str | os.PathLike) -> DefenceInfo:
    """The defended model's self-description (placement, nodes, config) from its metadata."""
    return read_defence(load_model(path))


def _consumed_tensor(clean_model, defended_model, tensor: str) -> str:
    """In an inline-defended graph, the tensor that replaced `tensor` for its consumers (the perturbed one)."""
    consumers = [(n.name, i) for n in clean_model.graph.node for i, t in enumerate(n.input) if t == tensor and n.name]
    by_name = {n.name: n for n in defended_model.graph.node}
    for name, i in consumers:
        node = by_name.get(name)
        if node is not None and i < len(node.input) and node.input[i] != tensor:
            return node.input[i]
    raise AsvpError(f"cannot find the perturbed replacement of {tensor!r} in the inline-defended model")


def feature_plan(clean_path, defended_path) -> tuple[str, list[Feature], list[str], AsvpConfig | None]:
    """(placement, features to read from the defended model, tensors to expose on the clean model, config)."""
    info = defence_of(defended_path)
    if not info.nodes:
        raise AsvpError(f"{defended_path} records no defended nodes (metadata asvp.nodes); is it an asvp-defended model?")
    clean_model = load_model(clean_path)
    cands = [c.output for c in feature_candidates(clean_model)]
    feats = []
    defended_model = load_model(defended_path) if info.placement != "tap" else None
    for n in info.nodes:
        depth = cands.index(n.tensor) / max(len(cands) - 1, 1) if n.tensor in cands else 0.5
        if info.placement == "tap":
            out = n.tap_output  # None: the feature attack below reports it
        else:
            try:
                out = _consumed_tensor(clean_model, defended_model, n.tensor)
            except AsvpError:
                out = None  # only the feature attack needs it
        feats.append(Feature(n.tensor, out, n.channels, depth))
    return info.placement, feats, [f.key for f in feats], info.config


def prepare_models(task: str, workdir: Path, clean=None, defended=None, config: AsvpConfig | None = None,
                   nodes=None, defended_name: str | None = None) -> tuple[Path, Path, AsvpConfig | None]:
    """Resolve (and if needed create) the clean and defended ONNX files for a task.

    Missing ones are made in `workdir`: clean.onnx (the bundled teacher, exported) and the defended model
    (graph_passes.defend of the clean one with `config`, default AsvpConfig(), and `nodes`, default: defend's own
    choice).
    """
    if clean is None:
        clean = workdir / "clean.onnx"
        if not clean.exists():  # the folder is made only when something is written in it (a refusal leaves none)
            workdir.mkdir(parents=True, exist_ok=True)
            export_bundled(task, clean)
    clean = require_file(clean, "clean model")
    if defended is None:
        cfg = (config or AsvpConfig()).validate()
        sel = hashlib.sha256(json.dumps(nodes).encode()).hexdigest()[:6]
        defended = workdir / (defended_name or f"defended-{cfg.placement}-{cfg.digest()}-{sel}.onnx")
        if not defended.exists():
            defended.parent.mkdir(parents=True, exist_ok=True)
            defend_file(clean, defended, nodes=nodes, config=cfg)
    defended = require_file(defended, "defended model")
    return Path(clean), Path(defended), config


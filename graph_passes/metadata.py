"""The asvp metadata: what an exported or defended model says about itself, in its ONNX metadata_props.

The export metadata has one writer (`write_export`, used by the exporter) and one reader (`read_export`, returning
a typed `ExportInfo`, used by the API, candidates, validation, profiling and the engine build):

    asvp.teacher, asvp.task, asvp.scale, asvp.size_multiple, asvp.min_size, asvp.exporter, asvp.dynamic_dims,
    asvp.value_range, asvp.layout, asvp.in_channels, asvp.out_channels, asvp.export_patch
                                         (ExportInfo's fields; a model not exported by asvp has none of them)

The defence metadata has one writer (`write_defence`, used by graph_passes.defend) and one reader
(`read_defence`, returning a typed `DefenceInfo`, used by validation, attacks and defend itself when a model is
defended again):

    asvp.defended       "true"
    asvp.mode           "subgraph" | "plugin" | "mixed"
    asvp.placement      "inline" | "tap" | "mixed"
    asvp.nodes          JSON list over every defence applied so far, one record per node: node, tensor, channels,
                        tap_output, mode, placement, block, config_digest, and clean_tensor where an inline
                        feature was a graph output and its name passed to the perturbed tensor
    asvp.config         JSON of the latest AsvpConfig
    asvp.config_digest  its short hash (AsvpConfig.digest)

The readers are lenient with hand-made stand-ins (missing fields, a bare tensor name instead of a record, a tap
output under `tap`), strict with what cannot be read (invalid JSON, a record without a tensor, a size that is not
an integer): one-line errors.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

import onnx

from asvp.config import AsvpConfig
from asvp.errors import AsvpError
from asvp.onnx_utils import META_PREFIX, get_metadata, set_metadata

META_DEFENDED = META_PREFIX + "defended"
META_MODE = META_PREFIX + "mode"
META_PLACEMENT = META_PREFIX + "placement"
META_NODES = META_PREFIX + "nodes"
META_CONFIG = META_PREFIX + "config"
META_DIGEST = META_PREFIX + "config_digest"
TAP_KEYS = ("tap_output", "tap", "tap_output_name", "output_name", "tap_name")  # the first is what asvp writes


@dataclass
class DefendedNode:
    """One defended feature, as recorded in asvp.nodes."""

    node: str
    tensor: str
    channels: int | None = None
    tap_output: str | None = None
    mode: str | None = None
    placement: str | None = None
    block: str | None = None
    config_digest: str | None = None
    clean_tensor: str | None = None

    def to_dict(self) -> dict:
        """The summary reports show (node, tensor, channels, tap output)."""
        return {"node": self.node, "tensor": self.tensor, "channels": self.channels, "tap_output": self.tap_output}

    def record(self) -> dict:
        """The full record as stored in asvp.nodes (fields that are unknown are left out)."""
        return {k: v for k, v in asdict(self).items() if v is not None or k == "tap_output"}

    @classmethod
    def from_record(cls, rec, index: int = 0) -> "DefendedNode":
        if isinstance(rec, str):
            rec = {"tensor": rec}
        if not isinstance(rec, dict) or not (rec.get("tensor") or rec.get("output")):
            raise AsvpError(f"defended model's {META_NODES} entry {index} names no tensor: {rec!r}")
        tensor = str(rec.get("tensor") or rec.get("output"))
        ch = rec.get("channels")
        known = {f.name for f in fields(cls)} - {"node", "tensor", "channels", "tap_output"}
        return cls(node=str(rec.get("node", tensor)), tensor=tensor, channels=int(ch) if ch is not None else None,
                   tap_output=next((rec[k] for k in TAP_KEYS if rec.get(k)), None),
                   **{k: rec[k] for k in known if rec.get(k) is not None})


@dataclass
class DefenceInfo:
    """What a model's metadata says about its defence (all fields optional: an undefended model has none)."""

    defended: bool = False
    mode: str | None = None
    placement: str = "inline"
    nodes: list = field(default_factory=list)  # [DefendedNode]
    config: AsvpConfig | None = None
    config_digest: str | None = None

    @property
    def taps(self) -> list:
        """The defended nodes that have a tap output (tap placement)."""
        return [n for n in self.nodes if n.tap_output] if self.placement == "tap" else []

    def to_dict(self) -> dict:
        return {"defended": self.defended, "mode": self.mode, "placement": self.placement,
                "nodes": [n.to_dict() for n in self.nodes],
                "config": self.config.to_dict() if self.config else None, "config_digest": self.config_digest}


def read_defence(source) -> DefenceInfo:
    """Parse the defence metadata of a ModelProto (or of its metadata_props as a dict)."""
    meta = get_metadata(source) if isinstance(source, onnx.ModelProto) else dict(source)
    info = DefenceInfo(defended=meta.get(META_DEFENDED, "").lower() in ("1", "true", "yes"),
                       mode=meta.get(META_MODE), config_digest=meta.get(META_DIGEST))
    if META_CONFIG in meta:
        try:
            info.config = AsvpConfig.from_dict(json.loads(meta[META_CONFIG]))
        except (json.JSONDecodeError, TypeError) as exc:
            raise AsvpError(f"defended model's {META_CONFIG} metadata is not valid: {exc}") from None
    info.placement = meta.get(META_PLACEMENT) or (info.config.placement if info.config else "inline")
    if META_NODES in meta:
        try:
            raw = json.loads(meta[META_NODES])
        except json.JSONDecodeError as exc:
            raise AsvpError(f"defended model's {META_NODES} metadata is not valid JSON: {exc}") from None
        info.nodes = [DefendedNode.from_record(r, i) for i, r in enumerate(raw if isinstance(raw, list) else [])]
    return info


def write_defence(model: onnx.ModelProto, records: list[dict], cfg: AsvpConfig, mode: str) -> None:
    """Record every defence applied so far (`records`: previous ones first) and the latest configuration and
    mode (which also stand for records that do not name theirs)."""
    modes = {r.get("mode") or mode for r in records}
    placements = {r.get("placement") or cfg.placement for r in records}
    set_metadata(model, {
        META_DEFENDED: "true",
        META_MODE: modes.pop() if len(modes) == 1 else "mixed",
        META_PLACEMENT: placements.pop() if len(placements) == 1 else "mixed",
        META_NODES: json.dumps(records),
        META_CONFIG: json.dumps(cfg.to_dict(), sort_keys=True),
        META_DIGEST: cfg.digest(),
    })


# ---- export metadata ----------------------------------------------------------------------------------------

EXPORT_INTS = ("scale", "size_multiple", "min_size", "in_channels", "out_channels")  # the integer fields


@dataclass
class ExportInfo:
    """What a model's export metadata says (defaults where it records nothing: a model not exported by asvp)."""

    # in the order the exporter writes them (the exported file's bytes stay as they were)
    teacher: str | None = None
    task: str | None = None
    scale: int | None = None  # output side / input side; None: not recorded
    value_range: str | None = None
    layout: str | None = None
    size_multiple: int = 1  # input H and W must be multiples of this
    min_size: int = 1  # the smallest input side the export was checked at
    exporter: str | None = None  # "torchscript" or "dynamo"
    dynamic_dims: str | None = None  # comma-separated dynamic input dims, or "none"
    in_channels: int | None = None  # the image's channels (1 grey, 3 RGB, ...); None: not recorded (RGB before)
    out_channels: int | None = None
    export_patch: str | None = None  # exporter/patches.py's patch used while tracing, e.g. "SwinIR.window_reverse"

    def to_dict(self) -> dict:
        return asdict(self)


def read_export(source) -> ExportInfo:
    """Parse the export metadata of a ModelProto (or of its metadata_props as a dict)."""
    meta = get_metadata(source) if isinstance(source, onnx.ModelProto) else dict(source)
    values = {}
    for f in fields(ExportInfo):
        raw = meta.get(META_PREFIX + f.name)
        if raw is None or raw == "":
            continue
        if f.name in EXPORT_INTS:
            raw = str(raw).strip()
            if not raw.isdigit() or int(raw) < (1 if f.name != "min_size" else 0):
                raise AsvpError(f"the model's {META_PREFIX + f.name} metadata is not a positive integer: {raw!r}")
            values[f.name] = int(raw)
        else:
            values[f.name] = str(raw)
    return ExportInfo(**values)


def write_export(model: onnx.ModelProto, info: ExportInfo) -> None:
    """Record how the model was exported (fields that are None are left out)."""
    set_metadata(model, {META_PREFIX + k: v for k, v in info.to_dict().items() if v is not None})

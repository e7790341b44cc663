"""Loading, checking, annotating and atomically saving ONNX models: the one place for ONNX plumbing."""
from __future__ import annotations

import os
from pathlib import Path

import onnx

from asvp.errors import AsvpError
from asvp.io import atomic_output, require_file

META_PREFIX = "asvp."
# asvp writes IR version 8 (what the TorchScript exporter emits): onnxruntime >= 1.10 and TensorRT >= 8.6 load it,
# while the IR 10+ that recent `onnx` / the dynamo exporter write is rejected by older runtimes on edge devices.
MAX_IR_VERSION = 8


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Load an ONNX file, turning every failure into one clear line."""
    p = require_file(path, "ONNX model")
    try:
        return onnx.load(str(p))
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise AsvpError(f"{p} is not a readable ONNX model ({type(exc).__name__})") from None


def as_model(model) -> onnx.ModelProto:
    """A ModelProto from a path, serialized bytes or a ModelProto (external data is not loaded)."""
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (bytes, bytearray)):
        try:
            return onnx.load_from_string(bytes(model))
        except Exception as exc:
            raise AsvpError(f"the given bytes are not a readable ONNX model ({type(exc).__name__})") from None
    p = require_file(model, "ONNX model")
    try:
        return onnx.load(str(p), load_external_data=False)
    except Exception as exc:
        raise AsvpError(f"{p} is not a readable ONNX model ({type(exc).__name__})") from None


def check_model(model: onnx.ModelProto, what: str = "model") -> None:
    """onnx.checker full check (includes strict shape inference)."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AsvpError(f"{what} fails onnx.checker: {first}") from None


def save_model(model: onnx.ModelProto, path: str | os.PathLike, check: bool = True) -> Path:
    """Check, then write atomically (temporary file + rename)."""
    if check:
        check_model(model, str(path))
    with atomic_output(path) as tmp:
        onnx.save(model, str(tmp))
    return Path(path)


def get_metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def set_metadata(model: onnx.ModelProto, values: dict[str, object]) -> None:
    """Set (overwrite) metadata_props entries; values are stored as strings."""
    existing = {p.key: p for p in model.metadata_props}
    for key, value in values.items():
        if key in existing:
            existing[key].value = str(value)
        else:
            model.metadata_props.add(key=key, value=str(value))


def _dims(value_info: onnx.ValueInfoProto) -> list:
    t = value_info.type.tensor_type
    return [d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else "?") for d in t.shape.dim]


def image_io(model: onnx.ModelProto) -> tuple[str, str]:
    """Names of the model's image input and first output; refuses models that do not take an NCHW image."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise AsvpError(f"expected exactly one image input, found {len(inputs)}: {[i.name for i in inputs]}")
    dims = _dims(inputs[0])
    if len(dims) != 4 or dims[1] not in (3, "?") and not isinstance(dims[1], str):
        raise AsvpError(f"input {inputs[0].name!r} is not an NCHW RGB image (shape {dims}); asvp defends image-to-image models")
    if inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise AsvpError(f"input {inputs[0].name!r} must be float32")
    return inputs[0].name, model.graph.output[0].name

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


def min_ir_version(model: onnx.ModelProto) -> int:
    """The lowest IR version the model's opsets allow (onnx.helper.VERSION_TABLE; unknown domains ignored): opset
    17-18 need IR 8, 19-20 IR 9, 21 IR 10."""
    return onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)


def capped_ir_version(model: onnx.ModelProto, ir_version: int) -> int:
    """ir_version capped at MAX_IR_VERSION, but never below what the model's opsets require (the ONNX spec ties each
    opset to a minimum IR version; capping an opset-21 model at IR 8 would write an invalid model)."""
    return max(min(ir_version, MAX_IR_VERSION), min_ir_version(model))


def _parsed(model: onnx.ModelProto, what) -> onnx.ModelProto:
    """`model` if it is one: protobuf parses an empty file (or stray bytes) as an empty ModelProto without error."""
    if not model.HasField("graph") and not model.opset_import:
        raise AsvpError(f"{what} is not an ONNX model (no graph in it)")
    return model


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Load an ONNX file, turning every failure into one clear line."""
    p = require_file(path, "ONNX model")
    if p.stat().st_size == 0:
        raise AsvpError(f"{p} is empty, not an ONNX model")
    try:
        model = onnx.load(str(p))
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise AsvpError(f"{p} is not a readable ONNX model ({type(exc).__name__})") from None
    return _parsed(model, p)


def as_model(model) -> onnx.ModelProto:
    """A ModelProto from a path, serialized bytes or a ModelProto (external data is not loaded)."""
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (bytes, bytearray)):
        if not model:
            raise AsvpError("the given bytes are empty, not an ONNX model")
        try:
            return _parsed(onnx.load_from_string(bytes(model)), "the given bytes")
        except AsvpError:
            raise
        except Exception as exc:
            raise AsvpError(f"the given bytes are not a readable ONNX model ({type(exc).__name__})") from None
    p = require_file(model, "ONNX model")
    if p.stat().st_size == 0:
        raise AsvpError(f"{p} is empty, not an ONNX model")
    try:
        return _parsed(onnx.load(str(p), load_external_data=False), p)
    except AsvpError:
        raise
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


def graph_inputs(model: onnx.ModelProto) -> list:
    """The model's real inputs (graph inputs that are not initializers)."""
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _dtype(vi) -> str:
    """The element type's name ("float32", "float16", ...) as numpy spells it."""
    try:
        return str(onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))
    except Exception:  # undefined, or a type numpy lacks (bfloat16, float8)
        return onnx.TensorProto.DataType.Name(vi.type.tensor_type.elem_type).lower()


def _described(vi) -> str:
    return f"{vi.name} {_dtype(vi)} {_dims(vi)}"


def _is_image_like(vi) -> bool:
    """A float rank-4 input whose H and W are not both the constant 1 (those are per-sample values: noise levels)."""
    dims = _dims(vi)
    return (vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT and len(dims) == 4
            and not (dims[2] == 1 and dims[3] == 1))


def image_input(model: onnx.ModelProto, name: str | None = None):
    """The ValueInfo of the model's image input: any float32 NCHW image, grey (C=1), RGB, or more channels.

    With extra inputs (noise maps, masks, noise levels), `name` picks the image; without it, the one image-like
    input (rank 4 float, H and W not both 1) is taken, or else the one of them with 3 channels. Ambiguous or
    missing: one-line error asking for --input NAME."""
    inputs = graph_inputs(model)
    if name is not None:
        found = [i for i in inputs if i.name == name]
        if not found:
            raise AsvpError(f"the model has no input named {name!r}; its inputs are {[i.name for i in inputs]}")
        vi = found[0]
        dims = _dims(vi)
        if len(dims) != 4 or vi.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise AsvpError(f"input {name!r} is not a float32 NCHW image ({_dtype(vi)}, shape {dims})")
        return vi
    images = [i for i in inputs if _is_image_like(i)]
    if len(images) > 1:
        rgb = [i for i in images if _dims(i)[1] == 3]
        images = rgb if len(rgb) == 1 else images
    if len(images) == 1:
        return images[0]
    if not images:
        raise AsvpError(f"the model has no float32 NCHW image input (inputs: "
                        f"{', '.join(_described(i) for i in inputs) or 'none'}); asvp defends float32 image models")
    raise AsvpError(f"the model has several image-like inputs ({', '.join(i.name for i in images)}); "
                    "name the image with --input NAME")


def image_io(model: onnx.ModelProto) -> tuple[str, str]:
    """Names of the image input and first output of a model that takes ONE NCHW RGB image (validate, profile,
    attack and the exporter feed RGB images). `asvp nodes` and `defend` accept more (see image_input)."""
    inputs = graph_inputs(model)
    if len(inputs) != 1:
        raise AsvpError(f"this command runs models with exactly one input (an NCHW RGB image); the model has "
                        f"{len(inputs)}: {[i.name for i in inputs]} (`asvp nodes` and `asvp defend` accept extra "
                        "inputs, with --input NAME)")
    dims = _dims(inputs[0])
    if len(dims) == 4 and isinstance(dims[1], int) and dims[1] not in (3, 0):  # issue 27.11: name the count
        kind = "grey" if dims[1] == 1 else f"{dims[1]} channels"
        raise AsvpError(f"input {inputs[0].name!r} is a {dims[1]}-channel image ({kind}); this command supports "
                        "RGB (3-channel) models only (`asvp nodes` and `asvp defend` accept grey and multi-channel "
                        "images)")
    if len(dims) != 4 or dims[1] not in (3, "?") and not isinstance(dims[1], str):
        raise AsvpError(f"input {inputs[0].name!r} is not an NCHW RGB image (shape {dims}); this command feeds RGB "
                        "images (`asvp nodes` and `asvp defend` accept grey and multi-channel images)")
    if inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise AsvpError(f"input {inputs[0].name!r} is {_dtype(inputs[0])}; this command runs float32 models")
    return inputs[0].name, model.graph.output[0].name

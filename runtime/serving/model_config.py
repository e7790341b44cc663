"""A Triton `config.pbtxt` for an ONNX image model, built as Triton's own ModelConfig protobuf (the schema that
tritonclient ships) and parsed back from its text before anything is written.

    cfg = model_config(model, ConfigOptions(name="sr", backend="python"))
    text = config_text(cfg)                      # text_format, parsed back and checked (check_config_text)

Batching: when dim 0 of every input and output is dynamic, `max_batch_size` is ConfigOptions.max_batch_size and
dims leave the batch out; when any is static, `max_batch_size` is 0 and dims are the full shapes (Triton's "first
dimension must be -1" refusal comes from a static batch declared as batched). Dynamic dims are -1. Every graph
output is declared, tap outputs included, under their ONNX names.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from asvp.errors import AsvpError, MissingDependencyError, first_line
from asvp.runtime.serving.constants import DEFAULT_MAX_BATCH, DEFAULT_QUEUE_DELAY_US

# ONNX element type -> Triton DataType name
DTYPES = {
    onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16", onnx.TensorProto.DOUBLE: "TYPE_FP64",
    onnx.TensorProto.BFLOAT16: "TYPE_BF16", onnx.TensorProto.INT8: "TYPE_INT8", onnx.TensorProto.INT16: "TYPE_INT16",
    onnx.TensorProto.INT32: "TYPE_INT32", onnx.TensorProto.INT64: "TYPE_INT64", onnx.TensorProto.UINT8: "TYPE_UINT8",
    onnx.TensorProto.UINT16: "TYPE_UINT16", onnx.TensorProto.UINT32: "TYPE_UINT32",
    onnx.TensorProto.UINT64: "TYPE_UINT64", onnx.TensorProto.BOOL: "TYPE_BOOL", onnx.TensorProto.STRING: "TYPE_STRING",
}
INSTALL_CLIENT = "pip install 'tritonclient[http,grpc]>=2.51,<2.74'"


def pb():
    """tritonclient's model_config_pb2 (Triton's ModelConfig schema); exit 3 when tritonclient is missing."""
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError as exc:
        raise MissingDependencyError(f"Triton's model-config schema needs tritonclient ({first_line(exc)}); "
                                     f"{INSTALL_CLIENT}") from None
    return model_config_pb2


@dataclass
class TensorRTAccel:
    """onnxruntime backend: TensorRT execution-accelerator parameters (the same profile as `asvp build`)."""

    precision: str = "FP32"  # FP32 | FP16
    profile: object | None = None  # asvp.runtime.engines.build.ShapeProfile, or None for TensorRT's own
    shapes: dict | None = None  # {"min", "opt", "max"}: NxCxHxW strings; the writer makes `profile` from them
    engine_cache: str | None = None  # folder for ONNX Runtime's TensorRT engine cache (enables the cache)
    workspace_bytes: int | None = None

    def parameters(self) -> dict:
        p = {"precision_mode": self.precision.upper()}
        if self.workspace_bytes:
            p["max_workspace_size_bytes"] = str(int(self.workspace_bytes))
        if self.engine_cache:
            p["trt_engine_cache_enable"] = "1"
            p["trt_engine_cache_path"] = str(self.engine_cache)
        if self.profile is not None:
            for key, shape in (("min", self.profile.min), ("opt", self.profile.opt), ("max", self.profile.max)):
                p[f"trt_profile_{key}_shapes"] = f"{self.profile.input}:" + "x".join(str(s) for s in shape)
        return p


@dataclass
class ConfigOptions:
    """What config.pbtxt says besides the model's own tensors."""

    name: str
    backend: str = "python"  # python | onnxruntime | tensorrt (tensorrt_plan platform)
    max_batch_size: int = DEFAULT_MAX_BATCH  # used when the model's batch dim is dynamic
    dynamic_batching: bool = True
    max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US
    instances: int = 1
    kind: str = "KIND_CPU"  # KIND_CPU | KIND_GPU | KIND_AUTO
    parameters: dict = field(default_factory=dict)  # string parameters (metadata, EXECUTION_ENV_PATH)
    tensorrt: TensorRTAccel | None = None
    cc_model_filenames: dict = field(default_factory=dict)
    default_model_filename: str | None = None


def _dims(vi: onnx.ValueInfoProto) -> list[int]:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        raise AsvpError(f"tensor {vi.name!r} has no shape in the model; Triton needs its rank")
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in t.shape.dim]


def _dtype(vi: onnx.ValueInfoProto) -> str:
    et = vi.type.tensor_type.elem_type
    if et not in DTYPES:
        raise AsvpError(f"tensor {vi.name!r} has ONNX element type {et}, which Triton has no type for")
    return DTYPES[et]


def model_io(model: onnx.ModelProto) -> tuple[list, list]:
    """(inputs, outputs): the graph's real inputs (initializers left out) and every output."""
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits], list(model.graph.output)


def batch_is_dynamic(model: onnx.ModelProto) -> bool:
    """Dim 0 of every input and output is dynamic (and every tensor has rank >= 1)."""
    ins, outs = model_io(model)
    return all((d := _dims(v)) and d[0] == -1 for v in ins + outs)


def model_config(model: onnx.ModelProto, opts: ConfigOptions):
    """The ModelConfig protobuf for `model` with `opts`."""
    mc = pb()
    cfg = mc.ModelConfig(name=opts.name)
    if opts.backend == "tensorrt":
        cfg.platform = "tensorrt_plan"
    else:
        cfg.backend = opts.backend
    batched = batch_is_dynamic(model) and opts.max_batch_size > 0
    cfg.max_batch_size = int(opts.max_batch_size) if batched else 0
    ins, outs = model_io(model)
    for vi, target in [(v, cfg.input) for v in ins] + [(v, cfg.output) for v in outs]:
        dims = _dims(vi)
        target.add(name=vi.name, data_type=mc.DataType.Value(_dtype(vi)), dims=dims[1:] if batched else dims)
    if batched and opts.dynamic_batching:
        cfg.dynamic_batching.max_queue_delay_microseconds = int(opts.max_queue_delay_us)
    cfg.instance_group.add(kind=mc.ModelInstanceGroup.Kind.Value(opts.kind), count=int(opts.instances))
    if opts.tensorrt is not None:
        acc = cfg.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        for k, v in opts.tensorrt.parameters().items():
            acc.parameters[k] = v
    for k, v in opts.cc_model_filenames.items():
        cfg.cc_model_filenames[k] = v
    if opts.default_model_filename:
        cfg.default_model_filename = opts.default_model_filename
    for k, v in opts.parameters.items():
        cfg.parameters[k].string_value = str(v)
    return cfg


def check_config_text(text: str, where: str = "config.pbtxt"):
    """Parse `text` against Triton's ModelConfig schema and check what the schema alone does not: a name, a
    backend or platform, dims -1 or positive, max_batch_size >= 0. Returns the parsed message."""
    from google.protobuf import text_format

    mc = pb()
    cfg = mc.ModelConfig()
    try:
        text_format.Parse(text, cfg)
    except text_format.ParseError as exc:
        raise AsvpError(f"{where} does not parse as Triton's ModelConfig: {first_line(exc)}") from None
    if not cfg.name:
        raise AsvpError(f"{where} names no model")
    if not (cfg.backend or cfg.platform):
        raise AsvpError(f"{where} names neither a backend nor a platform")
    if cfg.max_batch_size < 0:
        raise AsvpError(f"{where}: max_batch_size {cfg.max_batch_size} is negative")
    for t in list(cfg.input) + list(cfg.output):
        if not t.dims or any(d == 0 or d < -1 for d in t.dims):
            raise AsvpError(f"{where}: tensor {t.name!r} has dims {list(t.dims)} (each must be -1 or positive)")
        if t.data_type == mc.DataType.Value("TYPE_INVALID"):
            raise AsvpError(f"{where}: tensor {t.name!r} has no data type")
    return cfg


def config_text(cfg) -> str:
    """The config as config.pbtxt text, parsed back and checked (check_config_text) before it is returned."""
    from google.protobuf import text_format

    text = text_format.MessageToString(cfg)
    check_config_text(text, f"config of {cfg.name!r}")
    return text

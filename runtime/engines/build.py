"""TensorRT engines from (defended) ONNX models, through Polygraphy's loaders.

    build_engine("sr.asvp.onnx", "sr.engine", min_shape="1x3x32x32", opt_shape="1x3x256x256",
                 max_shape="4x3x512x512", options=EngineOptions(fp16=True, timing_cache="sr.cache"))

Pipeline: plan (read the model, make the profile, check the options; bad input fails here, before TensorRT is
touched) -> register the plugin (when the model has AsvpPerturb nodes) -> NetworkFromOnnxPath -> under a reduced
precision, a PostprocessNetwork pinning the ASVP and mark layers to fp32 (runtime.engines.precision) ->
CreateConfig (one dynamic-shape optimisation Profile, precision flags and constraints, workspace pool limit,
timing cache, hardware/version compatibility, optimisation level: runtime.engines.portability) ->
EngineBytesFromNetwork -> the timing cache, then the engine bytes and their sidecar, written atomically
(runtime.engines.sidecar). Shapes and profiles: runtime.engines.shapes; loading an engine back:
runtime.engines.load. The precision and portability options are UNVERIFIED: no real TensorRT has run them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from asvp.errors import AsvpError, MissingDependencyError
from asvp.graph_passes.metadata import read_export
from asvp.graph_passes.plugin_contract import (PLUGIN_NAMESPACE, PLUGIN_OP, PLUGIN_VERSION, foreign_custom_ops,
                                               plugin_nodes)
from asvp.io import require_file
from asvp.onnx_utils import as_model, get_metadata, image_io
from asvp.options import EngineOptions
from asvp.runtime.engines import plugin_trt, portability, precision
from asvp.runtime.engines.shapes import ShapeProfile, format_shape, make_profile, onnx_input_dims, parse_size
from asvp.runtime.engines.sidecar import (current_device, make_sidecar, sha256_bytes, sha256_file, sidecar_path,
                                          write_engine)


@dataclass
class BuildResult:
    engine: str
    sidecar: str
    tensorrt_version: str
    profile: ShapeProfile
    precision: dict  # the sidecar's precision section
    portability: dict  # the sidecar's portability section
    plugin_nodes: int
    engine_bytes: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"engine": self.engine, "sidecar": self.sidecar, "tensorrt_version": self.tensorrt_version,
                "profile": self.profile.to_dict(), "fp16": self.precision["fp16"], "int8": self.precision["int8"],
                "precision": self.precision, "portability": self.portability, "plugin_nodes": self.plugin_nodes,
                "engine_bytes": self.engine_bytes, "notes": self.notes}

    def summary_lines(self) -> list[str]:
        p = self.profile
        kinds = "+".join(k for k in ("fp16", "bf16", "int8") if self.precision.get(k)) or "fp32"
        pinned = sum(len(g["layers"]) for g in self.precision.get("pinned_fp32", {}).values())
        lines = [f"wrote {self.engine} ({self.engine_bytes} bytes, TensorRT {self.tensorrt_version}, {kinds}, "
                 f"profile {p.input} min {format_shape(p.min)} opt {format_shape(p.opt)} max {format_shape(p.max)}, "
                 f"{self.plugin_nodes} AsvpPerturb plugin node(s)) and {self.sidecar}"]
        if pinned:
            lines.append(f"pinned {pinned} ASVP/mark layer(s) to fp32 (sidecar: precision.pinned_fp32; unverified)")
        return lines + [f"note: {n}" for n in self.notes]


@dataclass(frozen=True)
class BuildPlan:
    """Everything decided before TensorRT is touched (so bad input fails fast, exit 2, without TensorRT)."""

    onnx_path: Path
    profile: ShapeProfile
    plugin_nodes: int
    metadata: dict
    foreign_ops: tuple = ()  # custom ops TensorRT can only build with the user's own plugin library loaded
    pinnable: dict = field(default_factory=dict)  # ONNX nodes per pin group (runtime.engines.precision)
    qdq_nodes: int = 0  # QuantizeLinear/DequantizeLinear nodes (an explicitly quantized model)


def plan_build(onnx_path, *, min_shape=None, opt_shape=None, max_shape=None, plugin: bool = True) -> BuildPlan:
    p = require_file(onnx_path, "ONNX model")
    model = as_model(p)
    name, _ = image_io(model)
    dims = onnx_input_dims(model, name)
    meta = get_metadata(model)
    profile = make_profile(name, dims, min_shape, opt_shape, max_shape, read_export(meta).size_multiple)
    nodes = plugin_nodes(model)
    if nodes and not plugin:
        raise AsvpError(f"{p} has {len(nodes)} AsvpPerturb plugin node(s); TensorRT can only build it with the "
                        "plugin registered (drop --no-plugin), or re-defend with --mode subgraph")
    return BuildPlan(p, profile, len(nodes), meta, tuple(foreign_custom_ops(model)), precision.pinnable_nodes(model),
                     precision.qdq_nodes(model))


def _build_error(plan: BuildPlan, exc: BaseException) -> AsvpError:
    text = _critical_text(exc)
    if plan.foreign_ops:  # the parser's own "Plugin not found" line goes to the log, not into the exception
        return AsvpError(f"TensorRT could not build {plan.onnx_path} ({text}); it has custom op(s) "
                         f"{', '.join(plan.foreign_ops)}, for which asvp has no plugin (it provides asvp::AsvpPerturb "
                         "only): load their TensorRT plugin library first, or re-defend the original model with "
                         "--mode subgraph")
    return AsvpError(f"TensorRT could not build {plan.onnx_path}: {text}")


def _critical_text(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


AOT_IMPLEMENTATION = "tensorrt.plugin AOT (Triton PTX; UNVERIFIED: never built with a real TensorRT)"


def _prefer_aot_flag(trt) -> int:
    """The network-creation bit that makes TensorRT take a Python plugin's AOT implementation (TensorRT >= 10.9)."""
    flag = getattr(getattr(trt, "NetworkDefinitionCreationFlag", None), "PREFER_AOT_PYTHON_PLUGINS", None)
    if flag is None:
        raise MissingDependencyError(f"TensorRT {getattr(trt, '__version__', '?')} has no NetworkDefinitionCreationFlag."
                                     f"PREFER_AOT_PYTHON_PLUGINS (AOT plugins need TensorRT >= 10.9): {plugin_trt.INSTALL_TRT}")
    return 1 << int(flag)


def _aot_network(trt, onnx_path: str):
    """A Polygraphy network loader like NetworkFromOnnxPath, but with the network created with
    PREFER_AOT_PYTHON_PLUGINS (Polygraphy's loaders only set the explicit-batch and strongly-typed flags)."""
    flags = _prefer_aot_flag(trt)

    def load():
        from polygraphy.backend.trt import util as trt_util

        logger = trt_util.get_trt_logger()
        builder = trt.Builder(logger)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(onnx_path):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            detail = errors[0].strip().splitlines()[0] if errors and errors[0].strip() else "no detail"
            raise AsvpError(f"TensorRT's ONNX parser refused {onnx_path}: {detail}")
        return builder, network, parser

    return load


def build_engine(onnx_path, engine_path, *, min_shape=None, opt_shape=None, max_shape=None,
                 options: EngineOptions | None = None) -> BuildResult:
    """Build a TensorRT engine with one dynamic-shape profile; writes `engine_path` and `engine_path`.json (and
    updates options.timing_cache).

    options (asvp.options.EngineOptions): precisions (the ASVP and mark layers pinned to fp32 unless
    asvp_precision="reduced"), workspace, plugin, aot_plugin (the AsvpPerturb plugin's AOT implementation, the
    fused Triton kernel as PTX; UNVERIFIED, docs/plugin.md section 5), timing cache, hardware/version
    compatibility, optimisation level (UNVERIFIED). Raises AsvpError (exit 2) for bad input and
    MissingDependencyError (exit 3) when TensorRT is absent; in either case nothing is written.
    """
    opts = options or EngineOptions()
    plan = plan_build(onnx_path, min_shape=min_shape, opt_shape=opt_shape, max_shape=max_shape, plugin=opts.plugin)
    ws = parse_size(opts.workspace) if opts.workspace is not None else None
    if Path(engine_path).suffix.lower() == ".onnx":
        raise AsvpError(f"refusing to write an engine to {engine_path} (an .onnx name); use .engine or .plan")
    if opts.aot_plugin and not plan.plugin_nodes:
        raise AsvpError(f"--aot-plugin: {plan.onnx_path} has no AsvpPerturb plugin nodes (defend it with --mode plugin)")
    precision.check_options(opts, plan.onnx_path, plan.qdq_nodes)
    portability.check_options(opts, inputs=(plan.onnx_path, engine_path))
    trt = require_builder()
    device = current_device()
    portability.check_build_device(opts, device)
    if opts.aot_plugin:
        _prefer_aot_flag(trt)  # before anything is registered or built
    plugins, notes = _register_plugin(plan, opts.aot_plugin)
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath
    from polygraphy.exception import PolygraphyException

    network = _aot_network(trt, str(plan.onnx_path)) if opts.aot_plugin else NetworkFromOnnxPath(str(plan.onnx_path))
    pinned: list[dict] = []
    pinning = precision.pins_wanted(opts, plan.pinnable)
    if pinning:
        network = precision.pin_network(network, trt, pinned, plan.onnx_path, precision.reduced_asvp(opts))
    config_kw = {"fp16": bool(opts.fp16), "int8": bool(opts.int8), "profiles": [plan.profile.to_polygraphy()],
                 **({"bf16": True} if opts.bf16 else {}), **({"precision_constraints": "obey"} if pinning else {}),
                 **portability.config_kwargs(trt, opts)}
    if ws is not None:
        config_kw["memory_pool_limits"] = {trt.MemoryPoolType.WORKSPACE: ws}
    create, configs = CreateConfig(**config_kw), []  # the builder config it makes is kept for its timing cache

    def config(builder, net):
        configs.append(create(builder, net))
        return configs[-1]

    try:
        engine_bytes = EngineBytesFromNetwork(network, config=config)()
    except PolygraphyException as exc:
        raise _build_error(plan, exc) from None
    data = bytes(memoryview(engine_bytes))
    if opts.timing_cache is not None:
        portability.save_timing_cache(configs[-1], opts.timing_cache)
    prec = {"fp32": True, "fp16": bool(opts.fp16), "int8": bool(opts.int8),
            **precision.record(opts, plan.pinnable, pinned)}
    port = portability.record(opts)
    sidecar = make_sidecar(engine_sha256=sha256_bytes(data), tensorrt_version=trt.__version__, profile=plan.profile,
                           source_path=plan.onnx_path, source_sha256=sha256_file(plan.onnx_path), fp16=opts.fp16,
                           int8=opts.int8, workspace=ws, plugins=plugins, device=device, source_metadata=plan.metadata,
                           precision=prec, portability=port)
    write_engine(data, engine_path, sidecar)
    return BuildResult(str(engine_path), str(sidecar_path(engine_path)), trt.__version__, plan.profile, prec, port,
                       plan.plugin_nodes, len(data), notes + _option_notes(opts))


def _register_plugin(plan: BuildPlan, aot: bool) -> tuple[list[dict], list[str]]:
    """Register the AsvpPerturb plugin when the model has plugin nodes; the sidecar's plugin entries and notes."""
    if not plan.plugin_nodes:
        return [], []
    plugin_trt.require_plugin_runtime()
    plugin_trt.register_asvp_plugin(aot=aot)
    plugins = [{"namespace": PLUGIN_NAMESPACE, "name": PLUGIN_OP, "version": PLUGIN_VERSION,
                "implementation": AOT_IMPLEMENTATION if aot else "tensorrt.plugin JIT (Python)",
                "nodes": plan.plugin_nodes}]
    if aot:
        return plugins, ["AOT AsvpPerturb plugin (PREFER_AOT_PYTHON_PLUGINS): UNVERIFIED, never built or run with a "
                         "real TensorRT; whether the engine loads without Python has not been tried"]
    return plugins, ["the engine contains the Python AsvpPerturb plugin: load it with "
                     "asvp.runtime.engines.load.load_engine (or register_asvp_plugin() first) in a Python process"]


def _option_notes(opts: EngineOptions) -> list[str]:
    """What the user should know about the options chosen (all UNVERIFIED with a real TensorRT)."""
    notes = []
    if opts.reduced:
        where = ("ASVP and fingerprint-mark layers pinned to fp32 by layer-precision constraints"
                 if opts.asvp_precision == "fp32" else "the mark and the ASVP feature passes left to the reduced "
                 "precision, the ASVP solve pinned to fp32 (--asvp-precision reduced)")
        notes.append(f"reduced precision: {where}; UNVERIFIED with a real TensorRT")
    if opts.hardware_compatibility != "none" or opts.version_compatible:
        notes.append("portable engine (hardware/version compatibility): UNVERIFIED with a real TensorRT; such "
                     "engines can be slower than plain ones")
    return notes


def require_builder():
    """The `tensorrt` module, once it is known to have a builder and a CUDA device to build on
    (MissingDependencyError, exit 3, otherwise)."""
    trt = plugin_trt.import_tensorrt(need_builder=True)
    ok, detail = plugin_trt.cuda_status()
    if not ok:
        raise MissingDependencyError(f"TensorRT {trt.__version__} needs an NVIDIA GPU to build engines, but {detail}")
    return trt

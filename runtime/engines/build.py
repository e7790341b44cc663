"""TensorRT engines from (defended) ONNX models, through Polygraphy's loaders.

    build_engine("sr.asvp.onnx", "sr.engine", min_shape="1x3x32x32", opt_shape="1x3x256x256",
                 max_shape="4x3x512x512", fp16=True)
    engine = load_engine("sr.engine")           # registers the AsvpPerturb plugin first

Pipeline: register the plugin (when the model has AsvpPerturb nodes) -> NetworkFromOnnxPath -> CreateConfig
(one dynamic-shape optimisation Profile, precision flags, workspace pool limit) -> EngineBytesFromNetwork ->
engine bytes written atomically, with a JSON sidecar `<engine>.json` (TensorRT version, profile, precision,
plugins, device, source model digest). `load_engine` reads the sidecar first and refuses, in one line, an engine
built by another TensorRT version or on another GPU, or one whose plugin cannot be registered.

The pure parts (shape parsing, profile construction, sidecar) need neither TensorRT nor a GPU.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import onnx

import asvp
from asvp.constants import ENGINE_MAX_SHAPE as DEFAULT_MAX, ENGINE_MIN_SHAPE as DEFAULT_MIN
from asvp.constants import ENGINE_OPT_SHAPE as DEFAULT_OPT
from asvp.errors import AsvpError, MissingDependencyError
from asvp.graph_passes.metadata import read_export
from asvp.graph_passes.plugin_contract import (PLUGIN_NAMESPACE, PLUGIN_OP, PLUGIN_VERSION, foreign_custom_ops,
                                               plugin_nodes)
from asvp.io import atomic_output, require_file
from asvp.onnx_utils import as_model, get_metadata, image_io
from asvp.runtime.engines import plugin_trt

SIDECAR_FORMAT = "asvp-engine-sidecar/1"
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
SIDECAR_SUFFIX = ".json"


# ---- shapes and profiles (pure) ----------------------------------------------------------------------------

def parse_shape(value, what: str = "shape", rank: int | None = None) -> tuple[int, ...]:
    """'1x3x64x64' (or '1,3,64,64', or a sequence of ints) -> (1, 3, 64, 64); every dimension must be >= 1.

    rank: the number of dimensions required (4: an image batch NxCxHxW, as `--shape` takes); None: any (an engine
    profile's rank is checked against its model)."""
    try:
        dims = _shape_dims(value, what)
    except AsvpError:
        if rank == 4:
            raise AsvpError(f"{what} must be NxCxHxW with integers, e.g. 1x3x256x256; got {value!r}") from None
        raise
    if rank == 4 and len(dims) != 4:
        raise AsvpError(f"{what} must be four positive integers NxCxHxW, e.g. 1x3x256x256; got {value!r}")
    if rank is not None and len(dims) != rank:
        raise AsvpError(f"{what} {value!r} must have {rank} dimensions")
    return dims


def _shape_dims(value, what: str) -> tuple[int, ...]:
    if isinstance(value, str):
        text = value.strip().lower()
        if not re.fullmatch(r"\d+([x,]\d+)*", text):
            raise AsvpError(f"{what} {value!r} is not a shape like 1x3x64x64")
        dims = tuple(int(d) for d in re.split(r"[x,]", text))
    else:
        try:
            dims = tuple(int(d) for d in value)
        except (TypeError, ValueError):
            raise AsvpError(f"{what} {value!r} is not a shape like 1x3x64x64") from None
        if any(int(d) != d for d in value):
            raise AsvpError(f"{what} {value!r} must contain integers")
    if not dims or any(d < 1 for d in dims):
        raise AsvpError(f"{what} {value!r}: every dimension must be >= 1")
    return dims


def format_shape(dims) -> str:
    return "x".join(str(int(d)) for d in dims)


def parse_size(value) -> int:
    """Bytes from 1073741824, '1G', '512M', '64k' (binary units); must be > 0."""
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", str(value).lower())
        if not m:
            raise AsvpError(f"size {value!r} is not a byte count like 1073741824, 512M or 2G")
        n = int(float(m.group(1)) * (1 << (10 * " kmgt".index(m.group(2) or " "))))
    if n <= 0:
        raise AsvpError(f"size {value!r} must be > 0")
    return n


@dataclass(frozen=True)
class ShapeProfile:
    """One TensorRT optimisation profile for the model's image input."""

    input: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def to_dict(self) -> dict:
        return {"input": self.input, "min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_dict(cls, d: dict) -> "ShapeProfile":
        return cls(d["input"], tuple(d["min"]), tuple(d["opt"]), tuple(d["max"]))

    def contains(self, shape) -> bool:
        shape = tuple(shape)
        return len(shape) == len(self.min) and all(lo <= s <= hi for lo, s, hi in zip(self.min, shape, self.max))

    def to_polygraphy(self):
        """polygraphy.backend.trt.Profile (constructing it does not need TensorRT)."""
        from polygraphy.backend.trt import Profile

        return Profile().add(self.input, min=list(self.min), opt=list(self.opt), max=list(self.max))


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def make_profile(input_name: str, input_dims, min_shape=None, opt_shape=None, max_shape=None,
                 size_multiple: int = 1) -> ShapeProfile:
    """Validated min/opt/max for an NCHW input whose ONNX dims are `input_dims` (ints or symbolic strings).

    Shapes not given default to 1x3x32x32 / 1x3x256x256 / 4x3x512x512 with the model's static dimensions
    (e.g. C=3) filled in and H, W rounded up to the model's size multiple; opt defaults to fit between min and max.
    """
    dims = list(input_dims)
    if len(dims) != 4:
        raise AsvpError(f"input {input_name!r} has rank {len(dims)}; asvp builds engines for NCHW images")
    size_multiple = max(1, int(size_multiple))

    def default(base):
        out = []
        for i, b in enumerate(base):
            if isinstance(dims[i], int) and dims[i] > 0:
                out.append(dims[i])
            else:
                out.append(_round_up(b, size_multiple) if i >= 2 else b)
        return tuple(out)

    mn_u = parse_shape(min_shape, "min shape") if min_shape is not None else None
    op_u = parse_shape(opt_shape, "opt shape") if opt_shape is not None else None
    mx_u = parse_shape(max_shape, "max shape") if max_shape is not None else None
    for label, given in (("min", mn_u), ("opt", op_u), ("max", mx_u)):
        if given is not None and len(given) != 4:
            raise AsvpError(f"{label} shape {format_shape(given)} has rank {len(given)}; the input "
                            f"{input_name!r} is NCHW (rank 4)")
    given = [g for g in (mn_u, op_u, mx_u) if g is not None]
    # Defaults stretch to stay consistent with whatever was given (e.g. --max below the default min).
    mn = mn_u or tuple(min([d, *(g[i] for g in given)]) for i, d in enumerate(default(DEFAULT_MIN)))
    mx = mx_u or tuple(max([d, *(g[i] for g in given)]) for i, d in enumerate(default(DEFAULT_MAX)))
    op = op_u or tuple(min(max(d, lo), hi) for d, lo, hi in zip(default(DEFAULT_OPT), mn, mx))
    prof = ShapeProfile(input_name, mn, op, mx)
    check_profile(prof, dims, size_multiple)
    return prof


def check_profile(prof: ShapeProfile, input_dims, size_multiple: int = 1) -> None:
    for label, shape in (("min", prof.min), ("opt", prof.opt), ("max", prof.max)):
        if len(shape) != len(input_dims):
            raise AsvpError(f"{label} shape {format_shape(shape)} has rank {len(shape)}, but input "
                            f"{prof.input!r} has rank {len(input_dims)}")
        for i, (s, d) in enumerate(zip(shape, input_dims)):
            if isinstance(d, int) and d > 0 and s != d:
                raise AsvpError(f"{label} shape {format_shape(shape)}: dimension {i} must be {d} "
                                f"(static in the model)")
        if size_multiple > 1 and any(s % size_multiple for s in shape[2:]):
            raise AsvpError(f"{label} shape {format_shape(shape)}: H and W must be multiples of {size_multiple} "
                            "for this model")
    for i in range(len(prof.min)):
        if not prof.min[i] <= prof.opt[i] <= prof.max[i]:
            raise AsvpError(f"profile needs min <= opt <= max in every dimension; dimension {i} has "
                            f"{prof.min[i]}, {prof.opt[i]}, {prof.max[i]}")


def profile_for_shape(input_name: str, shape) -> ShapeProfile:
    shape = parse_shape(shape, "input shape")
    return ShapeProfile(input_name, shape, shape, shape)


def is_engine_path(model) -> bool:
    return isinstance(model, (str, os.PathLike)) and str(model).lower().endswith(ENGINE_SUFFIXES)


# ---- sidecar (pure) ----------------------------------------------------------------------------------------

def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data) -> str:
    return hashlib.sha256(bytes(data)).hexdigest()


def sidecar_path(engine_path) -> Path:
    p = Path(engine_path)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def make_sidecar(*, engine_sha256: str, tensorrt_version: str, profile: ShapeProfile, source_path,
                 source_sha256: str, fp16: bool, int8: bool, workspace: int | None, plugins: list[dict],
                 device: dict | None = None, source_metadata: dict | None = None) -> dict:
    return {
        "format": SIDECAR_FORMAT,
        "asvp_version": asvp.__version__,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "tensorrt_version": tensorrt_version,
        "engine_sha256": engine_sha256,
        "device": device or {},
        "profile": profile.to_dict(),
        "precision": {"fp32": True, "fp16": bool(fp16), "int8": bool(int8)},
        "workspace_bytes": workspace,
        "plugins": plugins,
        "source_model": {"path": str(source_path), "sha256": source_sha256, "metadata": source_metadata or {}},
    }


def read_sidecar(engine_path) -> dict | None:
    p = sidecar_path(engine_path)
    if not p.exists():
        return None
    try:
        d = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise AsvpError(f"engine sidecar {p} is not readable JSON ({type(exc).__name__}); rebuild the engine "
                        "with asvp build") from None
    if not isinstance(d, dict) or d.get("format") != SIDECAR_FORMAT:
        raise AsvpError(f"{p} is not an asvp engine sidecar (format {d.get('format') if isinstance(d, dict) else '?'!r})")
    return d


def check_sidecar(sidecar: dict, *, tensorrt_version: str, engine_sha256: str | None = None,
                  device: dict | None = None, engine_path="engine") -> None:
    """One-line AsvpError when the engine cannot run here; says what to do."""
    src = sidecar.get("source_model", {}).get("path", "the source ONNX model")
    rebuild = f"rebuild it here with: asvp build {src} -o {engine_path}"
    if engine_sha256 is not None and sidecar.get("engine_sha256") != engine_sha256:
        raise AsvpError(f"{engine_path} does not match its sidecar {sidecar_path(engine_path).name} (digest differs): "
                        f"the engine was replaced or truncated; {rebuild}")
    built = sidecar.get("tensorrt_version")
    if built != tensorrt_version:
        raise AsvpError(f"{engine_path} was built with TensorRT {built}, this is TensorRT {tensorrt_version}; "
                        f"engines only load in the TensorRT version that built them: {rebuild}")
    want_cc = (sidecar.get("device") or {}).get("compute_capability")
    have_cc = (device or {}).get("compute_capability")
    if want_cc and have_cc and want_cc != have_cc:
        raise AsvpError(f"{engine_path} was built for a GPU of compute capability {want_cc} "
                        f"({sidecar['device'].get('name', '?')}), this GPU is {have_cc}: {rebuild}")


def write_engine(engine_bytes, engine_path, sidecar: dict) -> Path:
    """Engine and sidecar, each written to a temporary file and renamed into place only when complete."""
    engine_path = Path(engine_path)
    with atomic_output(engine_path) as tmp_engine:
        with open(tmp_engine, "wb") as f:
            f.write(memoryview(engine_bytes))
        with atomic_output(sidecar_path(engine_path)) as tmp_side:
            tmp_side.write_text(json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    return engine_path


def current_device() -> dict:
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return {"name": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}
    except Exception:
        pass
    return {}


# ---- building ----------------------------------------------------------------------------------------------

@dataclass
class BuildResult:
    engine: str
    sidecar: str
    tensorrt_version: str
    profile: ShapeProfile
    fp16: bool
    int8: bool
    plugin_nodes: int
    engine_bytes: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"engine": self.engine, "sidecar": self.sidecar, "tensorrt_version": self.tensorrt_version,
                "profile": self.profile.to_dict(), "fp16": self.fp16, "int8": self.int8,
                "plugin_nodes": self.plugin_nodes, "engine_bytes": self.engine_bytes, "notes": self.notes}

    def summary_lines(self) -> list[str]:
        p = self.profile
        return [f"wrote {self.engine} ({self.engine_bytes} bytes, TensorRT {self.tensorrt_version}, "
                f"{'fp16' if self.fp16 else 'fp32'}{'+int8' if self.int8 else ''}, profile {p.input} "
                f"min {format_shape(p.min)} opt {format_shape(p.opt)} max {format_shape(p.max)}, "
                f"{self.plugin_nodes} AsvpPerturb plugin node(s)) and {self.sidecar}"] + [f"note: {n}" for n in self.notes]


@dataclass(frozen=True)
class BuildPlan:
    """Everything decided before TensorRT is touched (so bad input fails fast, exit 2, without TensorRT)."""

    onnx_path: Path
    profile: ShapeProfile
    plugin_nodes: int
    metadata: dict
    foreign_ops: tuple = ()  # custom ops TensorRT can only build with the user's own plugin library loaded


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
    return BuildPlan(p, profile, len(nodes), meta, tuple(foreign_custom_ops(model)))


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


def build_engine(onnx_path, engine_path, *, min_shape=None, opt_shape=None, max_shape=None, fp16: bool = False,
                 int8: bool = False, workspace=None, plugin: bool = True, aot_plugin: bool = False) -> BuildResult:
    """Build a TensorRT engine with one dynamic-shape profile; writes `engine_path` and `engine_path`.json.

    aot_plugin: embed the AsvpPerturb plugin's AOT implementation (the fused Triton kernel as PTX) instead of the
    JIT one, so that the engine should load without Python; UNVERIFIED (docs/plugin.md section 5), opt-in. Needs
    plugin nodes, TensorRT >= 10.9 and Triton. Raises AsvpError (exit 2) for bad input and MissingDependencyError
    (exit 3) when TensorRT is absent; in either case nothing is written.
    """
    plan = plan_build(onnx_path, min_shape=min_shape, opt_shape=opt_shape, max_shape=max_shape, plugin=plugin)
    ws = parse_size(workspace) if workspace is not None else None
    if Path(engine_path).suffix.lower() == ".onnx":
        raise AsvpError(f"refusing to write an engine to {engine_path} (an .onnx name); use .engine or .plan")
    if aot_plugin and not plan.plugin_nodes:
        raise AsvpError(f"--aot-plugin: {plan.onnx_path} has no AsvpPerturb plugin nodes (defend it with --mode plugin)")
    trt = _require_builder()
    if aot_plugin:
        _prefer_aot_flag(trt)  # before anything is registered or built
    notes = []
    plugins = []
    if plan.plugin_nodes:
        plugin_trt.require_plugin_runtime()
        plugin_trt.register_asvp_plugin(aot=aot_plugin)
        plugins.append({"namespace": PLUGIN_NAMESPACE, "name": PLUGIN_OP, "version": PLUGIN_VERSION,
                        "implementation": AOT_IMPLEMENTATION if aot_plugin else "tensorrt.plugin JIT (Python)",
                        "nodes": plan.plugin_nodes})
        if aot_plugin:
            notes.append("AOT AsvpPerturb plugin (PREFER_AOT_PYTHON_PLUGINS): UNVERIFIED, never built or run with a "
                         "real TensorRT; whether the engine loads without Python has not been tried")
        else:
            notes.append("the engine contains the Python AsvpPerturb plugin: load it with "
                         "asvp.runtime.engines.build.load_engine (or register_asvp_plugin() first) in a Python process")
    if int8:
        notes.append("int8 without a calibrator only applies to explicitly quantized (Q/DQ) layers")
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath
    from polygraphy.exception import PolygraphyException

    config_kw = {"fp16": bool(fp16), "int8": bool(int8), "profiles": [plan.profile.to_polygraphy()]}
    if ws is not None:
        config_kw["memory_pool_limits"] = {trt.MemoryPoolType.WORKSPACE: ws}
    network = _aot_network(trt, str(plan.onnx_path)) if aot_plugin else NetworkFromOnnxPath(str(plan.onnx_path))
    try:
        engine_bytes = EngineBytesFromNetwork(network, config=CreateConfig(**config_kw))()
    except PolygraphyException as exc:
        raise _build_error(plan, exc) from None
    data = bytes(memoryview(engine_bytes))
    sidecar = make_sidecar(engine_sha256=sha256_bytes(data), tensorrt_version=trt.__version__, profile=plan.profile,
                           source_path=plan.onnx_path, source_sha256=sha256_file(plan.onnx_path), fp16=fp16, int8=int8,
                           workspace=ws, plugins=plugins, device=current_device(), source_metadata=plan.metadata)
    write_engine(data, engine_path, sidecar)
    return BuildResult(str(engine_path), str(sidecar_path(engine_path)), trt.__version__, plan.profile, bool(fp16),
                       bool(int8), plan.plugin_nodes, len(data), notes)


def _require_builder():
    trt = plugin_trt.import_tensorrt(need_builder=True)
    ok, detail = plugin_trt.cuda_status()
    if not ok:
        raise MissingDependencyError(f"TensorRT {trt.__version__} needs an NVIDIA GPU to build engines, but {detail}")
    return trt


# ---- loading -----------------------------------------------------------------------------------------------

def load_engine(path):
    """Deserialize an engine file (trt.ICudaEngine), registering the AsvpPerturb plugin first.

    One-line errors: engine built by another TensorRT version or for another GPU (from the sidecar), engine and
    sidecar out of step, plugin needed but not registrable, or TensorRT refusing the file.
    """
    p = require_file(path, "TensorRT engine")
    sidecar = read_sidecar(p)
    trt = plugin_trt.import_tensorrt()
    data = p.read_bytes()
    needs_plugin = bool(sidecar and sidecar.get("plugins"))
    if sidecar is not None:
        check_sidecar(sidecar, tensorrt_version=trt.__version__, engine_sha256=sha256_bytes(data),
                      device=current_device(), engine_path=p)
    if needs_plugin:
        plugin_trt.require_plugin_runtime()
        plugin_trt.register_asvp_plugin()
        if not plugin_trt.plugin_registered():
            raise MissingDependencyError(f"{p} needs TensorRT plugin asvp::AsvpPerturb v1, which is not in TensorRT's "
                                         "plugin registry after registration; check the TensorRT installation")
    else:
        try:  # no sidecar: the engine may still contain the plugin; registering is cheap when possible
            plugin_trt.register_asvp_plugin()
        except MissingDependencyError:
            pass
    from polygraphy.backend.trt import EngineFromBytes
    from polygraphy.exception import PolygraphyException

    try:
        engine = EngineFromBytes(data)()
    except PolygraphyException:
        hint = ("it needs the asvp::AsvpPerturb plugin registered before deserialising "
                "(asvp.runtime.engines.plugin_trt.register_asvp_plugin())" if needs_plugin else
                "it may come from another TensorRT version or GPU, or need a plugin that is not registered "
                "(no sidecar to tell)")
        raise AsvpError(f"TensorRT {trt.__version__} could not deserialise {p}: {hint}; rebuild with asvp build") from None
    return engine


class EngineLoader:
    """Polygraphy-style lazy loader (callable) returning `load_engine(path)`; for TrtRunner."""

    def __init__(self, path):
        self.path = path

    def __call__(self):
        return load_engine(self.path)


def trt_runner(model, *, input_shape=None, name: str | None = None):
    """Polygraphy TrtRunner over an engine file, or over an engine built in memory from an ONNX model.

    For ONNX input the profile is min=opt=max=input_shape when given, else the build defaults.
    """
    from polygraphy.backend.trt import TrtRunner

    if is_engine_path(model):
        return TrtRunner(EngineLoader(model), name=name)
    if not isinstance(model, (str, os.PathLike)):
        raise AsvpError("the tensorrt backend needs an ONNX file path or an engine file path")
    shape = format_shape(input_shape) if input_shape is not None else None
    plan = plan_build(model, min_shape=shape, opt_shape=shape, max_shape=shape)
    _require_builder()
    if plan.plugin_nodes:
        plugin_trt.require_plugin_runtime()
        plugin_trt.register_asvp_plugin()
    from polygraphy.backend.trt import CreateConfig, EngineFromNetwork, NetworkFromOnnxPath

    engine = EngineFromNetwork(NetworkFromOnnxPath(str(plan.onnx_path)),
                               config=CreateConfig(profiles=[plan.profile.to_polygraphy()]))
    return TrtRunner(engine, name=name)


def onnx_input_dims(model: onnx.ModelProto, name: str) -> list:
    inp = next(i for i in model.graph.input if i.name == name)
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in inp.type.tensor_type.shape.dim]

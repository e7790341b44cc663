"""Write a Triton model repository for an ONNX model (or an `asvp build` engine), in one of three forms:

    onnxruntime    <name>/1/model.onnx, backend "onnxruntime" (clean and subgraph-defended models; optional
                   TensorRT execution-accelerator parameters). The production form in NVIDIA's Triton containers.
    tensorrt_plan  <name>/1/model.plan from an `asvp build` engine; cc_model_filenames and the TensorRT version from
                   its sidecar. Labelled unverified (asvp.verified "false") until a TensorRT has run it.
    python         <name>/1/model.onnx + model.py (runtime/serving/python_model.py): asvp's ONNX Runtime session,
                   the only form that runs plugin-mode models (the AsvpPerturb custom op), and the one the
                   nvidia-pytriton server runs.

    res = write_repository("sr.asvp.onnx", "repo", RepoOptions(name="sr", form="python"))

The model's defence and fingerprint metadata (config digest, mode, placement, taps, mark tensor; a key id only when
given, never the key) become string `parameters` of config.pbtxt, so a served model says what it carries. The
config is parsed against Triton's ModelConfig schema before anything is written, and the model folder is written
beside the repository and renamed into place when complete: never half-written.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import onnx

import asvp
from asvp.errors import AsvpError
from asvp.graph_passes.mark import read_mark
from asvp.graph_passes.metadata import read_defence
from asvp.graph_passes.plugin_contract import plugin_nodes
from asvp.io import check_output_dir, require_file
from asvp.onnx_utils import get_metadata, image_input, load_model
from asvp.runtime.engines.shapes import make_profile, onnx_input_dims
from asvp.runtime.engines.sidecar import is_engine_path, read_sidecar
from asvp.runtime.serving import python_model
from asvp.runtime.serving.constants import DEFAULT_QUEUE_DELAY_US, FORMS
from asvp.runtime.serving.env import default_env_path
from asvp.runtime.serving.model_config import DEFAULT_MAX_BATCH, ConfigOptions, TensorRTAccel, config_text, model_config

VERSION = "1"
PLAN_FILE = "model.plan"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
# ONNX metadata copied into the config parameters as they are (the model's own description)
COPIED_META = ("asvp.task", "asvp.teacher", "asvp.scale", "asvp.value_range", "asvp.layout", "asvp.size_multiple")


@dataclass
class RepoOptions:
    """How the repository entry is written (the CLI's `asvp triton-repo` options)."""

    name: str
    form: str = "python"
    max_batch_size: int = DEFAULT_MAX_BATCH  # 0 turns batching off; ignored when the model's batch is static
    dynamic_batching: bool = True
    max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US
    instances: int = 1
    gpu: bool = False  # instance_group kind GPU (tensorrt_plan is always GPU)
    max_side: int = 0  # python form: refuse larger inputs with a 4xx (0: no limit)
    threads: int = 0  # python form: ONNX Runtime intra-op threads per instance (0: the session's default)
    tensorrt: TensorRTAccel | None = None  # onnxruntime form: TensorRT execution accelerator
    execution_env: str | None = None  # python form: EXECUTION_ENV_PATH (None: the serving env; "": leave unset)
    key_id: str | None = None  # fingerprint key id to record (public label; the key itself is never written)
    source_onnx: str | None = None  # tensorrt_plan: the ONNX the engine was built from (default: the sidecar's)
    force: bool = False


@dataclass
class RepositoryResult:
    repository: str
    name: str
    form: str
    config: str  # path of config.pbtxt
    max_batch_size: int
    inputs: list
    outputs: list
    parameters: dict = field(default_factory=dict)
    verified: bool = True

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def summary_lines(self) -> list[str]:
        lines = [f"wrote {self.repository}/{self.name} ({self.form} form): max_batch_size {self.max_batch_size}, "
                 f"inputs {', '.join(self.inputs)}; outputs {', '.join(self.outputs)}"]
        if self.parameters.get("asvp.defended") == "true":
            lines.append(f"defence recorded: {self.parameters.get('asvp.mode')} ({self.parameters.get('asvp.placement')}),"
                         f" config {self.parameters.get('asvp.config_digest')}")
        if not self.verified:
            lines.append("unverified: no TensorRT has run this plan file here (Triton loads it only with the TensorRT "
                         "version and GPU family that built it)")
        return lines


def metadata_parameters(model: onnx.ModelProto, key_id: str | None = None) -> dict:
    """What the model says it carries, as config parameters (strings): defence, fingerprint mark, task."""
    meta = get_metadata(model)
    params = {k: meta[k] for k in COPIED_META if k in meta}
    info = read_defence(model)
    params["asvp.defended"] = "true" if info.defended else "false"
    if info.defended:
        params.update({"asvp.mode": info.mode or "", "asvp.placement": info.placement,
                       "asvp.config_digest": info.config_digest or (info.config.digest() if info.config else "")})
        taps = [n.tap_output for n in info.taps]
        if taps:
            params["asvp.taps"] = ",".join(taps)
    mark = read_mark(model)
    if mark is not None:
        params.update({"asvp.fingerprint": "true", "asvp.fingerprint.tensor": mark.tensor,
                       "asvp.fingerprint.m": str(mark.m), "asvp.fingerprint.version": str(mark.version)})
    if key_id:
        params["asvp.fingerprint.key_id"] = key_id
    params["asvp.version"] = asvp.__version__
    return params


def _check_options(opts: RepoOptions) -> None:
    if opts.form not in FORMS:
        raise AsvpError(f"unknown repository form {opts.form!r}: choose one of {', '.join(FORMS)}")
    if not _NAME.match(opts.name or ""):
        raise AsvpError(f"model name {opts.name!r} is not a valid Triton model name (letters, digits, _ . -)")
    for label, v in (("max batch size", opts.max_batch_size), ("max side", opts.max_side), ("threads", opts.threads)):
        if v < 0:
            raise AsvpError(f"{label} must be >= 0, got {v}")
    if opts.instances < 1:
        raise AsvpError(f"instances must be >= 1, got {opts.instances}")
    if opts.tensorrt is not None and opts.form != "onnxruntime":
        raise AsvpError("TensorRT execution-accelerator parameters apply to the onnxruntime form only")


def _engine_source(engine: Path, opts: RepoOptions) -> tuple[dict, Path]:
    side = read_sidecar(engine)
    if side is None:
        raise AsvpError(f"{engine} has no asvp sidecar ({engine.name}.json); build it with asvp build")
    src = Path(opts.source_onnx or side.get("source_model", {}).get("path", ""))
    if not src.is_file():
        raise AsvpError(f"the ONNX model {engine} was built from ({src}) is not there; name it with --source-onnx")
    return side, src


def _trt_profile(model: onnx.ModelProto, accel: TensorRTAccel) -> None:
    """The accelerator's profile from its min/opt/max shapes, validated as `asvp build` validates them."""
    shapes = accel.shapes or {}
    if accel.profile is None and any(shapes.values()):
        name = image_input(model).name
        accel.profile = make_profile(name, onnx_input_dims(model, name), shapes.get("min"), shapes.get("opt"),
                                     shapes.get("max"))


def _config_options(model: onnx.ModelProto, opts: RepoOptions, sidecar: dict | None) -> ConfigOptions:
    if opts.tensorrt is not None:
        _trt_profile(model, opts.tensorrt)
    params = metadata_parameters(model, opts.key_id)
    co = ConfigOptions(name=opts.name, backend={"tensorrt_plan": "tensorrt"}.get(opts.form, opts.form),
                       max_batch_size=opts.max_batch_size, dynamic_batching=opts.dynamic_batching,
                       max_queue_delay_us=opts.max_queue_delay_us, instances=opts.instances,
                       kind="KIND_GPU" if (opts.gpu or opts.form == "tensorrt_plan") else "KIND_CPU",
                       parameters=params, tensorrt=opts.tensorrt)
    if opts.form == "python":
        env = str(default_env_path().resolve()) if opts.execution_env is None else opts.execution_env
        if env:
            params["EXECUTION_ENV_PATH"] = env
        if opts.max_side:
            params[python_model.PARAM_MAX_SIDE] = str(opts.max_side)
        if opts.threads:
            params[python_model.PARAM_THREADS] = str(opts.threads)
    if sidecar is not None:
        prof_max = (sidecar.get("profile") or {}).get("max") or []
        if prof_max and opts.max_batch_size:
            co.max_batch_size = min(opts.max_batch_size, int(prof_max[0]))  # the engine's profile caps the batch
        cc = (sidecar.get("device") or {}).get("compute_capability")
        if cc:
            co.cc_model_filenames = {str(cc): PLAN_FILE}
        co.default_model_filename = PLAN_FILE
        params.update({"asvp.tensorrt_version": str(sidecar.get("tensorrt_version", "")), "asvp.verified": "false",
                       "asvp.engine_sha256": str(sidecar.get("engine_sha256", ""))})
    return co


def _place(tmp: Path, final: Path, force: bool) -> None:
    """Rename the finished model folder into place; an old one (force) is moved aside first, removed after."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old.{os.getpid()}")
        os.replace(final, old)
    try:
        os.replace(tmp, final)
    except OSError as exc:
        if old is not None:
            os.replace(old, final)
        raise AsvpError(f"cannot write {final}: {exc.strerror or type(exc).__name__}") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_repository(model_path, repo, opts: RepoOptions) -> RepositoryResult:
    """Write `<repo>/<name>/` for `model_path` (an ONNX model; an engine for the tensorrt_plan form)."""
    _check_options(opts)
    src = require_file(model_path, "model")
    sidecar = None
    if opts.form == "tensorrt_plan":
        if not is_engine_path(src):
            raise AsvpError(f"the tensorrt_plan form takes an asvp build engine (.engine/.plan), not {src.name}")
        sidecar, onnx_path = _engine_source(src, opts)
    elif is_engine_path(src):
        raise AsvpError(f"{src.name} is a TensorRT engine: use --form tensorrt_plan (or give the ONNX model)")
    else:
        onnx_path = src
    model = load_model(onnx_path)
    if opts.form == "onnxruntime" and plugin_nodes(model):
        raise AsvpError(f"{onnx_path.name} has AsvpPerturb plugin nodes, which Triton's onnxruntime backend cannot run:"
                        " use --form python, or defend with --mode subgraph")
    repo = check_output_dir(repo, "repository")
    final = repo / opts.name
    if final.exists() and not opts.force:
        raise AsvpError(f"{final} already exists; pass --force (force=True) to replace it")
    co = _config_options(model, opts, sidecar)
    cfg = model_config(model, co)
    text = config_text(cfg)  # schema-checked before anything is written
    repo.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{opts.name}.", suffix=".tmp", dir=repo))
    try:
        (tmp / VERSION).mkdir()
        (tmp / "config.pbtxt").write_text(text)
        if opts.form == "tensorrt_plan":
            shutil.copyfile(src, tmp / VERSION / PLAN_FILE)
        else:
            shutil.copyfile(onnx_path, tmp / VERSION / "model.onnx")
        if opts.form == "python":
            shutil.copyfile(python_model.__file__, tmp / VERSION / "model.py")
        os.chmod(tmp, 0o755)
        _place(tmp, final, opts.force)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return RepositoryResult(str(repo), opts.name, opts.form, str(final / "config.pbtxt"), cfg.max_batch_size,
                            [i.name for i in cfg.input], [o.name for o in cfg.output], co.parameters,
                            verified=sidecar is None)

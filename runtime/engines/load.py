"""TensorRT engines back into memory, and Polygraphy TrtRunners over them.

    engine = load_engine("sr.engine")           # registers the AsvpPerturb plugin first
    runner = trt_runner("sr.engine")            # or trt_runner("sr.onnx", input_shape=(1, 3, 64, 64))

`load_engine` reads the sidecar first and refuses, in one line, an engine built by another TensorRT version or
on another GPU (honouring its hardware and version compatibility: runtime.engines.portability), or one whose
plugin cannot be registered: TensorRT itself fails obscurely on such an engine. A version-compatible engine is
deserialised by a runtime allowed to run its embedded host code (UNVERIFIED with a real TensorRT).
"""
from __future__ import annotations

import os

from asvp.errors import AsvpError, MissingDependencyError
from asvp.io import require_file
from asvp.runtime.engines import plugin_trt, portability
from asvp.runtime.engines.build import plan_build, require_builder
from asvp.runtime.engines.shapes import format_shape
from asvp.runtime.engines.sidecar import check_sidecar, current_device, is_engine_path, read_sidecar, sha256_bytes


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
        engine = EngineFromBytes(data, runtime=portability.runtime_loader(trt, sidecar))()
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
    require_builder()
    if plan.plugin_nodes:
        plugin_trt.require_plugin_runtime()
        plugin_trt.register_asvp_plugin()
    from polygraphy.backend.trt import CreateConfig, EngineFromNetwork, NetworkFromOnnxPath

    engine = EngineFromNetwork(NetworkFromOnnxPath(str(plan.onnx_path)),
                               config=CreateConfig(profiles=[plan.profile.to_polygraphy()]))
    return TrtRunner(engine, name=name)

"""Stand-ins shared by the engine tests: for `tensorrt.plugin` (they record what plugin_trt hands to TensorRT's
Python plugin API so that it can be checked against the API's documented rules without TensorRT), and for
`tensorrt` with Polygraphy's TensorRT loaders (`fake_tensorrt`: build/load orchestration, layer pinning)."""
from __future__ import annotations

import types

import pytest


class Sym:
    """Stand-in for tensorrt.plugin ShapeExpr / SymInt32: records the expression it stands for."""

    def __init__(self, value, constant: bool = False):
        self.value, self.is_constant = value, constant

    def constant_value(self):  # a method in TensorRT 10.8-10.9, a property later: plugin_trt handles both
        return self.value

    def __mul__(self, other):
        return Sym(f"({self.value}*{other.value})")

    def __eq__(self, other):
        return isinstance(other, Sym) and other.value == self.value


def make_fake_trtp(with_aot: bool = True):
    fake = types.SimpleNamespace(defs={})

    class TensorDesc:
        def __init__(self, shape_expr=None):
            self.shape_expr = shape_expr

        def like(self):
            return "like"

    class Tensor:
        pass

    class AutoTuneCombination:
        def __init__(self, types_, layouts=None):
            self.types, self.layouts = types_, layouts

    class KernelLaunchParams:
        grid_x = grid_y = grid_z = block_x = block_y = block_z = 1
        shared_mem = 0

    class SymExprs:
        pass

    class SymIntExprs(SymExprs, list):
        def __init__(self, n):
            list.__init__(self, [None] * n)

    def deco(kind):
        def outer(plugin_id):
            def inner(fn):
                fake.defs.setdefault(kind, []).append((plugin_id, fn))
                return fn
            return inner
        return outer

    fake.TensorDesc, fake.Tensor, fake.AutoTuneCombination = TensorDesc, Tensor, AutoTuneCombination
    fake.KernelLaunchParams, fake.SymExprs, fake.SymIntExprs = KernelLaunchParams, SymExprs, SymIntExprs
    fake.SymInt32 = lambda e: ("SymInt32", e.value if isinstance(e, Sym) else e)
    fake.register, fake.autotune, fake.impl = deco("register"), deco("autotune"), deco("impl")
    if with_aot:
        fake.aot_impl = deco("aot_impl")
    return fake


def make_nchw(channels_constant: bool = True):
    return [Sym("N"), Sym(32, constant=channels_constant), Sym("H"), Sym("W")]


@pytest.fixture
def fake_trtp():
    """fake_trtp(with_aot=True) -> a stand-in tensorrt.plugin module; .defs[kind] lists (plugin id, function)."""
    return make_fake_trtp


@pytest.fixture
def nchw():
    """nchw(channels_constant=True) -> shape expressions [N, 32, H, W] as tensorrt.plugin hands them to AOT impls."""
    return make_nchw


# ---- a stand-in `tensorrt` and Polygraphy TensorRT loaders (build/load orchestration without TensorRT) -----------

class FakeTensor:
    def __init__(self, name, dtype="FLOAT"):
        self.name, self.dtype = name, dtype


class FakeLayer:
    """A TensorRT ILayer stand-in: records the precision and output types asvp sets."""

    def __init__(self, name, kind="MATRIX_MULTIPLY", outputs=None):
        self.name, self.type = name, types.SimpleNamespace(name=kind)
        self.outputs = [FakeTensor(o, d) for o, d in (outputs or [(name + "_out", "FLOAT")])]
        self.precision, self.output_types = None, {}

    @property
    def num_outputs(self):
        return len(self.outputs)

    def get_output(self, i):
        return self.outputs[i]

    def set_output_type(self, i, dtype):
        self.output_types[i] = dtype


class FakeNetwork:
    def __init__(self, layers):
        self.layers = layers

    @property
    def num_layers(self):
        return len(self.layers)

    def get_layer(self, i):
        return self.layers[i]


class FakeBuilderConfig:
    """What Polygraphy's CreateConfig returns: here only the timing cache asvp saves after the build."""

    def __init__(self, cache: bytes):
        self.cache = cache

    def get_timing_cache(self):
        return types.SimpleNamespace(serialize=lambda: self.cache)


@pytest.fixture
def trt_layers():
    """The stand-in TensorRT network classes: .Layer(name, kind, [(output, dtype)]), .Network(layers)."""
    return types.SimpleNamespace(Layer=FakeLayer, Network=FakeNetwork)


def default_network():
    return FakeNetwork([FakeLayer("conv1", "CONVOLUTION", [("f", "FLOAT")]),
                        FakeLayer("conv2", "CONVOLUTION", [("out", "FLOAT")])])


@pytest.fixture
def fake_tensorrt(monkeypatch):
    """A stand-in `tensorrt` + `tensorrt.plugin` and Polygraphy TensorRT loaders that record what they get.

    The network loader yields calls["network"] (set it to a FakeNetwork before building), the config records
    CreateConfig's arguments and hands back a FakeBuilderConfig whose timing cache is calls["cache"] (bytes), the
    engine loader records the runtime it was given. This exercises asvp's orchestration (order, arguments, files,
    errors); it says nothing about real TensorRT.
    """
    import sys

    import polygraphy.backend.trt as pg_trt
    import polygraphy.backend.trt.util as pg_trt_util

    from asvp.runtime.engines import build, load, plugin_trt

    calls = {"order": [], "registered": set(), "network": default_network(), "cache": b"CACHE-1"}
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.9.0.34"
    trt.Builder = object
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.DataType = types.SimpleNamespace(FLOAT="FLOAT", HALF="HALF", BF16="BF16", INT32="INT32", INT64="INT64",
                                         BOOL="BOOL")
    trt.HardwareCompatibilityLevel = types.SimpleNamespace(NONE="HW_NONE", AMPERE_PLUS="HW_AMPERE_PLUS")

    class Runtime:
        def __init__(self, logger):
            self.engine_host_code_allowed = False

    trt.Runtime = Runtime

    class Registry:
        def get_creator(self, name, version, namespace):
            return object() if (namespace, name, version) in calls["registered"] else None

    trt.get_plugin_registry = lambda: Registry()
    trtp = types.ModuleType("tensorrt.plugin")

    class _Ns(types.SimpleNamespace):
        pass

    trtp.op = _Ns()

    def register(plugin_id):
        def deco(fn):
            ns, name = plugin_id.split("::")
            calls["registered"].add((ns, name, "1"))
            calls["order"].append("register")
            setattr(trtp.op, ns, _Ns(**{name: fn}))
            return fn
        return deco

    trtp.register = register
    trtp.autotune = trtp.impl = lambda plugin_id: (lambda fn: fn)
    trtp.TensorDesc, trtp.Tensor = type("TensorDesc", (), {}), type("Tensor", (), {})
    trtp.AutoTuneCombination = lambda *a: a
    trt.plugin = trtp
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "tensorrt.plugin", trtp)
    monkeypatch.setattr(plugin_trt, "_REGISTERED", False)
    monkeypatch.setattr(plugin_trt, "cuda_status", lambda: (True, "CUDA device FakeGPU"))
    calls["device"] = {"name": "FakeGPU", "compute_capability": "9.0"}
    for mod in (build, load):  # each imports current_device: both the build and the load see the fake GPU
        monkeypatch.setattr(mod, "current_device", lambda: dict(calls["device"]))

    def network_from_onnx_path(path):
        def load_network():
            calls["order"].append("parse")
            calls["parsed"] = path
            return "builder", calls["network"], "parser"
        return load_network

    def create_config(**kw):
        calls["config"] = kw

        def make(builder, network):
            calls["order"].append("config")
            return FakeBuilderConfig(calls["cache"])
        return make

    def engine_bytes(network, config):
        def call():
            builder, net, _ = network() if callable(network) else network
            config(builder, net)
            calls["order"].append("build")
            return b"ENGINE:" + calls["parsed"].encode()
        return call

    def engine_from_bytes(data, runtime=None):
        def call():
            calls["order"].append("deserialize")
            calls["runtime"] = runtime() if callable(runtime) else runtime
            return ("engine", bytes(data))
        return call

    monkeypatch.setattr(pg_trt, "NetworkFromOnnxPath", network_from_onnx_path)
    monkeypatch.setattr(pg_trt, "CreateConfig", create_config)
    monkeypatch.setattr(pg_trt, "EngineBytesFromNetwork", engine_bytes)
    monkeypatch.setattr(pg_trt, "EngineFromBytes", engine_from_bytes)
    monkeypatch.setattr(pg_trt_util, "get_trt_logger", lambda: "logger")
    return calls

"""Backends (availability, provider actually used, runners) and TensorRT engine building and loading (planning on
CPU, the orchestration against a stand-in TensorRT; the real build/load under @pytest.mark.tensorrt, skipped with the
reason when TensorRT or a GPU is absent). Shapes and profiles: test_shapes.py; the sidecar: test_sidecar.py."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from asvp import api
from asvp.errors import AsvpError, MissingDependencyError
from asvp.graph_passes import plugin_contract
from asvp.options import ShapeProfile
from asvp.runtime.engines import backends, build, load, plugin_trt, sessions
from asvp.runtime.engines.sidecar import read_sidecar, sha256_file, sidecar_path

TRT_OK, TRT_WHY = plugin_trt.tensorrt_status()
CUDA_OK, CUDA_WHY = plugin_trt.cuda_status()
TRT_IMPORTABLE = True
try:
    plugin_trt.import_tensorrt()
except MissingDependencyError:
    TRT_IMPORTABLE = False
needs_trt_gpu = pytest.mark.skipif(not (TRT_OK and CUDA_OK), reason=f"needs TensorRT >= 10.8 and a CUDA device: "
                                   f"{TRT_WHY if not TRT_OK else CUDA_WHY}")


def image_model(plugin: bool = False, channels: int = 6) -> onnx.ModelProto:
    """img [N,3,H,W] -> 1x1 conv to `channels` -> (AsvpPerturb) -> 1x1 conv back to 3."""
    g = np.random.default_rng(0)
    w1 = helper.make_tensor("w1", TensorProto.FLOAT, [channels, 3, 1, 1], g.standard_normal(3 * channels).tolist())
    w2 = helper.make_tensor("w2", TensorProto.FLOAT, [3, channels, 1, 1], g.standard_normal(3 * channels).tolist())
    nodes = [helper.make_node("Conv", ["img", "w1"], ["f"], name="conv1")]
    if plugin:
        nodes.append(helper.make_node("AsvpPerturb", ["f"], ["fp"], domain="ai.onnx.contrib", name="asvp0",
                                      plugin_namespace="asvp", plugin_version="1", k=2, h=1.5, tau=0.9, adaptive=1,
                                      placement="inline"))
    nodes.append(helper.make_node("Conv", ["fp" if plugin else "f", "w2"], ["out"], name="conv2"))
    graph = helper.make_graph(nodes, "img", [helper.make_tensor_value_info("img", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3, "H", "W"])], [w1, w2])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("ai.onnx.contrib", 1)] if plugin else [])
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)


@pytest.fixture
def model_paths(tmp_path):
    clean, plug = tmp_path / "clean.onnx", tmp_path / "plugin.onnx"
    onnx.save(image_model(False), str(clean))
    onnx.save(image_model(True), str(plug))
    return clean, plug


def run_cli(*args, cwd=None):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "asvp.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


# ---- availability and providers ---------------------------------------------------------------------------

def test_backend_status_reports_every_backend_with_a_reason():
    rows = backends.backends_status()
    assert [r.name for r in rows] == list(backends.BACKENDS) == ["onnxrt-cpu", "onnxrt-cuda", "onnxrt-trt", "tensorrt"]
    cpu = rows[0]
    assert cpu.available and "CPUExecutionProvider" in cpu.detail
    for r in rows:
        assert r.detail and "\n" not in r.detail
        if not r.available:
            assert "install" in r.detail or "no CUDA device" in r.detail or "falls back" in r.detail, r
    assert backends.available_backends() == tuple(r.name for r in rows if r.available)
    assert "onnxrt-cpu" in backends.available_backends()
    assert [d["name"] for d in api.backends()] == list(backends.BACKENDS)


def test_unavailable_backend_is_missing_dependency(model_paths):
    clean, _ = model_paths
    missing = [b for b in backends.BACKENDS if b not in backends.available_backends()]
    if not missing:
        pytest.skip("every backend is available here")
    for b in missing:
        with pytest.raises(MissingDependencyError) as e:
            backends.make_runner(clean, b)
        assert e.value.exit_code == 3 and "\n" not in str(e.value) and b in str(e.value)


def test_unknown_backend_and_engine_on_ort_are_errors(model_paths, tmp_path):
    clean, _ = model_paths
    with pytest.raises(AsvpError, match="unknown backend 'cuda'"):
        backends.make_runner(clean, "cuda")
    eng = tmp_path / "x.engine"
    eng.write_bytes(b"\0")
    with pytest.raises(AsvpError, match="run it with backend 'tensorrt'"):
        backends.make_runner(eng, "onnxrt-cpu")


def test_check_provider_detects_silent_cpu_fallback():
    assert sessions.check_provider(["CUDAExecutionProvider", "CPUExecutionProvider"], "CUDAExecutionProvider") == \
        "CUDAExecutionProvider"
    with pytest.raises(MissingDependencyError) as e:
        sessions.check_provider(["CPUExecutionProvider"], "CUDAExecutionProvider", "onnxrt-cuda")
    assert "onnxrt-cuda" in str(e.value) and "CPUExecutionProvider" in str(e.value) and e.value.exit_code == 3


def test_runner_refuses_a_session_that_fell_back():
    class FakeSession:
        def get_providers(self):
            return ["CPUExecutionProvider"]

    runner = sessions.AsvpOnnxrtRunner(FakeSession(), expected_provider="CUDAExecutionProvider", backend="onnxrt-cuda")
    with pytest.raises(MissingDependencyError, match="runs the session on CPUExecutionProvider"):
        runner.activate()
    assert not runner.is_active


def test_actual_provider_of_an_active_runner(model_paths, monkeypatch):
    clean, _ = model_paths
    runner = backends.make_runner(clean, "onnxrt-cpu")
    with runner:
        assert backends.actual_provider(runner, "onnxrt-cpu") == "CPUExecutionProvider"
    monkeypatch.setattr(plugin_trt, "describe_tensorrt", lambda: "TensorRT 10.9.0 (fake)")
    assert backends.actual_provider(object(), "tensorrt") == "TensorRT 10.9.0 (fake)"  # TrtRunner: no attribute

    def broken():
        raise RuntimeError("no tensorrt")

    monkeypatch.setattr(plugin_trt, "describe_tensorrt", broken)
    assert backends.actual_provider(object(), "tensorrt") == "tensorrt"  # never raises: falls back to the name


def test_run_reports_the_provider_that_ran(model_paths):
    clean, plug = model_paths
    x = np.random.default_rng(0).random((2, 3, 8, 8), dtype=np.float32)
    r = backends.run(clean, x)
    assert r.actual_provider == "CPUExecutionProvider" and r.plugin_nodes == 0
    assert r.description == "onnxrt-cpu ran on CPUExecutionProvider" and r.outputs["out"].shape == (2, 3, 8, 8)
    rp = backends.run(plug, x)  # plugin session chosen automatically
    assert rp.plugin_nodes == 1 and "1 AsvpPerturb plugin node(s)" in rp.description
    assert np.abs(rp.outputs["out"] - r.outputs["out"]).max() > 1e-3
    assert set(backends.run_model(plug, x)) == {"out"}
    with pytest.raises(AsvpError, match="NaN"):
        backends.run(clean, np.full((1, 3, 4, 4), np.nan, np.float32))


def test_ort_session_keeps_polygraphy_style_provider_names(model_paths):
    clean, plug = model_paths
    assert sessions.ort_session(clean, providers=["cpu"]).get_providers()[0] == "CPUExecutionProvider"
    assert sessions.ort_session(str(plug)).get_providers()[0] == "CPUExecutionProvider"  # plugin auto-detected
    with pytest.raises(MissingDependencyError, match="no provider matching 'nosuch'"):
        sessions.ort_session(clean, providers=["nosuch"])


def test_plugin_model_without_plugin_session_fails_clearly(model_paths):
    _, plug = model_paths
    with pytest.raises(AsvpError, match="AsvpPerturb is not registered with this session"):
        sessions.create_session(plug, plugins=False)


@pytest.mark.cuda
@pytest.mark.skipif("onnxrt-cuda" not in backends.available_backends(), reason="onnxrt-cuda is not available: "
                    + backends.backend_status("onnxrt-cuda").detail)
def test_onnxrt_cuda_really_runs_on_cuda(model_paths):
    clean, plug = model_paths
    x = np.random.default_rng(0).random((1, 3, 8, 8), dtype=np.float32)
    r = backends.run(plug, x, backend="onnxrt-cuda")
    assert r.actual_provider == "CUDAExecutionProvider"
    assert any("ran on CPU" in n for n in r.notes)
    np.testing.assert_allclose(r.outputs["out"], backends.run_model(plug, x), rtol=1e-4, atol=1e-5)


# ---- planning a build (pure) ---------------------------------------------------------------------------------

def test_plan_build_reads_the_model(model_paths):
    clean, plug = model_paths
    plan = build.plan_build(plug, max_shape="2x3x64x64")
    assert plan.plugin_nodes == 1 and plan.profile.input == "img" and plan.profile.max == (2, 3, 64, 64)
    assert build.plan_build(clean).plugin_nodes == 0
    with pytest.raises(AsvpError, match="drop --no-plugin"):
        build.plan_build(plug, plugin=False)


def test_foreign_custom_ops_are_named_in_build_errors(tmp_path):
    m = image_model(True)
    m.graph.node.insert(1, helper.make_node("Mystery", ["f"], ["f2"], domain="com.example"))
    m.graph.node[2].input[0] = "f2"
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    assert plugin_contract.foreign_custom_ops(m) == ["com.example::Mystery"]
    assert plugin_contract.foreign_custom_ops(image_model(True)) == []
    path = tmp_path / "mystery.onnx"
    onnx.save(m, str(path))
    plan = build.plan_build(path)
    assert plan.foreign_ops == ("com.example::Mystery",) and plan.plugin_nodes == 1
    msg = str(build._build_error(plan, RuntimeError("Failed to parse ONNX model.")))
    assert "com.example::Mystery" in msg and "--mode subgraph" in msg and "\n" not in msg
    plain = build._build_error(dataclasses.replace(plan, foreign_ops=()), RuntimeError("out of memory\nmore"))
    assert str(plain) == f"TensorRT could not build {plan.onnx_path}: out of memory"


# ---- without TensorRT: one line, exit 3, nothing written -----------------------------------------------------

@pytest.mark.skipif(TRT_IMPORTABLE, reason="TensorRT is importable here")
def test_asvp_build_without_tensorrt_exits_3_and_writes_nothing(model_paths, tmp_path):
    _, plug = model_paths
    out = tmp_path / "out" / "m.engine"
    res = run_cli("build", plug, "-o", out, "--fp16", "--max", "2x3x64x64")
    assert res.returncode == 3, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("asvp: error: TensorRT is not installed"), res.stderr
    assert "pip install" in lines[0]
    assert not out.exists() and not sidecar_path(out).exists()
    assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []
    with pytest.raises(MissingDependencyError):
        api.build_engine(plug, out)
    with pytest.raises(MissingDependencyError):
        api.load_engine(Path(plug))  # any existing file: TensorRT is checked before the bytes are used
    assert not out.exists()


@pytest.mark.slow
def test_asvp_build_bad_input_exits_2(model_paths, tmp_path):
    clean, _ = model_paths
    out = tmp_path / "m.engine"
    for args, needle in [((tmp_path / "nope.onnx", "-o", out), "ONNX model not found"),
                         ((clean, "-o", out, "--min", "1x3x64x64", "--max", "1x3x32x32"), "min <= opt <= max"),
                         ((clean, "-o", out, "--opt", "1x4x64x64"), "must be 3"),
                         ((clean, "-o", out, "--workspace", "lots"), "byte count")]:
        res = run_cli("build", *args)
        assert res.returncode == 2, (args, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1 and needle in res.stderr, res.stderr
    assert not out.exists()


def test_cli_backends_json():
    res = run_cli("backends", "--json")
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    assert rows[0] == {"name": "onnxrt-cpu", "available": True, "detail": rows[0]["detail"]}


# ---- with TensorRT and a GPU ---------------------------------------------------------------------------------

@pytest.mark.tensorrt
@pytest.mark.cuda
@needs_trt_gpu
def test_build_load_and_run_engine_with_plugin(model_paths, tmp_path):
    _, plug = model_paths
    eng = tmp_path / "m.engine"
    res = api.build_engine(plug, eng, profile=ShapeProfile("1x3x8x8", "2x3x32x32", "2x3x64x64"), workspace="1G")
    side = read_sidecar(eng)
    assert res.plugin_nodes == 1 and side["plugins"][0]["name"] == "AsvpPerturb"
    assert side["tensorrt_version"] == res.tensorrt_version and side["engine_sha256"] == sha256_file(eng)
    assert api.load_engine(eng) is not None
    x = np.random.default_rng(3).random((2, 3, 24, 40), dtype=np.float32)
    got = backends.run(str(eng), x, backend="tensorrt")
    want = backends.run_model(plug, x)["out"]
    rel = np.linalg.norm(got.outputs["out"] - want) / np.linalg.norm(want)
    assert rel <= 1e-5, rel
    # another TensorRT version in the sidecar: refused in one line, before TensorRT sees the bytes
    side["tensorrt_version"] = "9.0.0"
    sidecar_path(eng).write_text(json.dumps(side))
    with pytest.raises(AsvpError, match="built with TensorRT 9.0.0"):
        api.load_engine(eng)


@pytest.mark.tensorrt
@pytest.mark.cuda
@needs_trt_gpu
def test_tensorrt_backend_builds_onnx_on_the_fly(model_paths):
    clean, _ = model_paths
    x = np.random.default_rng(4).random((1, 3, 16, 16), dtype=np.float32)
    got = backends.run(str(clean), x, backend="tensorrt")
    np.testing.assert_allclose(got.outputs["out"], backends.run_model(clean, x)["out"], rtol=1e-3, atol=1e-4)


# ---- the TensorRT code paths against a stand-in `tensorrt` (orchestration only; no real TensorRT) -------------

def test_build_and_load_orchestration_with_stand_in_tensorrt(fake_tensorrt, model_paths, tmp_path):
    _, plug = model_paths
    eng = tmp_path / "out" / "m.engine"
    res = api.build_engine(plug, eng, profile=ShapeProfile(max="2x3x64x64"), fp16=True, workspace="1G")
    calls = fake_tensorrt
    assert calls["order"] == ["register", "parse", "config", "build"], "the plugin must be registered before parsing"
    cfg = calls["config"]
    assert cfg["fp16"] is True and cfg["int8"] is False and cfg["memory_pool_limits"] == {"WORKSPACE": 1 << 30}
    prof = cfg["profiles"][0]["img"]
    assert (tuple(prof.min), tuple(prof.opt), tuple(prof.max)) == ((1, 3, 32, 32), (1, 3, 64, 64), (2, 3, 64, 64))
    assert eng.read_bytes() == b"ENGINE:" + str(plug).encode()
    side = read_sidecar(eng)
    assert side["tensorrt_version"] == "10.9.0.34" == res.tensorrt_version and side["plugins"][0]["nodes"] == 1
    assert side["engine_sha256"] == sha256_file(eng) and side["source_model"]["sha256"] == sha256_file(plug)
    assert side["device"] == {"name": "FakeGPU", "compute_capability": "9.0"} and res.plugin_nodes == 1
    assert sorted(os.listdir(eng.parent)) == ["m.engine", "m.engine.json"]
    # load: sidecar checks pass, plugin registered (already), then deserialised from the file's bytes
    assert api.load_engine(eng) == ("engine", eng.read_bytes()) and calls["order"][-1] == "deserialize"
    # CLI over the same stand-in
    from asvp import cli

    assert cli.main(["build", str(plug), "-o", str(tmp_path / "cli.engine"), "--json"]) == 0
    assert read_sidecar(tmp_path / "cli.engine")["profile"]["max"] == [4, 3, 512, 512]


def test_load_engine_refusals_with_stand_in_tensorrt(fake_tensorrt, model_paths, tmp_path, monkeypatch):
    _, plug = model_paths
    eng = tmp_path / "m.engine"
    api.build_engine(plug, eng)
    n_deser = fake_tensorrt["order"].count("deserialize")
    side = read_sidecar(eng)
    # built by another TensorRT
    sidecar_path(eng).write_text(json.dumps({**side, "tensorrt_version": "10.13.0.35"}))
    with pytest.raises(AsvpError, match=r"built with TensorRT 10\.13\.0\.35, this is TensorRT 10\.9\.0\.34"):
        api.load_engine(eng)
    # another GPU
    sidecar_path(eng).write_text(json.dumps({**side, "device": {"name": "Old", "compute_capability": "7.5"}}))
    with pytest.raises(AsvpError, match="compute capability 7.5"):
        api.load_engine(eng)
    # engine replaced behind the sidecar's back
    sidecar_path(eng).write_text(json.dumps(side))
    eng.write_bytes(b"something else")
    with pytest.raises(AsvpError, match="digest differs"):
        api.load_engine(eng)
    assert fake_tensorrt["order"].count("deserialize") == n_deser, "refused before TensorRT saw the bytes"
    # plugin needed but TensorRT's plugin API cannot register it (no CUDA device for its kernel)
    api.build_engine(plug, eng, force=True)  # rebuilt over the tampered engine
    monkeypatch.setattr(plugin_trt, "_REGISTERED", False)
    monkeypatch.setattr(plugin_trt, "cuda_status", lambda: (False, "no CUDA device visible to torch"))
    with pytest.raises(MissingDependencyError, match="runs its kernel through torch on CUDA"):
        api.load_engine(eng)


def test_trt_failure_is_one_line_with_stand_in_tensorrt(fake_tensorrt, model_paths, tmp_path, monkeypatch):
    import polygraphy.backend.trt as pg_trt
    from polygraphy.exception import PolygraphyException

    def failing(network, config):
        def call():
            raise PolygraphyException("Invalid Engine. Please ensure the engine was built correctly\ndetails")
        return call

    monkeypatch.setattr(pg_trt, "EngineBytesFromNetwork", failing)
    clean, _ = model_paths
    out = tmp_path / "m.engine"
    with pytest.raises(AsvpError) as e:
        api.build_engine(clean, out)
    assert str(e.value) == f"TensorRT could not build {clean}: Invalid Engine. Please ensure the engine was built correctly"
    assert not out.exists() and not sidecar_path(out).exists()


def test_aot_plugin_build_with_stand_in_tensorrt(fake_tensorrt, model_paths, tmp_path, monkeypatch):
    """`--aot-plugin` (UNVERIFIED with real TensorRT): the AOT impl is defined, the network is created with
    PREFER_AOT_PYTHON_PLUGINS and parsed by TensorRT's own parser, the sidecar says AOT; refusals are one line."""
    import types

    import polygraphy.backend.trt as pg_trt
    import polygraphy.backend.trt.util as pg_trt_util

    from asvp import cli
    from asvp.runtime.engines.kernels import triton_env

    calls = fake_tensorrt
    clean, plug = model_paths
    trt, trtp = sys.modules["tensorrt"], sys.modules["tensorrt.plugin"]
    trtp.aot_impl = lambda plugin_id: (lambda fn: calls["order"].append("aot_impl") or fn)
    trtp.KernelLaunchParams, trtp.SymIntExprs = type("KernelLaunchParams", (), {}), type("SymIntExprs", (), {})
    monkeypatch.setattr(triton_env, "require_triton", lambda: None)
    monkeypatch.setattr(plugin_trt, "_AOT_DEFINED", False)

    # a TensorRT without the flag (< 10.9): exit 3, nothing written
    with pytest.raises(MissingDependencyError, match="PREFER_AOT_PYTHON_PLUGINS"):
        api.build_engine(plug, tmp_path / "a.engine", aot_plugin=True)
    assert not (tmp_path / "a.engine").exists()

    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1, PREFER_AOT_PYTHON_PLUGINS=2)

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            calls["network_flags"] = flags
            return "aot-network"

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            assert network == "aot-network"

        def parse_from_file(self, path):
            calls["order"].append("parse")
            calls["parsed"] = path
            return True

    trt.Builder, trt.OnnxParser = Builder, OnnxParser

    def engine_bytes(network, config):
        def call():
            builder, net, parser = network() if callable(network) else (None, network, None)
            calls["order"].append("build")
            return b"ENGINE:" + calls["parsed"].encode()
        return call

    monkeypatch.setattr(pg_trt, "EngineBytesFromNetwork", engine_bytes)
    monkeypatch.setattr(pg_trt_util, "get_trt_logger", lambda: "logger")
    eng = tmp_path / "m.engine"
    res = api.build_engine(plug, eng, aot_plugin=True)
    assert calls["order"] == ["register", "aot_impl", "parse", "build"]
    assert calls["network_flags"] == 1 << 2
    side = read_sidecar(eng)
    assert side["plugins"][0]["implementation"] == build.AOT_IMPLEMENTATION and "UNVERIFIED" in build.AOT_IMPLEMENTATION
    assert any("UNVERIFIED" in n for n in res.notes)
    # the CLI flag reaches the same path; a model without plugin nodes is refused (exit 2, nothing written)
    assert cli.main(["build", str(plug), "-o", str(tmp_path / "cli.engine"), "--aot-plugin", "--json"]) == 0
    assert read_sidecar(tmp_path / "cli.engine")["plugins"][0]["implementation"] == build.AOT_IMPLEMENTATION
    with pytest.raises(AsvpError, match="no AsvpPerturb plugin nodes"):
        api.build_engine(clean, tmp_path / "c.engine", aot_plugin=True)
    assert not (tmp_path / "c.engine").exists()
    # TensorRT's parser refusing the model: one line, nothing written
    OnnxParser.parse_from_file = lambda self, path: False
    OnnxParser.num_errors, OnnxParser.get_error = 1, lambda self, i: "In node 3: unsupported\nmore"
    with pytest.raises(AsvpError, match="ONNX parser refused .*In node 3: unsupported$"):
        api.build_engine(plug, tmp_path / "p.engine", aot_plugin=True)
    assert not (tmp_path / "p.engine").exists()

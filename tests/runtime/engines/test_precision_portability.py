"""Reduced-precision and portable engines (issue 26.2, 26.5): the load-time compatibility rules as pure functions
of fake sidecars, the precision options' refusals, which layers get pinned to fp32, and what `build` asks
TensorRT for, against the stand-in `tensorrt` of conftest.py. None of this shows what a real TensorRT does."""
from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from asvp import api, cli
from asvp.errors import AsvpError
from asvp.options import EngineOptions
from asvp.runtime.engines import portability, precision
from asvp.runtime.engines.sidecar import check_sidecar, read_sidecar, sidecar_path


# ---- load-time checks: pure, on fake sidecars ------------------------------------------------------------------

def side(version="10.8.0.43", cc="8.9", name="L4", **port):
    return {"tensorrt_version": version, "device": {"name": name, "compute_capability": cc}, "portability": port,
            "source_model": {"path": "m.onnx"}}


def check(sidecar, version="10.8.0.43", cc="8.9"):
    portability.check_runs_here(sidecar, tensorrt_version=version, device={"name": "GPU", "compute_capability": cc},
                                engine_path="m.engine", rebuild="rebuild it here")


@pytest.mark.parametrize("sidecar,version,cc,needle", [
    # plain engine: same TensorRT, same compute capability only
    (side(), "10.8.0.43", "9.0", r"built for compute capability 8\.9 \(L4\) with TensorRT 10\.8\.0\.43; this GPU is "
                                 r"9\.0 \(GPU\): rebuild it here, or build it with --hardware-compatibility ampere\+$"),
    (side(cc="7.5"), "10.8.0.43", "8.9", r"compute capability 7\.5 .*this GPU is 8\.9 \(GPU\): rebuild it here$"),
    (side(), "10.9.0.34", "8.9", r"built with TensorRT 10\.8\.0\.43, this is TensorRT 10\.9\.0\.34.*--version-compatible"),
    # version-compatible: later TensorRT versions load it, earlier ones do not
    (side(version_compatible=True), "10.7.0.23", "8.9", r"version-compatible with TensorRT 10\.8\.0\.43.*this is "
                                                        r"TensorRT 10\.7\.0\.23"),
    # hardware-compatible: any GPU of compute capability 8.0 or later, not older ones
    (side(hardware_compatibility="ampere+"), "10.8.0.43", "7.5", r"Ampere or later GPUs.*this GPU is 7\.5"),
    (side(hardware_compatibility="ampere+", version_compatible=True), "10.13.0.35", "7.0", r"this GPU is 7\.0"),
])
def test_load_check_refuses_a_mismatch_in_one_line(sidecar, version, cc, needle):
    with pytest.raises(AsvpError, match=needle) as e:
        check(sidecar, version, cc)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("sidecar,version,cc", [
    (side(), "10.8.0.43", "8.9"),
    (side(version_compatible=True), "10.13.0.35", "8.9"),  # later TensorRT: allowed
    (side(version_compatible=True), "11.0.0.1", "8.9"),
    (side(hardware_compatibility="ampere+"), "10.8.0.43", "9.0"),  # another Ampere-or-later GPU: allowed
    (side(hardware_compatibility="ampere+"), "10.8.0.43", "12.0"),
    (side(hardware_compatibility="ampere+", version_compatible=True), "10.13.0.35", "8.0"),
    (side(cc=None), "10.8.0.43", "9.0"),  # GPU unknown on either side: left to TensorRT
    ({"tensorrt_version": "10.8.0.43", "device": {"compute_capability": "8.9"}}, "10.8.0.43", "8.9"),  # old sidecar
])
def test_load_check_accepts_what_the_flags_allow(sidecar, version, cc):
    check(sidecar, version, cc)


def test_old_sidecars_without_portability_keep_the_strict_rules():
    old = {"tensorrt_version": "10.8.0.43", "device": {"compute_capability": "8.9"}, "source_model": {"path": "m.onnx"}}
    with pytest.raises(AsvpError, match="--version-compatible"):
        check_sidecar(old, tensorrt_version="10.9.0.34", engine_path="m.engine")
    with pytest.raises(AsvpError, match="compute capability 8.9"):
        check_sidecar(old, tensorrt_version="10.8.0.43", device={"compute_capability": "8.6"}, engine_path="m.engine")


def test_version_and_cc_parsing():
    assert portability.parse_version("10.13.0.35") > portability.parse_version("10.9.0.34")  # not string order
    assert portability.parse_version("10.8.0.post1") == (10, 8, 0)
    assert portability.parse_cc("8.9") == (8, 9) and portability.parse_cc("12.0") > portability.parse_cc("9.0")
    assert portability.parse_cc(None) is None and portability.parse_cc("x") is None


def test_portability_option_refusals(tmp_path):
    with pytest.raises(AsvpError, match="--opt-level must be 0 to 5"):
        portability.check_options(EngineOptions(opt_level=6))
    with pytest.raises(AsvpError, match="--hardware-compatibility must be one of none, ampere\\+"):
        portability.check_options(EngineOptions(hardware_compatibility="turing+"))
    with pytest.raises(AsvpError, match="is an existing directory"):
        portability.check_options(EngineOptions(timing_cache=str(tmp_path)))
    model = tmp_path / "m.onnx"
    model.write_bytes(b"model")
    with pytest.raises(AsvpError, match="never overwrites its input"):
        portability.check_options(EngineOptions(timing_cache=str(model)), inputs=[model])
    portability.check_options(EngineOptions(timing_cache=str(tmp_path / "new" / "t.cache"), opt_level=0))
    with pytest.raises(AsvpError, match="compute capability 8.0 or later to build on; this one is 7.5"):
        portability.check_build_device(EngineOptions(hardware_compatibility="ampere+"), {"compute_capability": "7.5"})
    portability.check_build_device(EngineOptions(hardware_compatibility="ampere+"), {"compute_capability": "8.0"})


# ---- precision: options and layer pinning -------------------------------------------------------------------

def marked_model(qdq: bool = False) -> onnx.ModelProto:
    """img -> conv1 -> asvp/0 (MatMul, Shape) -> asvp_fp/add -> conv2 -> out; optionally a Q/DQ pair in front."""
    g = np.random.default_rng(0)
    inits = [helper.make_tensor("w1", TensorProto.FLOAT, [4, 3, 1, 1], g.standard_normal(12).tolist()),
             helper.make_tensor("w2", TensorProto.FLOAT, [3, 4, 1, 1], g.standard_normal(12).tolist())]
    nodes, first = [], "img"
    if qdq:
        inits += [helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]), helper.make_tensor("z", TensorProto.INT8, [], [0])]
        nodes += [helper.make_node("QuantizeLinear", ["img", "s", "z"], ["q"], name="q0"),
                  helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"], name="dq0")]
        first = "dq"
    nodes += [helper.make_node("Conv", [first, "w1"], ["f"], name="conv1"),
              helper.make_node("Identity", ["f"], ["asvp/0/y"], name="asvp/0/Identity_0"),
              helper.make_node("Shape", ["f"], ["asvp/0/shape"], name="asvp/0/Shape_1"),
              helper.make_node("Identity", ["asvp/0/y"], ["asvp_fp/marked"], name="asvp_fp/add"),
              helper.make_node("Conv", ["asvp_fp/marked", "w2"], ["out"], name="conv2")]
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("img", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3, "H", "W"])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def marked_network(t):
    """The layers a parser could make of marked_model: the ASVP/mark ones by name or by output tensor name
    (t: the trt_layers fixture)."""
    FakeLayer = t.Layer
    return t.Network([
        FakeLayer("conv1", "CONVOLUTION", [("f", "FLOAT")]),
        FakeLayer("asvp/0/Identity_0", "IDENTITY", [("asvp/0/y", "FLOAT")]),
        FakeLayer("asvp/0/Shape_1", "SHAPE", [("asvp/0/shape", "INT64")]),  # shape computation: left alone
        FakeLayer("ONNXTRT_cast_7", "CAST", [("asvp/0/helper", "FLOAT")]),  # a helper layer, matched by its tensor
        FakeLayer("asvp/0/Gather_2", "GATHER", [("asvp/0/idx", "INT32")]),  # integer output: left alone
        FakeLayer("asvp/0/AsvpPerturb", "PLUGIN_V3", [("asvp/0/p", "FLOAT")]),  # plugin: declares its own types
        FakeLayer("asvp_fp/add", "ELEMENTWISE", [("asvp_fp/marked", "FLOAT")]),
        FakeLayer("conv2", "CONVOLUTION", [("out", "FLOAT")]),
    ])


def test_node_counts_and_precision_refusals(tmp_path):
    m = marked_model()
    assert precision.pinnable_nodes(m) == {"asvp": 2, "mark": 1} and precision.qdq_nodes(m) == 0
    assert precision.qdq_nodes(marked_model(qdq=True)) == 2
    with pytest.raises(AsvpError, match="--int8 is for explicitly quantized models.*no QuantizeLinear"):
        precision.check_options(EngineOptions(int8=True), "m.onnx", 0)
    precision.check_options(EngineOptions(int8=True), "m.onnx", 2)
    with pytest.raises(AsvpError, match="needs a reduced precision"):
        precision.check_options(EngineOptions(asvp_precision="reduced"), "m.onnx", 0)
    with pytest.raises(AsvpError, match="must be one of fp32, reduced"):
        precision.check_options(EngineOptions(fp16=True, asvp_precision="fp8"), "m.onnx", 0)
    counts = {"asvp": 2, "mark": 1}
    assert precision.pins_wanted(EngineOptions(fp16=True), counts)
    assert precision.pins_wanted(EngineOptions(bf16=True), counts) and precision.pins_wanted(EngineOptions(int8=True), counts)
    assert not precision.pins_wanted(EngineOptions(), counts), "fp32 engines need no constraint"
    assert precision.pins_wanted(EngineOptions(fp16=True, asvp_precision="reduced"), counts), "the solve stays fp32"
    assert not precision.pins_wanted(EngineOptions(fp16=True, asvp_precision="reduced"), {"asvp": 0, "mark": 1})
    assert not precision.pins_wanted(EngineOptions(fp16=True), {"asvp": 0, "mark": 0}), "clean model: nothing to pin"


def test_pin_layers_sets_fp32_on_the_asvp_and_mark_layers_only(trt_layers):
    import types

    trt = types.SimpleNamespace(DataType=types.SimpleNamespace(FLOAT="FLOAT", HALF="HALF", BF16="BF16"))
    net = marked_network(trt_layers)
    pinned = precision.pin_layers(trt, net)
    by_name = {layer.name: layer for layer in net.layers}
    assert pinned == [{"layer": "asvp/0/Identity_0", "group": "asvp"}, {"layer": "ONNXTRT_cast_7", "group": "asvp"},
                      {"layer": "asvp_fp/add", "group": "mark"}]
    for name in ("asvp/0/Identity_0", "ONNXTRT_cast_7", "asvp_fp/add"):
        assert by_name[name].precision == "FLOAT" and by_name[name].output_types == {0: "FLOAT"}
    for name in ("conv1", "conv2", "asvp/0/Shape_1", "asvp/0/Gather_2", "asvp/0/AsvpPerturb"):
        assert by_name[name].precision is None and by_name[name].output_types == {}, name


# ---- build and load against the stand-in TensorRT -------------------------------------------------------------

@pytest.fixture
def clean_path(tmp_path):
    """A model without ASVP or mark nodes: conv1 -> conv2."""
    m = marked_model()
    keep = [n for n in m.graph.node if n.name in ("conv1", "conv2")]
    keep[1].input[0] = "f"
    del m.graph.node[:]
    m.graph.node.extend(keep)
    p = tmp_path / "clean.onnx"
    onnx.save(m, str(p))
    return p


@pytest.fixture
def marked_path(tmp_path):
    p = tmp_path / "marked.onnx"
    onnx.save(marked_model(), str(p))
    return p


def test_fp16_build_pins_and_records_them(fake_tensorrt, trt_layers, marked_path, tmp_path):
    calls = fake_tensorrt
    calls["network"] = marked_network(trt_layers)
    eng = tmp_path / "m.engine"
    res = api.build_engine(marked_path, eng, fp16=True)
    cfg = calls["config"]
    assert cfg["fp16"] is True and cfg["precision_constraints"] == "obey" and "bf16" not in cfg
    assert calls["network"].layers[1].precision == "FLOAT", "the network TensorRT builds is the pinned one"
    prec = read_sidecar(eng)["precision"]
    assert prec["fp16"] and prec["asvp_precision"] == "fp32" and prec["constraints"] == "obey"
    assert prec["pinned_fp32"]["asvp"]["layers"] == ["asvp/0/Identity_0", "ONNXTRT_cast_7"]
    assert prec["pinned_fp32"]["asvp"]["onnx_nodes"] == 2 and "fp16's range" in prec["pinned_fp32"]["asvp"]["reason"]
    assert prec["pinned_fp32"]["mark"]["layers"] == ["asvp_fp/add"] and prec["verified"] is False
    assert any("pinned 3 ASVP/mark layer(s)" in line for line in res.summary_lines())
    # reduced: the mark and the feature passes follow the engine's precision; the ASVP solve stays fp32
    calls["network"] = marked_network(trt_layers)
    api.build_engine(marked_path, tmp_path / "r.engine", bf16=True, asvp_precision="reduced")
    assert calls["config"]["bf16"] is True and calls["config"]["precision_constraints"] == "obey"
    by_name = {layer.name: layer for layer in calls["network"].layers}
    assert by_name["asvp_fp/add"].precision is None  # the mark
    prec = read_sidecar(tmp_path / "r.engine")["precision"]
    assert prec["asvp_precision"] == "reduced" and list(prec["pinned_fp32"]) == ["asvp-solve"]


def test_reduced_asvp_pins_the_solve_only(trt_layers):
    """Under --asvp-precision reduced the passes over the feature (graph_passes.subgraph.is_feature_pass: the scaled
    Gram, the apply) are left to the reduced precision; the C x C solve's layers, and helper layers whose names the
    subgraph did not emit, are pinned to fp32; the mark is not pinned."""
    import types

    trt = types.SimpleNamespace(DataType=types.SimpleNamespace(FLOAT="FLOAT", HALF="HALF", BF16="BF16"))
    t = trt_layers
    net = t.Network([t.Layer("asvp/0/gram_3", "MATRIX_MULTIPLY", [("asvp/0/gram_3:0", "FLOAT")]),
                     t.Layer("asvp/0/apply_40", "MATRIX_MULTIPLY", [("asvp/0/apply_40:0", "FLOAT")]),
                     t.Layer("asvp/0/sq_12", "MATRIX_MULTIPLY", [("asvp/0/sq_12:0", "FLOAT")]),
                     t.Layer("ONNXTRT_cast_7", "CAST", [("asvp/0/helper", "FLOAT")]),
                     t.Layer("asvp_fp/add", "ELEMENTWISE", [("asvp_fp/marked", "FLOAT")])])
    pinned = precision.pin_layers(trt, net, reduced=True)
    assert pinned == [{"layer": "asvp/0/sq_12", "group": "asvp-solve"},
                      {"layer": "ONNXTRT_cast_7", "group": "asvp-solve"}]
    assert precision.in_solve("asvp/0/sq_12") and not precision.in_solve("asvp/0/gram_3:0")
    assert not precision.in_solve("conv1")


def test_pinning_refuses_a_network_without_the_named_layers(fake_tensorrt, marked_path, tmp_path):
    """The model has ASVP nodes but no layer carries their names: refused, rather than an unpinned defence."""
    eng = tmp_path / "m.engine"
    with pytest.raises(AsvpError, match="no layer named after its ASVP or fingerprint nodes.*--asvp-precision reduced"):
        api.build_engine(marked_path, eng, fp16=True)  # the default stand-in network has only conv1, conv2
    assert not eng.exists() and not sidecar_path(eng).exists()


def test_int8_needs_qdq(fake_tensorrt, trt_layers, marked_path, tmp_path):
    with pytest.raises(AsvpError, match="--int8 is for explicitly quantized models"):
        api.build_engine(marked_path, tmp_path / "m.engine", int8=True)
    assert "parse" not in fake_tensorrt["order"], "refused before TensorRT saw the model"
    q = tmp_path / "q.onnx"
    onnx.save(marked_model(qdq=True), str(q))
    fake_tensorrt["network"] = marked_network(trt_layers)
    api.build_engine(q, tmp_path / "q.engine", int8=True)
    assert fake_tensorrt["config"]["int8"] is True and fake_tensorrt["config"]["precision_constraints"] == "obey"


def test_portable_build_timing_cache_and_load(fake_tensorrt, clean_path, tmp_path):
    calls = fake_tensorrt
    clean = clean_path
    cache = tmp_path / "caches" / "t.cache"
    eng = tmp_path / "m.engine"
    res = api.build_engine(clean, eng, timing_cache=str(cache), hardware_compatibility="ampere+",
                           version_compatible=True, opt_level=5)
    cfg = calls["config"]
    assert "load_timing_cache" not in cfg, "no cache yet: nothing to read"
    assert cfg["hardware_compatibility_level"] == "HW_AMPERE_PLUS" and cfg["version_compatible"] is True
    assert cfg["builder_optimization_level"] == 5 and "precision_constraints" not in cfg
    assert cache.read_bytes() == b"CACHE-1" and os.listdir(cache.parent) == ["t.cache"], "written atomically"
    port = read_sidecar(eng)["portability"]
    assert port == {"hardware_compatibility": "ampere+", "version_compatible": True, "opt_level": 5,
                    "timing_cache": str(cache), "verified": False} == res.portability
    assert read_sidecar(eng)["device"]["compute_capability"] == "9.0"
    # a second build reads the cache and writes back the updated one
    calls["cache"] = b"CACHE-2"
    api.build_engine(clean, eng, force=True, timing_cache=str(cache))
    assert calls["config"]["load_timing_cache"] == str(cache) and cache.read_bytes() == b"CACHE-2"
    assert "hardware_compatibility_level" not in calls["config"] and "version_compatible" not in calls["config"]
    # loading: a later TensorRT and another Ampere-or-later GPU are fine for the portable engine, which is
    # deserialised by a runtime allowed to run its embedded host code
    api.build_engine(clean, eng, force=True, hardware_compatibility="ampere+", version_compatible=True)
    trt = __import__("sys").modules["tensorrt"]
    trt.__version__, calls["device"] = "10.13.0.35", {"name": "Other", "compute_capability": "12.0"}
    assert api.load_engine(eng)[0] == "engine" and calls["runtime"].engine_host_code_allowed is True
    calls["device"] = {"name": "Old", "compute_capability": "7.5"}
    with pytest.raises(AsvpError, match="Ampere or later GPUs"):
        api.load_engine(eng)
    # a plain engine on another GPU is refused before deserialising; and it uses Polygraphy's default runtime
    trt.__version__, calls["device"] = "10.9.0.34", {"name": "FakeGPU", "compute_capability": "9.0"}
    api.build_engine(clean, eng, force=True)
    api.load_engine(eng)
    assert calls["runtime"] is None
    calls["device"] = {"name": "Ada", "compute_capability": "8.9"}
    n = calls["order"].count("deserialize")
    with pytest.raises(AsvpError, match=r"built for compute capability 9\.0 .*this GPU is 8\.9.*ampere\+"):
        api.load_engine(eng)
    assert calls["order"].count("deserialize") == n


def test_hardware_compat_refused_on_a_pre_ampere_build_gpu(fake_tensorrt, clean_path, tmp_path):
    fake_tensorrt["device"] = {"name": "T4", "compute_capability": "7.5"}
    with pytest.raises(AsvpError, match="8.0 or later to build on; this one is 7.5"):
        api.build_engine(clean_path, tmp_path / "m.engine", hardware_compatibility="ampere+")
    assert not (tmp_path / "m.engine").exists()


def test_cli_flags_reach_the_options(fake_tensorrt, trt_layers, marked_path, tmp_path, capsys):
    fake_tensorrt["network"] = marked_network(trt_layers)
    out = tmp_path / "cli.engine"
    assert cli.main(["build", str(marked_path), "-o", str(out), "--fp16", "--bf16", "--timing-cache",
                     str(tmp_path / "c.cache"), "--hardware-compatibility", "ampere+", "--version-compatible",
                     "--opt-level", "2", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["precision"]["fp16"] and doc["precision"]["bf16"] and doc["portability"]["opt_level"] == 2
    cfg = fake_tensorrt["config"]
    assert cfg["fp16"] and cfg["bf16"] and cfg["precision_constraints"] == "obey" and cfg["builder_optimization_level"] == 2
    # refusals: one line, exit 2, before TensorRT
    for argv, needle in [(["--int8"], "explicitly quantized"), (["--asvp-precision", "reduced"], "reduced precision"),
                         (["--timing-cache", str(tmp_path)], "existing directory"), (["--opt-level", "9"], "invalid choice")]:
        try:
            code = cli.main(["build", str(marked_path), "-o", str(tmp_path / "x.engine"), *argv])
        except SystemExit as exc:  # argparse's own usage errors leave through sys.exit
            code = exc.code
        err = capsys.readouterr().err
        assert code == 2 and needle in err and err.count("\n") == 1, (argv, err)
    assert not (tmp_path / "x.engine").exists()

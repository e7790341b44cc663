"""Plugin mode: the AsvpPerturb custom op on ONNX Runtime (CPU here) and the TensorRT plugin's pieces.

Tolerances (float32 in/out, float64 inside both the kernel and the reference):
    kernel vs asvp_reference   relative Frobenius error <= 1e-5 and max |diff| <= 1e-5 * max |reference|
(measured here: ~3e-8 relative on random features; the bound leaves room for BLAS/LAPACK differences, not for a
wrong k, h, tau or mask, which move the output by tens of percent).
TensorRT/CUDA tests carry @pytest.mark.tensorrt / @pytest.mark.cuda and skip, with the reason, without them.
"""
from __future__ import annotations

import inspect
import time

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata

from asvp.config import AsvpConfig
from asvp.errors import AsvpError, MissingDependencyError
from asvp.method import asvp_reference
from asvp.options import ShapeProfile
from asvp.runtime.engines import backends, plugin_ort, plugin_trt
from asvp.graph_passes import plugin_contract
from asvp.graph_passes.plugin_contract import PLUGIN_DOMAIN, PLUGIN_NAMESPACE, PLUGIN_OP, PLUGIN_VERSION, config_from_attrs
from asvp.runtime.engines import sessions
from asvp.tasks import TASK_NAMES

REL_TOL = 1e-5
TRT_OK, TRT_WHY = plugin_trt.tensorrt_status()
CUDA_OK, CUDA_WHY = plugin_trt.cuda_status()
needs_trt_gpu = pytest.mark.skipif(not (TRT_OK and CUDA_OK), reason=f"TensorRT plugin tests need TensorRT >= 10.8 and a "
                                   f"CUDA device: {TRT_WHY if not TRT_OK else CUDA_WHY}")


# ---- fixtures: small models with AsvpPerturb nodes (onnx.helper) -------------------------------------------

def plugin_node(inp, out, *, k=2, h=1.5, tau=0.9, adaptive=1, placement="inline", name=None, **override):
    attrs = dict(plugin_namespace=PLUGIN_NAMESPACE, plugin_version=PLUGIN_VERSION, k=k, h=None if h is None else float(h),
                 tau=None if tau is None else float(tau),
                 adaptive=adaptive, placement=placement)
    attrs.update(override)
    attrs = {key: v for key, v in attrs.items() if v is not None}
    return helper.make_node(PLUGIN_OP, [inp], [out], domain=PLUGIN_DOMAIN, name=name or f"asvp_{out}", **attrs)


def feature_model(nodes, inputs=("x",), outputs=("y",), channels=8) -> onnx.ModelProto:
    vi = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", channels, "H", "W"])
    graph = helper.make_graph(nodes, "asvp_plugin_test", [vi(i) for i in inputs], [vi(o) for o in outputs])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(PLUGIN_DOMAIN, 1)],
                             ir_version=8)


def features(shape=(2, 8, 12, 10), seed=0) -> np.ndarray:
    g = np.random.default_rng(seed)
    # A few dominant directions (as in real feature maps) plus noise: the top singular values are well separated.
    n, c, h, w = shape
    low = g.standard_normal((n, c, 3)) @ (g.standard_normal((n, 3, h * w)) * np.array([6.0, 3.0, 1.5])[None, :, None])
    return (low + 0.3 * g.standard_normal((n, c, h * w))).reshape(shape).astype(np.float32)


def ref(x: np.ndarray, cfg: AsvpConfig) -> np.ndarray:
    return asvp_reference(torch.from_numpy(x), cfg).numpy()


def assert_close(got, want, what=""):
    got64, want64 = np.asarray(got, np.float64), np.asarray(want, np.float64)
    rel = np.linalg.norm(got64 - want64) / np.linalg.norm(want64)
    mx = np.abs(got64 - want64).max()
    assert rel <= REL_TOL and mx <= REL_TOL * np.abs(want64).max(), f"{what}: rel {rel:.2e}, max abs {mx:.2e}"


# ---- the ORT custom op -------------------------------------------------------------------------------------

CONFIGS = [
    dict(k=2, h=1.5, tau=0.9, adaptive=0),
    dict(k=4, h=1.5, tau=0.6, adaptive=1),
    dict(k=3, h=0.5, tau=0.99, adaptive=1),
    dict(k=1, h=3.0, tau=1.0, adaptive=0),
]


@pytest.mark.parametrize("attrs", CONFIGS, ids=lambda a: "-".join(f"{k}{v}" for k, v in a.items()))
def test_ort_custom_op_matches_reference(attrs):
    x = features()
    out = backends.run_model(feature_model([plugin_node("x", "y", **attrs)]).SerializeToString(), x)["y"]
    want = ref(x, config_from_attrs(**attrs))
    assert out.dtype == np.float32 and out.shape == x.shape
    assert_close(out, want, str(attrs))
    assert np.abs(out - x).max() > 0.05 * np.abs(x).max(), "the op must actually perturb the feature"


def test_per_node_attributes_reach_the_kernel():
    """Several nodes, different k/h/tau/adaptive, side by side and chained: each uses its own attributes."""
    a = dict(k=1, h=2.0, tau=0.9, adaptive=0)
    b = dict(k=3, h=0.5, tau=0.7, adaptive=1)
    c = dict(k=2, h=1.25, tau=0.95, adaptive=1)
    nodes = [plugin_node("x", "ya", name="a", **a), plugin_node("x", "yb", name="b", **b),
             plugin_node("yb", "yc", name="c", **c)]
    x = features(seed=1)
    out = backends.run_model(feature_model(nodes, outputs=("ya", "yb", "yc")), x)
    want_a, want_b = ref(x, config_from_attrs(**a)), ref(x, config_from_attrs(**b))
    assert_close(out["ya"], want_a, "node a")
    assert_close(out["yb"], want_b, "node b")
    assert_close(out["yc"], ref(out["yb"], config_from_attrs(**c)), "node c (chained)")
    # Swapped attributes would give clearly different results, so the checks above can fail.
    assert np.linalg.norm(want_a - want_b) > 0.1 * np.linalg.norm(want_a)


def test_kernel_function_and_config_from_attrs():
    cfg = config_from_attrs(k=3, h=1.5, tau=0.9, adaptive=1, placement="tap")
    assert cfg == AsvpConfig(h=1.5, k=3, k_mode="adaptive", tau=float(np.float32(0.9)), placement="tap")
    assert config_from_attrs(2, 1.5, 0.9, 0).k_mode == "fixed"
    x = features(seed=2)
    assert_close(plugin_ort.asvp_kernel(x, k=2, h=1.5, tau=0.9, adaptive=1), ref(x, config_from_attrs(2, 1.5, 0.9, 1)))
    with pytest.raises(ValueError, match="rank-4"):
        plugin_ort.asvp_kernel(x[0], k=2, h=1.5, tau=0.9, adaptive=1)


def test_registration_is_idempotent_and_session_options_work():
    import onnxruntime as ort

    plugin_ort.register_ort_op()
    plugin_ort.register_ort_op()
    sess = ort.InferenceSession(feature_model([plugin_node("x", "y")]).SerializeToString(),
                                plugin_ort.session_options(), providers=["CPUExecutionProvider"])
    x = features(seed=3)
    assert_close(sess.run(None, {"x": x})[0], ref(x, config_from_attrs(2, 1.5, 0.9, 1)))


@pytest.mark.parametrize("override, match", [
    (dict(h=None), "lacks attribute"),
    (dict(plugin_namespace="other"), "asks for plugin other::AsvpPerturb"),
    (dict(plugin_version="2"), "version '2'"),
    (dict(k=0), "k must be an integer >= 1"),
    (dict(tau=1.5), "tau must be in"),
    (dict(adaptive=2), "adaptive must be 0 or 1"),
    (dict(placement="sideways"), "placement must be one of"),
    (dict(k=2.0), "attribute k must be INT"),
])
def test_contract_violations_are_one_line_errors(override, match):
    model = feature_model([plugin_node("x", "y", name="bad", **override)])
    with pytest.raises(AsvpError, match=match) as e:
        backends.run_model(model, features())
    assert "\n" not in str(e.value) and "'bad'" in str(e.value)


def test_unknown_custom_op_says_what_to_do():
    nodes = [plugin_node("x", "a"), helper.make_node("Mystery", ["a"], ["y"], domain="com.example")]
    model = feature_model(nodes)
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(AsvpError) as e:
        backends.run_model(model, features())
    msg = str(e.value)
    assert "\n" not in msg and "com.example::Mystery" in msg and "--mode subgraph" in msg


def test_contract_constants():
    pn = plugin_contract
    assert (pn.PLUGIN_OP, pn.PLUGIN_DOMAIN, pn.PLUGIN_NAMESPACE, pn.PLUGIN_VERSION, pn.PLUGIN_ID) == \
        ("AsvpPerturb", "ai.onnx.contrib", "asvp", "1", "asvp::AsvpPerturb")
    assert plugin_trt.PLUGIN_ID is pn.PLUGIN_ID  # the TensorRT side uses the contract, not a copy


# ---- Polygraphy: OnnxrtRunner + Comparator -----------------------------------------------------------------

class ReferenceRunner(BaseRunner):
    """A Polygraphy runner computing asvp_reference (float64 SVD) for a one-node plugin model x -> y."""

    def __init__(self, cfg: AsvpConfig, name: str = "reference"):
        super().__init__(name=name, prefix="asvp-reference")
        self.cfg = cfg

    def activate_impl(self):
        pass

    def deactivate_impl(self):
        pass

    def get_input_metadata_impl(self):
        return TensorMetadata().add("x", np.float32, ["N", 8, "H", "W"])

    def infer_impl(self, feed_dict):
        t0 = time.perf_counter()
        out = {"y": ref(feed_dict["x"], self.cfg).astype(np.float32)}
        self.inference_time = time.perf_counter() - t0
        return out


def test_polygraphy_onnxrt_runner_and_comparator_against_reference(tmp_path):
    from polygraphy.comparator import Comparator, CompareFunc

    attrs = dict(k=3, h=1.5, tau=0.8, adaptive=1)
    path = tmp_path / "plugin.onnx"
    onnx.save(feature_model([plugin_node("x", "y", **attrs)]), str(path))
    runner = sessions.AsvpOnnxrtRunner(sessions.SessionFromOnnx(path, plugins=True), "CPUExecutionProvider")
    assert isinstance(runner, sessions.AsvpOnnxrtRunner)
    data = [{"x": features(seed=s)} for s in range(3)]
    results = Comparator.run([runner, ReferenceRunner(config_from_attrs(**attrs))], data_loader=data)
    assert bool(Comparator.compare_accuracy(results, compare_func=CompareFunc.simple(rtol=1e-4, atol=1e-5)))
    # ... and the comparison is able to fail: a reference with another h disagrees.
    wrong = Comparator.run([sessions.AsvpOnnxrtRunner(sessions.SessionFromOnnx(path, plugins=True)),
                            ReferenceRunner(config_from_attrs(**{**attrs, "h": 1.25}))], data_loader=data)
    assert not bool(Comparator.compare_accuracy(wrong, compare_func=CompareFunc.simple(rtol=1e-4, atol=1e-5)))


# ---- the bundled teachers, with plugin nodes inserted --------------------------------------------------------

def insert_plugin_nodes(model: onnx.ModelProto, tensors: dict[str, dict]) -> onnx.ModelProto:
    """Inline AsvpPerturb after each named tensor (consumers rewired), exposing its input and output."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    nodes = list(m.graph.node)
    for t, attrs in tensors.items():
        new = f"{t}__asvp"
        for n in nodes:
            for i, name in enumerate(n.input):
                if name == t:
                    n.input[i] = new
        pos = next(i for i, n in enumerate(nodes) if t in n.output) + 1
        nodes.insert(pos, plugin_node(t, new, name=f"asvp_{len(nodes)}", **attrs))
        m.graph.output.extend([helper.make_tensor_value_info(t, TensorProto.FLOAT, None),
                               helper.make_tensor_value_info(new, TensorProto.FLOAT, None)])
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    if not any(o.domain == PLUGIN_DOMAIN for o in m.opset_import):
        m.opset_import.append(helper.make_opsetid(PLUGIN_DOMAIN, 1))
    return m


@pytest.mark.parametrize("task", TASK_NAMES)
def test_bundled_teacher_plugin_nodes_match_reference(task, exported):
    from asvp.graph_passes.candidates import feature_candidates
    from asvp.onnx_utils import get_metadata, image_io, load_model

    model = load_model(exported(task))
    cands = feature_candidates(model)
    first, mid = cands[0], cands[len(cands) // 2]
    cfgs = {first.output: dict(k=2, h=1.5, tau=0.9, adaptive=0),
            mid.output: dict(k=min(4, mid.channels - 1), h=0.6, tau=0.8, adaptive=1)}
    defended = insert_plugin_nodes(model, cfgs)
    mult = int(get_metadata(model).get("asvp.size_multiple", "1"))
    side = max(16, -(-24 // mult) * mult)
    x = np.random.default_rng(7).random((1, 3, side, side), dtype=np.float32)
    res = backends.run(defended.SerializeToString(), x)
    assert res.plugin_nodes == 2 and res.actual_provider == "CPUExecutionProvider"
    out_name = image_io(model)[1]
    clean = backends.run_model(exported(task), x)[out_name]
    for t, attrs in cfgs.items():
        assert_close(res.outputs[f"{t}__asvp"], ref(res.outputs[t], config_from_attrs(**attrs)), f"{task}:{t}")
    assert np.abs(res.outputs[out_name] - clean).max() > 1e-4, "inline ASVP must change the teacher's output"


@pytest.mark.parametrize("task", TASK_NAMES)
def test_defend_plugin_mode_vs_reference_and_subgraph(task, exported, tmp_path):
    """api.defend(mode="plugin"): the AsvpPerturb node matches asvp_reference on the real feature (REL_TOL); the final
    output agrees with subgraph mode (subspace iteration, 30 steps): relative error <= 2e-2 and <= 10% of the
    defence's own effect on the output."""
    from asvp import api
    from asvp.graph_passes.candidates import feature_candidates
    from asvp.onnx_utils import get_metadata, image_io, load_model

    src = exported(task)
    model = load_model(src)
    cands = feature_candidates(model)
    nodes = [cands[len(cands) // 2].name]
    cfg = AsvpConfig(h=1.5, k=3, k_mode="adaptive", tau=0.9, iters=28)  # the largest iters (asvp.config.MAX_ITERS): the subgraph as close to exact as it gets
    plugin_path, sub_path = tmp_path / "plugin.onnx", tmp_path / "subgraph.onnx"
    api.defend(src, plugin_path, nodes=nodes, config=cfg, mode="plugin")
    api.defend(src, sub_path, nodes=nodes, config=cfg, mode="subgraph")
    pm = load_model(plugin_path)
    found = plugin_contract.plugin_nodes(pm)
    assert len(found) == 1 and found[0].config.k == 3
    mult = int(get_metadata(model).get("asvp.size_multiple", "1"))
    side = max(16, -(-24 // mult) * mult)
    x = np.random.default_rng(11).random((1, 3, side, side), dtype=np.float32)
    t = found[0].input
    pm.graph.output.extend([helper.make_tensor_value_info(t, TensorProto.FLOAT, None),
                            helper.make_tensor_value_info(found[0].output, TensorProto.FLOAT, None)])
    res = backends.run_model(pm.SerializeToString(), x)
    assert_close(res[found[0].output], ref(res[t], found[0].config), f"{task} plugin node")
    out_name = image_io(pm)[1]
    sub = backends.run_model(sub_path, x)[image_io(load_model(sub_path))[1]]
    clean = backends.run_model(src, x)[image_io(model)[1]]
    rel = np.linalg.norm(res[out_name] - sub) / np.linalg.norm(sub)
    effect = np.linalg.norm(res[out_name] - clean) / np.linalg.norm(clean)
    # Subgraph mode approximates the subspace (30 iterations): the two modes must agree far more closely than
    # either differs from the clean teacher.
    assert rel <= 0.1 * effect and rel <= 2e-2, f"{task}: plugin vs subgraph rel {rel:.2e}, defence effect {effect:.2e}"


# ---- the TensorRT plugin's pure parts (CPU) ------------------------------------------------------------------

def test_trt_kernel_on_cpu_tensors_matches_reference():
    x = torch.from_numpy(features(seed=4))
    out = torch.empty_like(x)
    plugin_trt.run_plugin_kernel(x, out, 3, 1.5, 0.8, 1)
    assert_close(out.numpy(), ref(x.numpy(), config_from_attrs(3, 1.5, 0.8, 1)))
    with pytest.raises(ValueError, match="differs"):
        plugin_trt.run_plugin_kernel(x, torch.empty(1, 8, 12, 10), 3, 1.5, 0.8, 1)


def test_parse_version():
    assert plugin_trt.parse_version("10.9.0.34") == (10, 9, 0, 34)
    assert plugin_trt.parse_version("10.8.0rc1") == (10, 8, 0)
    assert plugin_trt.parse_version("10.7.0") < plugin_trt.MIN_TRT_VERSION <= plugin_trt.parse_version("10.8.0.43")


def test_trt_plugin_definitions_follow_the_tensorrt_plugin_schema(fake_trtp):
    """Checks the rules tensorrt.plugin enforces (TensorRT's _validate.py), without TensorRT."""
    fake = fake_trtp(with_aot=False)
    plugin_trt._define(fake)
    assert {pid for defs in fake.defs.values() for pid, _ in defs} == {"asvp::AsvpPerturb"} == {plugin_trt.PLUGIN_ID}
    fake.defs = {kind: defs[0] for kind, defs in fake.defs.items()}  # one definition of each kind
    reg = inspect.signature(fake.defs["register"][1])
    # real annotation objects (not strings): tensorrt.plugin calls issubclass() on them
    assert list(reg.parameters) == ["inp0", "k", "h", "tau", "adaptive"]
    assert [p.annotation for p in reg.parameters.values()] == [fake.TensorDesc, int, float, float, int]
    assert reg.return_annotation is fake.TensorDesc
    assert fake.defs["register"][1](fake.TensorDesc(), 2, 1.5, 0.9, 1) == "like"
    impl = inspect.signature(fake.defs["impl"][1])
    assert "(" + ", ".join(impl.parameters) + ")" == "(inp0, k, h, tau, adaptive, outputs, stream)"
    assert impl.parameters["stream"].annotation is int
    tune = fake.defs["autotune"][1](fake.TensorDesc(), (fake.TensorDesc(),))
    assert [(c.types, c.layouts) for c in tune] == [("FP32, FP32", "LINEAR")]
    # the node attributes the parser passes are exactly those declared (plugin_namespace/version are lookup keys)
    assert set(reg.parameters) - {"inp0"} == set(plugin_contract.KERNEL_ATTRS)


@pytest.mark.skipif(TRT_OK or plugin_trt.plugin_registered(), reason="TensorRT is installed here")
def test_register_without_tensorrt_is_missing_dependency():
    with pytest.raises(MissingDependencyError) as e:
        plugin_trt.register_asvp_plugin()
    assert e.value.exit_code == 3 and "\n" not in str(e.value) and "tensorrt" in str(e.value).lower()
    assert not plugin_trt.plugin_registered()


# ---- TensorRT / CUDA (skipped here) --------------------------------------------------------------------------

@pytest.mark.tensorrt
@pytest.mark.cuda
@needs_trt_gpu
def test_trt_plugin_registers_once_and_is_in_registry():
    assert plugin_trt.register_asvp_plugin() == "asvp::AsvpPerturb"
    assert plugin_trt.register_asvp_plugin() == "asvp::AsvpPerturb"
    assert plugin_trt.plugin_registered()


@pytest.mark.tensorrt
@pytest.mark.cuda
@needs_trt_gpu
def test_trt_engine_with_plugin_matches_reference(tmp_path):
    from asvp import api

    attrs_a, attrs_b = dict(k=2, h=1.5, tau=0.9, adaptive=0), dict(k=3, h=0.5, tau=0.7, adaptive=1)
    conv_w = helper.make_tensor("w", TensorProto.FLOAT, [8, 3, 1, 1], np.random.default_rng(0).standard_normal(24).tolist())
    nodes = [helper.make_node("Conv", ["img", "w"], ["f"]), plugin_node("f", "g", name="a", **attrs_a),
             plugin_node("g", "y", name="b", **attrs_b)]
    graph = helper.make_graph(nodes, "trt", [helper.make_tensor_value_info("img", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, "H", "W"])], [conv_w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(PLUGIN_DOMAIN, 1)],
                              ir_version=8)
    src = tmp_path / "m.onnx"
    onnx.save(model, str(src))
    eng = tmp_path / "m.engine"
    res = api.build_engine(src, eng, profile=ShapeProfile("1x3x8x8", "2x3x16x16", "2x3x32x32"))
    assert res.plugin_nodes == 2 and eng.exists()
    x = np.random.default_rng(1).random((2, 3, 16, 12), dtype=np.float32)
    got = backends.run(str(eng), x, backend="tensorrt")
    want = backends.run_model(src, x)["y"]
    assert got.actual_provider.startswith("TensorRT")
    assert_close(got.outputs["y"], want, "TensorRT plugin vs ORT custom op")

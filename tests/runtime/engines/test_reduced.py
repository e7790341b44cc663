"""runtime/engines/reduced.py: the fp16/bf16 runner computes in reduced precision (not fp32 behind casts, as ONNX
Runtime's CPU provider does): its results match a float16 emulation, differ from fp32 by far more than fp32
rounding, and overflow to inf where fp16 overflows."""
from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from asvp.errors import AsvpError
from asvp.graph_passes.plugin_contract import PLUGIN_DOMAIN, PLUGIN_OP
from asvp.runtime.engines.backends import run_model
from asvp.runtime.engines.reduced import ReducedInterpreter, ReducedModel, reduced_runner

if importlib.util.find_spec("onnx2torch") is None:  # the `precision` extra (in dev: CI runs these)
    pytest.skip("onnx2torch is not installed", allow_module_level=True)


def _model(nodes, inits, shape=(1, 4, 3, 5)) -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", shape[1], "H", "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    g = helper.make_graph(nodes, "t", [x], [y], [numpy_helper.from_array(np.asarray(v, np.float32), k)
                                                for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def _run(model, x, precision):
    r = reduced_runner(model, "onnxrt-cpu", precision)
    with r:
        return r.infer({"x": x})["y"], r.model


def _affine():
    rng = np.random.default_rng(0)
    a, b, c = (rng.normal(size=(1, 4, 1, 1)) for _ in range(3))
    nodes = [helper.make_node("Mul", ["x", "a"], ["t0"]), helper.make_node("Add", ["t0", "b"], ["t1"]),
             helper.make_node("Mul", ["t1", "c"], ["y"])]
    return _model(nodes, {"a": a, "b": b, "c": c}), (a, b, c)


def test_fp16_matches_a_float16_emulation_and_not_fp32():
    model, (a, b, c) = _affine()
    x = np.random.default_rng(1).random((2, 4, 3, 5), dtype=np.float32) * 10
    got, m = _run(model, x, "fp16")
    h = lambda v: np.asarray(v, np.float16)  # noqa: E731
    emulated = ((h(x) * h(a)) + h(b)) * h(c)  # every input, constant and intermediate rounded to fp16
    fp32 = run_model(model, x)["y"]
    assert got.dtype == np.float32 and np.array_equal(got, emulated.astype(np.float32))
    assert np.abs(got - fp32).max() > 1e-3  # fp32 rounding is ~1e-6 here: this is fp16 arithmetic
    assert m.upcast == {} and m.promoted == {} and m.fp32_notes() == []


def test_bf16_is_coarser_than_fp16():
    model, _ = _affine()
    x = np.random.default_rng(2).random((1, 4, 3, 5), dtype=np.float32)
    fp32 = run_model(model, x)["y"]
    e16 = np.abs(_run(model, x, "fp16")[0] - fp32).max()
    eb16 = np.abs(_run(model, x, "bf16")[0] - fp32).max()
    assert 0 < e16 < eb16 < 0.1


def test_an_intermediate_over_the_fp16_range_is_inf():
    # x*x then /1000: 300^2 = 90000 > 65504 overflows in fp16 before the division brings it back into range
    model = _model([helper.make_node("Mul", ["x", "x"], ["t"]), helper.make_node("Div", ["t", "k"], ["y"])],
                   {"k": 1000.0})
    x = np.full((1, 4, 3, 5), 300.0, np.float32)
    assert np.allclose(run_model(model, x)["y"], 90.0)
    assert np.all(np.isinf(_run(model, x, "fp16")[0]))
    assert np.allclose(_run(model, x, "bf16")[0], 90.0, rtol=1e-2)  # bf16 has fp32's range


def test_lp_normalization_converter_matches_onnx_runtime():
    model = _model([helper.make_node("LpNormalization", ["x"], ["y"], axis=1, p=2)], {})
    x = np.random.default_rng(3).random((2, 4, 3, 5), dtype=np.float32) + 0.1
    assert np.allclose(_run(model, x, "fp16")[0], run_model(model, x)["y"], atol=2e-3)


def test_an_op_without_a_reduced_kernel_runs_in_fp32_and_is_named():
    class Dist(torch.nn.Module):  # torch has no half/bfloat16 cdist on CPU
        def forward(self, x):
            return torch.cdist(x, x) * 2

    gm = torch.fx.symbolic_trace(Dist())
    m = ReducedModel(gm, "fp16", "cpu", [("x", [3, 2])], ["y"])
    x = torch.rand(3, 2)
    (y,) = m(x.half())
    assert y.dtype == torch.float16
    assert list(m.upcast.values()) == ["cdist"] and "cdist (1 node(s))" in m.fp32_notes()[0]
    assert torch.allclose(y.float(), torch.cdist(x, x) * 2, atol=5e-3)
    assert isinstance(ReducedInterpreter(m), torch.fx.Interpreter)


def test_refusals_are_one_line():
    model, _ = _affine()
    with pytest.raises(AsvpError, match="builds its own reduced-precision engine"):
        reduced_runner(model, "tensorrt", "fp16")
    with pytest.raises(AsvpError, match="precision must be one of"):
        reduced_runner(model, "onnxrt-cpu", "fp8")
    proto = onnx.load_from_string(model)
    proto.graph.node[0].op_type, proto.graph.node[0].domain = PLUGIN_OP, PLUGIN_DOMAIN
    with pytest.raises(AsvpError, match="--mode subgraph"):
        reduced_runner(proto, "onnxrt-cpu", "fp16").activate()


def test_fp32_ops_are_computed_in_fp32_on_rounded_inputs_and_named():
    w = np.random.default_rng(4).normal(size=(4, 4, 3, 3)).astype(np.float32)
    model = _model([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], {"w": w})
    x = np.random.default_rng(5).random((1, 4, 6, 6), dtype=np.float32)
    r = reduced_runner(model, "onnxrt-cpu", "fp16", fp32_ops={"Conv2d"})
    with r:
        got = r.infer({"x": x})["y"]
        notes = r.model.fp32_notes()
    ref = torch.nn.functional.conv2d(torch.from_numpy(x).half().float(), torch.from_numpy(w).half().float(), padding=1)
    assert np.array_equal(got, ref.half().float().numpy())  # fp32 accumulation, fp16 in and out
    assert notes == ["fp16: asked for (fp32_ops), computed in fp32 on fp16 inputs and rounded back: Conv2d (1 node(s))"]


def test_cumsum_without_reverse_runs_forward():
    """onnx2torch 1.5.15 takes a CumSum without `reverse` for reverse=1; the loader states ONNX's default (0)."""
    nodes = [helper.make_node("CumSum", ["x", "axis"], ["y"], exclusive=1)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    g = helper.make_graph(nodes, "t", [x], [y], [numpy_helper.from_array(np.array(2, np.int64), "axis")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()
    got, _ = _run(model, np.array([[[1.0, 2.0, 4.0, 8.0]]], np.float32), "fp16")
    assert got.tolist() == [[[0.0, 1.0, 3.0, 7.0]]]  # exclusive, forward


@pytest.mark.parametrize("precision,bound", [("fp16", 1e-2), ("bf16", 2e-2)])
def test_asvp_block_with_adaptive_rank_matches_the_reference(precision, bound):
    """The ASVP block at reduced precision, its solve in fp32 (as build pins it), against the float64 reference, on a
    feature whose energy is in one direction (adaptive k keeps 1 of 4): the rank decision and the directions both
    hold. Before the fixes, the solve's fp32 outputs were rounded at tuple picks and CumSum ran backwards (k = 4)."""
    from asvp.config import AsvpConfig
    from asvp.graph_passes.subgraph import standalone_model
    from asvp.method import asvp_reference

    cfg = AsvpConfig(k=4, k_mode="adaptive", tau=0.9)
    rng = np.random.default_rng(0)
    c, hw = 16, 24 * 24
    f = (rng.normal(size=(1, c, 1)) * 8.0) @ rng.normal(size=(1, 1, hw)) + 0.5 * rng.normal(size=(1, c, hw))
    x = f.reshape(1, c, 24, 24).astype(np.float32)
    ref = asvp_reference(torch.from_numpy(x).double(), cfg).numpy()
    r = reduced_runner(standalone_model(c, cfg).SerializeToString(), "onnxrt-cpu", precision)
    with r:
        got = r.infer({"x": x})[r.model.outputs[0]]
        notes = r.model.fp32_notes()
    err = np.linalg.norm(got - ref) / np.linalg.norm(ref - x)
    assert np.isfinite(got).all() and err <= bound, err
    assert any("ASVP solve" in n for n in notes)

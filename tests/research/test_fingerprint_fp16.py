"""research/fingerprint_fp16.py: the fp16-served model answers in chunks, the intervals and the rendering (the long
run itself is the script's; this checks its parts on tiny data)."""
import importlib.util
import math

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from research import fingerprint_fp16 as f16

if importlib.util.find_spec("onnx2torch") is None:
    pytest.skip("onnx2torch is not installed", allow_module_level=True)


def test_clopper_pearson():
    assert f16.clopper_pearson(5, 5)[1] == 1.0 and 0.47 < f16.clopper_pearson(5, 5)[0] < 0.48
    assert f16.clopper_pearson(0, 5)[0] == 0.0 and 0.52 < f16.clopper_pearson(0, 5)[1] < 0.53
    assert all(math.isnan(x) for x in f16.clopper_pearson(0, 0))


def test_half_served_answers_in_fp16_chunks(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    k = numpy_helper.from_array(np.asarray(1 / 3, np.float32), "k")
    g = helper.make_graph([helper.make_node("Mul", ["x", "k"], ["y"])], "t", [x], [y], [k])
    path = tmp_path / "m.onnx"
    path.write_bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString())
    q = np.random.default_rng(0).random((5, 3, 4, 4), dtype=np.float32)
    half = f16.HalfServed(path)
    try:
        out = half(q, chunk=2)
    finally:
        half.close()
    assert out.shape == q.shape
    assert np.array_equal(out, (q.astype(np.float16) * np.float16(1 / 3)).astype(np.float32))


def test_render_reports_each_arm():
    rows = [{"arm": a, "label": lab, "seed": 0, "c": 0.5, "p": 1e-4, "flagged": a != "clean", "beta": 1.0,
             "psnr": 28.0} for a, lab in f16.ARMS]
    rates = {a: {"flagged": int(a != "clean"), "n": 1, "rate": float(a != "clean"), "ci95": (0.0, 1.0)}
             for a, _ in f16.ARMS}
    md = f16.render({"written": "now", "key": "k", "alpha": 0.01, "queries": 16, "steps": 3, "seeds": [0],
                     "reference_seeds": [100], "mark": {"node": "/Add"}, "key_dim": 27,
                     "key_check": {"fp32": 1.0, "fp16": 0.99}, "teacher_psnr": {"clean": 29.0},
                     "fp16_noise": {"fp16_vs_fp32": 0.07, "max_abs_fp16_vs_fp32": 1e-3, "mark_rms": 2e-3},
                     "rows": rows, "rates": rates})
    assert "| marked model, served fp16 | 1/1 |" in md and "| clean model (negatives) | 0/1 |" in md
    assert "0.990 served in fp16" in md

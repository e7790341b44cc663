"""benchmarks/bench_graph_passes.py: the Gram floor model that `make bench` measures every defence against."""
from __future__ import annotations

import numpy as np
import pytest
import onnx

from asvp.graph_passes.expose import expose_tensors
from asvp.runtime.engines.sessions import ort_session

from benchmarks import bench_graph_passes as bench




def test_gram_floor_model_exposes_features_and_their_exact_gram(exported):
    model = onnx.load(exported("underwater"))
    feats = [("/Relu_output_0", 32), ("/body/body.0/Relu_output_0", 32)]
    floor = bench.gram_floor_model(model, feats)
    x = np.random.default_rng(0).random((2, 3, 24, 20), dtype=np.float32)
    sess = ort_session(floor, threads=1)
    names = [o.name for o in sess.get_outputs()]
    outs = dict(zip(names, sess.run(None, {sess.get_inputs()[0].name: x})))
    ref = ort_session(expose_tensors(model, [t for t, _ in feats]), threads=1)
    ref_out = dict(zip([o.name for o in ref.get_outputs()], ref.run(None, {ref.get_inputs()[0].name: x})))
    assert names[0] == model.graph.output[0].name and np.array_equal(outs[names[0]], ref_out[names[0]])  # network unchanged
    for i, (t, c) in enumerate(feats):
        m = ref_out[t].reshape(2, c, -1).astype(np.float64)
        gram = outs[f"floor{i}/gram"]
        assert gram.shape == (2, c, c)
        np.testing.assert_allclose(gram, m @ m.transpose(0, 2, 1), rtol=1e-4, atol=1e-4 * np.abs(gram).max())
        assert np.array_equal(outs[t], ref_out[t])  # the feature itself is an output too (the tap's copy)


@pytest.mark.parametrize("task, tensor, c", [("underwater", "/Relu_output_0", 32), ("dehaze", "/Concat_2_output_0", 64)])
def test_gram_plus_apply_floor_writes_a_rank_k_update_of_the_feature(exported, task, tensor, c):
    """Both apply forms (dense P M at C <= 32, x + U W U^T M above): the output differs from the feature by a rank-k
    update, as the defence's does; the Gram is an output too, so nothing is pruned."""
    model = onnx.load(exported(task))
    floor = bench.gram_floor_model(model, [(tensor, c)], apply=True, k=4)
    x = np.random.default_rng(1).random((2, 3, 24, 20), dtype=np.float32)
    sess = ort_session(floor, threads=1)
    outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {sess.get_inputs()[0].name: x})))
    ref = ort_session(expose_tensors(model, [tensor]), threads=1)
    feat = ref.run([tensor], {ref.get_inputs()[0].name: x})[0]
    out = outs["floor0/out"]
    assert out.shape == feat.shape and "floor0/gram" in outs and tensor not in outs
    for n in range(2):
        d = (out[n] - feat[n]).reshape(c, -1).astype(np.float64)
        s = np.linalg.svd(d, compute_uv=False)
        assert s[3] > 1e-3 * s[0] and s[4] <= 1e-4 * s[0]  # rank exactly k = 4

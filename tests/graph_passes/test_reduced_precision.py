"""The standard-op ASVP in float16 and bfloat16: the scaled Gram keeps the passes over the feature in range, the torch
mirror runs them in reduced precision (asvp.subspace.asvp_subspace), and the result stays close to float64.

torch's CPU kernels compute float16/bfloat16 products with float32 accumulation and round every result to the
dtype (the first test shows it): what a GPU's tensor cores do, so these runs are real reduced-precision arithmetic.
Accuracy is the relative error of the perturbation, ||out - ref|| / ||ref - x||, against float64 (asvp_exact:
the Gram eigendecomposition in float64). benchmarks/precision.py records the figures.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from asvp.config import AsvpConfig
from asvp.graph_passes.subgraph import FEATURE_PASS_LABELS, is_feature_pass, standalone_model
from asvp.method import as_matrix, asvp_exact
from asvp.subspace import asvp_subspace

CFG = AsvpConfig()
FP16_TOL = 1e-2  # the target for float16
BF16_TOL = 2e-2  # measured: 7.5e-3 to 8.1e-3 (benchmarks/precision.py); bfloat16 has 8 significant bits


def perturbation_error(out: torch.Tensor, ref: torch.Tensor, x: torch.Tensor) -> float:
    out, ref, x = (t.double().flatten(1) for t in (out, ref, x))
    return float(((out - ref).norm(dim=1) / (ref - x).norm(dim=1)).max())


def realistic(c: int, h: int, w: int, peak_rms: float, seed: int = 0) -> torch.Tensor:
    """A feature with a decaying spectrum (s_i ~ 0.6^i) whose strongest channel mixes have RMS ~ peak_rms."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(c, c, generator=g))
    s = peak_rms * 0.6 ** torch.arange(c, dtype=torch.float32)
    return ((u * s) @ torch.randn(c, h * w, generator=g)).reshape(1, c, h, w)


def old_unscaled_gram(x: torch.Tensor) -> torch.Tensor:
    """The Gram as the subgraph formed it before scaling: M M^T in the feature's dtype."""
    m = as_matrix(x)
    return m @ m.transpose(1, 2)


def test_torch_cpu_computes_half_products_in_half():
    """The premise: a float16 Gram of a 4 x 70000 ones matrix is inf (70000 > 65504), bfloat16 rounds it to 8 bits,
    float32 is exact. So the float16/bfloat16 runs below are reduced-precision arithmetic, not upcast."""
    ones = torch.ones(1, 4, 1, 70000)
    assert torch.isinf(old_unscaled_gram(ones.half())).all()
    assert old_unscaled_gram(ones.bfloat16()).float()[0, 0, 0] != 70000.0
    assert old_unscaled_gram(ones)[0, 0, 0] == 70000.0


@pytest.fixture(scope="module")
def large():
    """0.9 megapixels with activations whose Gram exceeds float16's range, as the 4K case's does."""
    x = realistic(8, 720, 1280, peak_rms=0.6)
    return x, asvp_exact(x.double(), CFG)


def test_old_gram_overflows_where_the_scaled_one_stays_accurate(large):
    x, ref = large
    assert not torch.isfinite(old_unscaled_gram(x.half())).all()  # the previous formulation: inf, then NaN
    errs = {}
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        out = asvp_subspace(x.to(dtype), CFG)
        assert out.dtype == dtype and torch.isfinite(out).all(), dtype
        errs[dtype] = perturbation_error(out, ref, x)
    assert errs[torch.float16] <= FP16_TOL and errs[torch.bfloat16] <= BF16_TOL, errs
    # and the reduced runs really are reduced: far above float32's error
    assert errs[torch.float16] > 10 * errs[torch.float32] and errs[torch.bfloat16] > 10 * errs[torch.float32], errs


@pytest.mark.parametrize("scale", [100.0, 1e-3])
@pytest.mark.parametrize("dtype,tol", [(torch.float16, FP16_TOL), (torch.bfloat16, BF16_TOL)])
def test_activation_scales(scale, dtype, tol):
    """x100 and x1e-3 activations: no inf/NaN, the same accuracy (the scale cancels in the Gram's normalisation)."""
    x = realistic(32, 96, 96, peak_rms=0.3 * scale, seed=1)
    out = asvp_subspace(x.to(dtype), CFG)
    assert torch.isfinite(out).all()
    assert perturbation_error(out, asvp_exact(x.double(), CFG), x) <= tol


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_zero_feature_gives_zeros(dtype):
    x = torch.zeros(2, 16, 8, 8, dtype=dtype)
    assert torch.equal(asvp_subspace(x, CFG), x)


def test_float16_solve_is_out_of_range():
    """Why the C x C solve stays float32 (asvp_subspace's docstring): in float16 its powers overflow."""
    x = realistic(32, 64, 64, peak_rms=0.3, seed=2)
    assert not torch.isfinite(asvp_subspace(x.half(), CFG, solve_dtype=torch.float16)).all()
    out = asvp_subspace(x.bfloat16(), CFG, solve_dtype=torch.bfloat16)  # bfloat16 has float32's range
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("channels", [16, 64])
def test_feature_pass_nodes(channels):
    """is_feature_pass marks the passes over the feature (those a reduced-precision build may run in float16 or
    bfloat16): the Gram's and the apply's MatMuls and what feeds them; none of the C x C solve."""
    nodes = standalone_model(channels, CFG).graph.node
    marked = [n for n in nodes if is_feature_pass(n.name, "asvp/0")]
    assert {n.name.split("/")[-1].rsplit("_", 1)[0] for n in marked} <= set(FEATURE_PASS_LABELS)
    assert sum(n.op_type == "MatMul" for n in marked) == (1 if channels <= 32 else 2) + 1  # apply(s) + Gram
    assert {"Abs", "ReduceMax", "Reshape"} <= {n.op_type for n in marked}
    solve_ops = {"Atan", "TopK", "LpNormalization", "ReduceL2", "Einsum", "CumSum"}
    assert not [n.name for n in marked if n.op_type in solve_ops]
    assert len(marked) < len(nodes) // 4  # the solve is most of the nodes (and almost none of the work)
    assert not is_feature_pass("asvp/1/gram_3", "asvp/0")


@pytest.mark.slow
def test_sr_automatic_node_at_4k(exported):
    """The real 4K case: the sr teacher's automatic feature at a 1 x 3 x 2160 x 3840 input (ONNX Runtime, float32,
    about 2 minutes and 4 GB), then the mirror in float16 and bfloat16."""
    import onnxruntime as ort
    import torch.nn.functional as F

    from asvp.graph_passes import select
    from asvp.tasks.data import image

    model = onnx.load(exported("sr"))
    node = select.automatic(select.candidates(model))
    model.graph.output.append(onnx.helper.make_tensor_value_info(node.output, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    img = F.interpolate(image("motorcycle")[None], size=(2160, 3840), mode="bilinear").clamp(0, 1).numpy()
    x = torch.from_numpy(sess.run([node.output], {sess.get_inputs()[0].name: img})[0])
    del sess
    ref = asvp_exact(x.double(), CFG)
    assert not torch.isfinite(old_unscaled_gram(x.half())).all()
    for dtype, tol in ((torch.float16, FP16_TOL), (torch.bfloat16, BF16_TOL)):
        out = asvp_subspace(x.to(dtype), CFG)
        assert torch.isfinite(out).all() and perturbation_error(out, ref, x) <= tol, dtype
    assert np.isfinite(perturbation_error(asvp_subspace(x, CFG), ref, x))

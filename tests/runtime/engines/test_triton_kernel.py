"""The Triton ASVP kernels (asvp.runtime.engines.kernels.triton_asvp) against the float64 reference.
(Their ahead-of-time compiles: test_triton_compile.py.)

Without a CUDA device these run in Triton's CPU interpreter (TRITON_INTERPRET=1 is set below, before the kernels
are imported; Triton reads it when a kernel is defined). That checks the kernels' numerics (fp32 math, masks,
padding, the Jacobi eigensolver, the split Gram reduction), not their GPU speed. With a CUDA device the same tests
run the compiled kernels on it.

Tolerances: fp32 in/out: relative Frobenius error <= 1e-4 against `asvp_reference` (float64 SVD) of the same
input; fp16 / bf16 outputs: the reference of the rounded input, within 1e-3 / 8e-3 (their output rounding alone
is ~3e-4 / ~2e-3). Well-posedness is asserted before comparing: the adaptive rule is >= 1e-3 away from a
decision boundary and the amplified subspace has a relative energy gap >= 1e-3 to the next direction. Where the
amplified subspace is NOT unique (a tie exactly at the k boundary), only what is unique is compared.
"""
from __future__ import annotations

import os
import types

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from asvp.config import AsvpConfig  # noqa: E402
from asvp.errors import AsvpError, MissingDependencyError  # noqa: E402
from asvp.method import asvp_reference  # noqa: E402
from asvp.runtime.engines.kernels import triton_asvp as ta  # noqa: E402
from asvp.runtime.engines.kernels import triton_env, triton_launch as launch  # noqa: E402

OK, WHY = triton_env.triton_status()
pytestmark = pytest.mark.skipif(not OK, reason=WHY)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
F64 = torch.float64


# ---- helpers -------------------------------------------------------------------------------------------------

def spectral(svals, hw: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    """A C x hw float64 matrix with singular values `svals` (len C; zeros beyond min(C, hw)) and random vectors."""
    g = torch.Generator().manual_seed(seed)
    c = len(svals)
    r = min(c, hw)
    u, _ = torch.linalg.qr(torch.randn(c, c, generator=g, dtype=F64))
    v, _ = torch.linalg.qr(torch.randn(hw, r, generator=g, dtype=F64))
    s = torch.tensor(list(svals), dtype=F64)
    assert not s[r:].any(), "more non-zero singular values than columns"
    return (u[:, :r] * s[:r]) @ v.T * scale


def feature(mats, h: int, w: int, dtype=torch.float32) -> torch.Tensor:
    return torch.stack([m.reshape(m.shape[0], h, w) for m in mats]).to(dtype)


def ref_energies(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(x.detach().to(F64).reshape(x.shape[0], x.shape[1], -1)) ** 2


def ref_k(x: torch.Tensor, cfg: AsvpConfig) -> list:
    """Per sample, how many directions the reference amplifies."""
    e = ref_energies(x)
    k = min(cfg.k, e.shape[1])
    if cfg.k_mode != "adaptive":
        return [k] * e.shape[0]
    before = torch.cumsum(e[:, :k], 1) - e[:, :k]
    return (before < cfg.tau * e.sum(1, keepdim=True)).sum(1).tolist()


def assert_well_posed(x: torch.Tensor, cfg: AsvpConfig, margin: float = 1e-3) -> None:
    e = ref_energies(x)
    total = e.sum(1)
    for i, kn in enumerate(ref_k(x, cfg)):
        if total[i] == 0:
            continue
        if cfg.k_mode == "adaptive":
            before = torch.cumsum(e[i, : cfg.k], 0) - e[i, : cfg.k]
            gap = (before - cfg.tau * total[i]).abs().min() / total[i]
            assert gap > margin, f"sample {i}: adaptive rule within {gap:.1e} of a decision boundary"
        if kn < e.shape[1]:
            rel_gap = (e[i, kn - 1] - e[i, kn]) / e[i, 0]
            assert rel_gap > margin, f"sample {i}: amplified subspace not well separated (gap {rel_gap:.1e})"


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.to(F64) - ref).norm() / ref.norm()).item()


def run(x, cfg: AsvpConfig, fused: bool = False, **kw):
    x = x.to(DEVICE)
    if fused:
        return ta.asvp_triton_fused(x, *ta.config_args(cfg), **kw)
    return ta.asvp_triton(x, *ta.config_args(cfg), **kw)


def check_parity(x, cfg: AsvpConfig, tol: float = 1e-4, fused: bool = False, stats: bool = True):
    """Kernel vs asvp_reference on x; also the per-sample k and the energies from the kernel's diagnostics."""
    ref = asvp_reference(x, cfg)
    if fused or not stats:
        out = run(x, cfg, fused=fused).cpu()
    else:
        out, st = run(x, cfg, stats=True)
        out = out.cpu()
        assert st.kept.sum(1).round().int().tolist() == ref_k(x, cfg)
        e = ref_energies(x)
        e_err = ((st.energies.cpu().to(F64) - e).abs().amax(1) / e[:, 0].clamp_min(1e-300)).max().item()
        assert e_err <= 1e-4, f"energies off by {e_err:.1e} of the largest"  # fp32 Gram + Jacobi: ~1e-5 at C=128
    assert out.dtype == x.dtype and out.shape == x.shape and torch.isfinite(out).all()
    err = rel_err(out, ref)
    assert err <= tol, f"relative error {err:.2e} > {tol:.0e}"
    return err, out


def decay(c: int, ratio: float = 0.8):
    return [ratio**i for i in range(c)]


ADAPTIVE = AsvpConfig(k=4, h=1.5, tau=0.6, k_mode="adaptive")  # decay(0.8): keeps 3 of 4 (share 0.59 < 0.6)
FIXED = AsvpConfig(k=4, h=1.5, k_mode="fixed")


# ---- real teacher features -----------------------------------------------------------------------------------

def teacher_feature(task: str, module: str, n: int, size: int = 48) -> torch.Tensor:
    from asvp.exporter.teachers.bundled import load_teacher

    model, spec = load_teacher(task)
    inp, _ = spec.heldout(size=size)
    got = {}
    handle = model.get_submodule(module).register_forward_hook(lambda m, i, o: got.setdefault("f", o.detach()))
    with torch.no_grad():
        model(inp[:n])
    handle.remove()
    return got["f"].contiguous()


@pytest.mark.parametrize("task,module,n", [("sr", "body.3", 2), ("lowlight", "enc1", 1)])
def test_real_teacher_features(task, module, n):
    """sr body.3: [2, 32, 24, 24]; lowlight enc1: [1, 24, 48, 48] (C = 24 padded to 32; 18 Gram partials)."""
    x = teacher_feature(task, module, n)
    cfg = AsvpConfig()  # the shipped default: k=4 adaptive, tau=0.9, h=1.5
    assert_well_posed(x, cfg)
    check_parity(x, cfg)
    check_parity(x[:1], cfg.with_(k_mode="fixed", h=0.7), fused=True)


# ---- hard spectra --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("c,hw", [(8, (8, 8)), (32, (8, 8)), (64, (8, 8)), (128, (16, 16))])
def test_channel_counts(c, hw):
    """Distinct, geometrically decaying spectra at C = 8, 32, 64 and 128 (padded to CP = 16, 32, 64, 128)."""
    h, w = hw
    x = feature([spectral(decay(c)[: min(c, h * w)] + [0.0] * max(0, c - h * w), h * w, seed=c)], h, w)
    assert_well_posed(x, ADAPTIVE)
    check_parity(x, ADAPTIVE)


def test_fixed_vs_adaptive_and_h_below_one():
    x = feature([spectral(decay(16), 64, seed=1)], 8, 8)
    assert ref_k(x, ADAPTIVE) == [3] and ref_k(x, FIXED) == [4]
    outs = {}
    for name, cfg in {"adaptive": ADAPTIVE, "fixed": FIXED, "h<1": FIXED.with_(h=0.25)}.items():
        assert_well_posed(x, cfg)
        outs[name] = check_parity(x, cfg)[1]
    assert rel_err(outs["adaptive"], asvp_reference(x, FIXED)) > 1e-2  # the two modes really differ


def test_ties_inside_the_amplified_subspace():
    """s1 = s2 (and s3 = s4): the amplified subspace is unique although its basis is not."""
    s = [3.0, 3.0, 2.0, 2.0] + decay(28, 0.7)
    x = feature([spectral(s, 64, seed=2)], 8, 8)
    for cfg in (FIXED.with_(k=2), AsvpConfig(k=4, tau=0.8)):  # adaptive tau=0.8 keeps all 4
        assert_well_posed(x, cfg)
        check_parity(x, cfg)


def test_tie_at_the_k_boundary_is_compared_on_what_is_unique():
    """s2 = s3 with fixed k = 2: which vector of the tied pair gets amplified is arbitrary (float64 SVD and the
    fp32 kernel may pick different ones), so the outputs may differ by up to (h - 1) s2. What is unique: the
    output's singular values, and the output outside the tied 2-D left-singular subspace."""
    s = [4.0, 2.0, 2.0] + decay(29, 0.5)
    m = spectral(s, 64, seed=3)
    x = feature([m], 8, 8)
    cfg = FIXED.with_(k=2, h=1.5)
    out = run(x, cfg).cpu().to(F64).reshape(32, 64)
    ref = asvp_reference(x, cfg).reshape(32, 64)
    sv_out, sv_ref = torch.linalg.svdvals(out), torch.linalg.svdvals(ref)
    assert ((sv_out - sv_ref).norm() / sv_ref.norm()).item() <= 1e-4
    u = torch.linalg.svd(x.to(F64).reshape(32, 64), full_matrices=False)[0][:, 1:3]  # the tied pair
    outside = (out - ref) - u @ (u.T @ (out - ref))
    assert (outside.norm() / ref.norm()).item() <= 1e-4


@pytest.mark.parametrize("cfg", [FIXED, AsvpConfig(k=4, tau=0.99)], ids=["fixed", "adaptive"])
def test_rank_deficient(cfg):
    """Rank 2 < k = 4: the null directions the kernel may pick contribute nothing."""
    x = feature([spectral([1.0, 0.5] + [0.0] * 30, 64, seed=4)], 8, 8)
    check_parity(x, cfg)


def test_all_zero_feature_gives_exact_zeros():
    x = torch.zeros(2, 32, 8, 8)
    for fused in (False, True):
        for cfg in (ADAPTIVE, FIXED):
            out = run(x, cfg, fused=fused).cpu()
            assert torch.equal(out, torch.zeros_like(x)), "not exactly zero"
    mixed = torch.cat([torch.zeros(1, 32, 8, 8), feature([spectral(decay(32), 64, seed=5)], 8, 8)])
    out = run(mixed, ADAPTIVE).cpu()
    assert torch.equal(out[0], torch.zeros(32, 8, 8))
    assert rel_err(out[1:], asvp_reference(mixed[1:], ADAPTIVE)) <= 1e-4


@pytest.mark.parametrize("scale", [1e4, 1e-6])
def test_extreme_magnitudes(scale):
    x = feature([spectral(decay(32), 64, seed=6, scale=scale)], 8, 8)
    assert_well_posed(x, ADAPTIVE)
    check_parity(x, ADAPTIVE)


def test_batch_with_different_spectra_per_sample():
    cfg = AsvpConfig(k=4, tau=0.9)
    mats = [spectral(decay(32, 0.5), 64, seed=7), spectral([3.0, 3.0, 1.5] + decay(29, 0.6), 64, seed=8),
            spectral([1.0] + [0.0] * 31, 64, seed=9)]
    x = feature(mats, 8, 8)
    assert len(set(ref_k(x, cfg))) == 3, ref_k(x, cfg)  # three different adaptive k
    assert_well_posed(x, cfg)
    check_parity(x, cfg)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-3), (torch.bfloat16, 8e-3)])
def test_half_precision_inputs(dtype, tol):
    x = feature([spectral(decay(32), 64, seed=10)], 8, 8, dtype=dtype)
    assert_well_posed(x, ADAPTIVE)
    check_parity(x, ADAPTIVE, tol=tol, stats=False)
    check_parity(x, ADAPTIVE, tol=tol, fused=True)


@pytest.mark.parametrize("scale", [100.0, 1e-3])
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-3), (torch.bfloat16, 8e-3)])
def test_half_precision_inputs_at_activation_scales(dtype, tol, scale):
    """fp16/bf16 features scaled x100 and x1e-3 (issue 26): the kernels read them as fp32, so no inf/NaN and the
    same accuracy as at x1."""
    x = feature([spectral(decay(32), 64, seed=10, scale=scale)], 8, 8, dtype=dtype)
    assert_well_posed(x, ADAPTIVE)
    check_parity(x, ADAPTIVE, tol=tol, stats=False)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-3), (torch.bfloat16, 8e-3)])
def test_half_precision_gram_beyond_fp16_range(dtype, tol):
    """A feature whose Gram entries (up to 2.5e5) exceed float16's 65,504: the Gram accumulates and stays in fp32."""
    x = feature([spectral(decay(16), 4096, seed=11, scale=800.0)], 64, 64, dtype=dtype)
    m = x.reshape(16, -1)
    assert not torch.isfinite(m.half() @ m.half().T).all()  # what a float16 Gram would give
    assert_well_posed(x, ADAPTIVE)
    check_parity(x, ADAPTIVE, tol=tol, stats=False)


def test_split_gram_reduction_and_odd_sizes(monkeypatch):
    """Several partials and several tiles per program (MAX_SPLITS lowered), H * W not a multiple of the tile."""
    monkeypatch.setattr(launch, "MAX_SPLITS", 2)
    x = feature([spectral(decay(32), 17 * 23, seed=11)], 17, 23)
    plan = launch.LaunchPlan.for_shape(1, 32, 17 * 23)
    assert plan.nsplit == 2 and plan.iters == 2  # 4 tiles of 128 px -> 2 programs x 2 tiles
    check_parity(x, ADAPTIVE)


def test_out_argument_in_place_and_non_contiguous_input():
    x = feature([spectral(decay(8), 64, seed=12)], 8, 8).to(DEVICE)
    want = run(x, ADAPTIVE)
    buf = torch.empty_like(x)
    assert run(x, ADAPTIVE, out=buf) is buf and torch.equal(buf, want)
    y = x.clone()
    run(y, ADAPTIVE, out=y)  # in place
    assert torch.equal(y, want)
    xt = x.transpose(2, 3)  # non-contiguous view
    assert torch.equal(run(xt, ADAPTIVE), run(xt.contiguous(), ADAPTIVE))


# ---- contract --------------------------------------------------------------------------------------------------

def test_bad_inputs_are_one_line_errors():
    x = torch.zeros(1, 8, 4, 4, device=DEVICE)
    cases = [(torch.zeros(8, 4, 4), "rank-4"), (torch.zeros(1, 8, 4, 4, dtype=torch.int32), "float32"),
             (torch.zeros(1, 129, 2, 2), "1..128")]
    for bad, match in cases:
        with pytest.raises(AsvpError, match=match):
            ta.asvp_triton(bad.to(DEVICE), 2, 1.5, 0.9, True)
    with pytest.raises(AsvpError, match="k >= 1"):
        ta.asvp_triton(x, 0, 1.5, 0.9, True)
    with pytest.raises(AsvpError, match="out must be"):
        ta.asvp_triton(x, 2, 1.5, 0.9, True, out=torch.empty(1, 8, 4, 5, device=DEVICE))
    fake = types.SimpleNamespace(asvp_fused_kernel=object())  # compiled (not interpreted) kernels
    with pytest.raises(MissingDependencyError, match="TRITON_INTERPRET") as e:
        ta._check(torch.zeros(1, 8, 4, 4), 2, 1.5, 0.9, None, fake)
    assert "\n" not in str(e.value) and e.value.exit_code == 3


def test_status_and_launch_plans():
    ok, detail = triton_env.triton_status()
    assert ok and "Triton" in detail and "\n" not in detail
    assert [launch.padded_channels(c) for c in (1, 8, 16, 17, 24, 32, 33, 96, 128)] == [16, 16, 16, 32, 32, 32, 64, 128, 128]
    for n, c, h, w in [(1, 32, 256, 256), (8, 32, 256, 256), (1, 32, 540, 960), (1, 128, 64, 64)]:
        p = launch.LaunchPlan.for_shape(n, c, h * w)
        assert p.nsplit <= launch.MAX_SPLITS and p.nsplit * p.iters * p.block_p >= h * w
        assert p.iters & (p.iters - 1) == 0 and (p.nsplit - 1) * p.iters * p.block_p < h * w

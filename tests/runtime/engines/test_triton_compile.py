"""Ahead-of-time compiles of the Triton ASVP kernels (asvp.runtime.engines.kernels.triton_compile): Triton's real
compiler for explicit targets, so no GPU is needed; each compile runs in a subprocess without TRITON_INTERPRET
(test_triton_kernel.py sets it for this process when there is no CUDA device).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import pytest

from asvp.errors import AsvpError, MissingDependencyError
from asvp.runtime.engines.kernels import triton_compile as tc, triton_env, triton_launch as launch


@pytest.fixture
def needs_triton():
    """Skip without a supported Triton. Checked when the test runs, not at collection: importing triton before
    test_triton_kernel.py sets TRITON_INTERPRET would define Triton's own library functions for compiled use, and
    that file's interpreted kernels would then fail."""
    try:
        triton_env.require_triton()
    except MissingDependencyError as exc:
        pytest.skip(str(exc))


def _compiled(code: str) -> str:
    """Run `code` in a subprocess without TRITON_INTERPRET (Triton's real compiler; no GPU needed): its stdout."""
    env = {key: val for key, val in os.environ.items() if key != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


@pytest.mark.usefixtures("needs_triton")
def test_kernels_compile_for_sm90_and_fit_a_tensorrt_aot_launch():
    """Every kernel compiles for sm_90 (C = 24, fp16 in/out for the streaming ones), and the fused kernel that the
    TensorRT AOT route embeds takes exactly the arguments TensorRT passes (no hidden scratch buffer in use)."""
    out = _compiled("""
from asvp.runtime.engines.kernels import triton_compile as tc, triton_launch as launch
for kernel in launch.KERNELS:
    tc.compile_kernel(kernel, 24, ("cuda", 90, 32), "fp16")
k = tc.compile_fused(32, 4, 1.5, 0.9, True, target=("cuda", 90, 32))
entry = k.ptx[k.ptx.index(".entry " + k.name):]
params = entry[: entry.index(")")].count(".param")
print(k.name, k.num_warps, k.shared, params)
""")
    name, warps, shared, params = out.split()
    # x, H*W, y, then Triton's two hidden scratch pointers (unused: compile_fused checks their sizes are 0)
    assert name == "asvp_fused_kernel" and int(warps) == launch.FUSED_TILES[32][1] and int(params) == 5


@pytest.mark.usefixtures("needs_triton")
def test_kernels_fit_every_supported_architecture_and_streaming_kernels_do_not_spill():
    """At C = 128 (the largest padding) every kernel's shared memory is within sm_86's 99 KB, the smallest
    per-block limit of the architectures Triton supports (A10, L4, RTX: the eig and fused kernels needed 128 KB
    when Q was one CP x CP dot). The two kernels that stream the feature (gram, apply) keep every value in
    registers on sm_90 at every padding: no spill stack (apply spilled up to 3.5 KB per thread with a whole
    CP x CP operand). benchmarks/kernel_compile.py reports the rest."""
    out = _compiled("""
import json
from asvp.runtime.engines.kernels import triton_compile as tc, triton_launch as launch
rows = [tc.kernel_resources(k, 128, 86) for k in launch.KERNELS]
rows += [tc.kernel_resources(k, c, 90) for k in ("gram", "apply") for c in (16, 32, 64, 128)]
print(json.dumps([r.__dict__ for r in rows]))
""")
    rows = json.loads(out)
    assert len(rows) == 12
    for r in rows[:4]:
        assert r["shared_limit"] == 99 * 1024 and r["shared_bytes"] <= r["shared_limit"], r
    for r in rows[4:]:
        assert r["stack_bytes"] == 0 and r["registers"] <= 255, r


def test_compile_fused_refuses_what_the_target_cannot_launch(monkeypatch):
    """A fused kernel over the target architecture's shared memory limit (or one needing Triton's hidden scratch
    buffers) is refused in one line at compile time, not left to fail at TensorRT's enqueue."""
    def fake(shared, scratch=0):
        meta = types.SimpleNamespace(name="asvp_fused_kernel", num_warps=8, shared=shared, global_scratch_size=scratch)
        return lambda *a, **kw: types.SimpleNamespace(metadata=meta, asm={"ptx": "ptx"})

    monkeypatch.setattr(tc, "compile_kernel", fake(101377))
    with pytest.raises(AsvpError, match=r"needs 101377 bytes of shared memory, more than sm_89 gives one block") as e:
        tc.compile_fused(96, 4, 1.5, 0.9, True, target=("cuda", 89, 32))
    assert "\n" not in str(e.value)
    assert tc.compile_fused(96, 4, 1.5, 0.9, True, target=("cuda", 90, 32)).shared == 101377  # 227 KB there
    assert tc.compile_fused(96, 4, 1.5, 0.9, True).target == "current device"  # Triton checks at load
    monkeypatch.setattr(tc, "compile_kernel", fake(1024, scratch=64))
    with pytest.raises(AsvpError, match="hidden scratch buffers"):
        tc.compile_fused(32, 4, 1.5, 0.9, True, target=("cuda", 90, 32))

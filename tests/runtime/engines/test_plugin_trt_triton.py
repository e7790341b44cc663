"""The TensorRT plugin's Triton wiring (runtime/engines/plugin_trt.py), on CPU, against stand-in tensorrt modules.

What this shows: the JIT impl dispatches to the Triton kernel when it can and to torch otherwise; the AOT impl
has the signature TensorRT's `tensorrt.plugin._validate._validate_aot_impl` accepts and builds the launch (grid,
block, shared memory, the H*W scalar) from the node's shape expressions; registration with aot=True adds it once
and refuses in one line without `tensorrt.plugin.aot_impl`. What it does not show: anything TensorRT itself does
(parsing, engine build, running the PTX). That part is UNVERIFIED: no TensorRT and no GPU were available.
"""
from __future__ import annotations

import inspect
import sys
import types
import typing

import numpy as np
import pytest
import torch

from asvp.errors import AsvpError, MissingDependencyError
from asvp.graph_passes.plugin_contract import config_from_attrs
from asvp.method import asvp_reference
from asvp.runtime.engines import plugin_trt
from asvp.runtime.engines.kernels import triton_asvp, triton_compile, triton_env, triton_launch


# ---- the JIT impl's dispatch -------------------------------------------------------------------------------------

def test_jit_impl_uses_torch_on_cpu_tensors():
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 8, 6, 5)).astype(np.float32))
    out = torch.empty_like(x)
    assert plugin_trt.run_plugin(x, out, 3, 1.5, 0.8, 1) == "torch"
    ref = asvp_reference(x, config_from_attrs(3, 1.5, 0.8, 1))
    assert ((out.double() - ref).norm() / ref.norm()).item() <= 1e-5


def test_jit_impl_uses_triton_when_it_takes_the_tensor(monkeypatch):
    calls = []
    monkeypatch.setattr(triton_asvp, "usable_for", lambda t: True)
    monkeypatch.setattr(triton_asvp, "asvp_triton", lambda *a, **kw: calls.append((a[1:], kw)))
    x = torch.zeros(1, 8, 4, 4)
    out = torch.empty_like(x)
    assert plugin_trt.run_plugin(x, out, 3, 1.1, 0.7, 0) == "triton"
    cfg = config_from_attrs(3, 1.1, 0.7, 0)  # h and tau rounded to float32, as TensorRT passes them
    assert calls == [((3, cfg.h, cfg.tau, False), {"out": out})]
    with pytest.raises(ValueError, match="differs"):
        plugin_trt.run_plugin(x, torch.empty(1, 8, 4, 5), 3, 1.1, 0.7, 0)


def test_usable_for_needs_cuda_and_at_most_128_channels():
    assert not triton_asvp.usable_for(torch.zeros(1, 8, 4, 4))  # CPU tensor
    assert not triton_asvp.usable_for(np.zeros((1, 8, 4, 4)))


def test_kernels_are_meant_for_compute_capability_8_and_later():
    """T4 (7.5) and V100 (7.0) get the torch fallback: Triton's README lists 8.0+, and SHARED_LIMITS starts there."""
    assert [triton_launch.arch_supported(c) for c in [(7, 0), (7, 5), (8, 0), (8, 6), (8, 7), (9, 0), (12, 0)]] == [
        False, False, True, True, True, True, True]
    assert min(triton_launch.SHARED_LIMITS) == 10 * triton_launch.MIN_CAPABILITY[0] + triton_launch.MIN_CAPABILITY[1]


# ---- the AOT impl (UNVERIFIED with TensorRT) ---------------------------------------------------------------------

def test_aot_impl_signature_follows_tensorrt_validation_rules(fake_trtp):
    """The rules of TensorRT's _validate_aot_impl, restated: attrs as registered, then outputs and tactic; a return
    annotation tuple[str | bytes, str | bytes, KernelLaunchParams, SymExprs subclass]."""
    fake = fake_trtp()
    plugin_trt._define(fake)
    plugin_trt._define_aot(fake)
    [(pid, fn)] = fake.defs["aot_impl"]
    assert pid == plugin_trt.PLUGIN_ID
    sig = inspect.signature(fn)
    assert "(" + ", ".join(sig.parameters) + ")" == "(inp0, k, h, tau, adaptive, outputs, tactic)"
    reg = inspect.signature(fake.defs["register"][0][1])
    for name in ("k", "h", "tau", "adaptive"):  # same annotations as at registration
        assert sig.parameters[name].annotation is reg.parameters[name].annotation
    assert sig.parameters["inp0"].annotation is fake.TensorDesc
    assert typing.get_origin(sig.parameters["outputs"].annotation) is tuple
    assert typing.get_args(sig.parameters["outputs"].annotation) == (fake.TensorDesc,)
    assert sig.parameters["tactic"].annotation is int
    ret = sig.return_annotation
    assert typing.get_origin(ret) is tuple and len(typing.get_args(ret)) == 4
    name_t, code_t, params_t, exprs_t = typing.get_args(ret)
    assert set(typing.get_args(name_t)) == set(typing.get_args(code_t)) == {str, bytes}
    assert params_t is fake.KernelLaunchParams and issubclass(exprs_t, fake.SymExprs)


def test_aot_kernel_builds_the_launch_from_shape_expressions(fake_trtp, nchw):
    fake = fake_trtp()
    got = {}

    def compile_fn(channels, k, h, tau, adaptive, dtype):
        got.update(channels=channels, k=k, h=h, tau=tau, adaptive=adaptive, dtype=dtype)
        return triton_compile.CompiledKernel("asvp_fused_kernel", ".entry asvp_fused_kernel", 8, 8192, "cuda:90")

    name, ptx, params, extra = plugin_trt.aot_kernel(fake, fake.TensorDesc(nchw()), 4, 1.5, 0.9, 1, compile_fn)
    cfg = config_from_attrs(4, 1.5, 0.9, 1)
    assert got == dict(channels=32, k=4, h=cfg.h, tau=cfg.tau, adaptive=True, dtype="fp32")
    assert (name, ptx) == ("asvp_fused_kernel", ".entry asvp_fused_kernel")
    assert params.grid_x == ("SymInt32", "N") and params.block_x == 256 and params.shared_mem == 8192
    assert list(extra) == [("SymInt32", "(H*W)")]  # the kernel's int32 HW argument, between x_ptr and y_ptr
    with pytest.raises(AsvpError, match="static channel count"):
        plugin_trt.aot_kernel(fake, fake.TensorDesc(nchw(channels_constant=False)), 4, 1.5, 0.9, 1, compile_fn)


# ---- registration --------------------------------------------------------------------------------------------------

@pytest.fixture
def stand_in_tensorrt(monkeypatch, fake_trtp):
    """Install stand-in `tensorrt` / `tensorrt.plugin` modules; reset plugin_trt's registration state."""

    def install(version="10.9.0.34", with_aot=True):
        trtp = fake_trtp(with_aot)
        trt = types.ModuleType("tensorrt")
        trt.__version__ = version
        trt.plugin = trtp
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setitem(sys.modules, "tensorrt.plugin", trtp)
        return trtp

    monkeypatch.setattr(plugin_trt, "_REGISTERED", False)
    monkeypatch.setattr(plugin_trt, "_AOT_DEFINED", False)
    return install


def test_register_with_aot_defines_both_implementations_once(stand_in_tensorrt, monkeypatch):
    monkeypatch.setattr(triton_env, "require_triton", lambda: None)
    trtp = stand_in_tensorrt()
    assert plugin_trt.register_asvp_plugin() == plugin_trt.PLUGIN_ID
    assert "aot_impl" not in trtp.defs  # JIT only unless asked: existing engine builds keep working unchanged
    plugin_trt.register_asvp_plugin(aot=True)
    plugin_trt.register_asvp_plugin(aot=True)
    assert {kind: len(v) for kind, v in trtp.defs.items()} == {"register": 1, "autotune": 1, "impl": 1, "aot_impl": 1}


def test_register_with_aot_refuses_in_one_line_without_the_aot_api_or_triton(stand_in_tensorrt, monkeypatch):
    stand_in_tensorrt(version="10.8.0.43", with_aot=False)
    with pytest.raises(MissingDependencyError, match="aot_impl") as e:
        plugin_trt.register_asvp_plugin(aot=True)
    assert "\n" not in str(e.value) and e.value.exit_code == 3
    stand_in_tensorrt()

    def no_triton():
        raise MissingDependencyError("Triton is not installed (ModuleNotFoundError): pip install 'asvp[kernels]'")

    monkeypatch.setattr(triton_env, "require_triton", no_triton)
    with pytest.raises(MissingDependencyError, match="Triton"):
        plugin_trt.register_asvp_plugin(aot=True)

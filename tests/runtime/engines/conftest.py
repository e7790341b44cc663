"""Stand-ins for `tensorrt.plugin`, shared by the engine tests: they record what plugin_trt hands to TensorRT's
Python plugin API so that it can be checked against the API's documented rules without TensorRT."""
from __future__ import annotations

import types

import pytest


class Sym:
    """Stand-in for tensorrt.plugin ShapeExpr / SymInt32: records the expression it stands for."""

    def __init__(self, value, constant: bool = False):
        self.value, self.is_constant = value, constant

    def constant_value(self):  # a method in TensorRT 10.8-10.9, a property later: plugin_trt handles both
        return self.value

    def __mul__(self, other):
        return Sym(f"({self.value}*{other.value})")

    def __eq__(self, other):
        return isinstance(other, Sym) and other.value == self.value


def make_fake_trtp(with_aot: bool = True):
    fake = types.SimpleNamespace(defs={})

    class TensorDesc:
        def __init__(self, shape_expr=None):
            self.shape_expr = shape_expr

        def like(self):
            return "like"

    class Tensor:
        pass

    class AutoTuneCombination:
        def __init__(self, types_, layouts=None):
            self.types, self.layouts = types_, layouts

    class KernelLaunchParams:
        grid_x = grid_y = grid_z = block_x = block_y = block_z = 1
        shared_mem = 0

    class SymExprs:
        pass

    class SymIntExprs(SymExprs, list):
        def __init__(self, n):
            list.__init__(self, [None] * n)

    def deco(kind):
        def outer(plugin_id):
            def inner(fn):
                fake.defs.setdefault(kind, []).append((plugin_id, fn))
                return fn
            return inner
        return outer

    fake.TensorDesc, fake.Tensor, fake.AutoTuneCombination = TensorDesc, Tensor, AutoTuneCombination
    fake.KernelLaunchParams, fake.SymExprs, fake.SymIntExprs = KernelLaunchParams, SymExprs, SymIntExprs
    fake.SymInt32 = lambda e: ("SymInt32", e.value if isinstance(e, Sym) else e)
    fake.register, fake.autotune, fake.impl = deco("register"), deco("autotune"), deco("impl")
    if with_aot:
        fake.aot_impl = deco("aot_impl")
    return fake


def make_nchw(channels_constant: bool = True):
    return [Sym("N"), Sym(32, constant=channels_constant), Sym("H"), Sym("W")]


@pytest.fixture
def fake_trtp():
    """fake_trtp(with_aot=True) -> a stand-in tensorrt.plugin module; .defs[kind] lists (plugin id, function)."""
    return make_fake_trtp


@pytest.fixture
def nchw():
    """nchw(channels_constant=True) -> shape expressions [N, 32, H, W] as tensorrt.plugin hands them to AOT impls."""
    return make_nchw

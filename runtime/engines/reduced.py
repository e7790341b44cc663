"""Reduced-precision (fp16 / bf16) inference of an ONNX model through torch: validation at the precision that ships.

ONNX Runtime's CPU provider has fp16 kernels for few ops and inserts casts to fp32 around the others, so an fp16 ONNX
model run there mostly computes in fp32 and proves nothing about fp16 arithmetic. Here the ONNX model is converted
to a torch.fx graph with onnx2torch (the optional `precision` extra) and run node by node by an fx Interpreter that
keeps every floating tensor in the reduced dtype, as a reduced-precision engine stores its activations:

* each node's floating inputs (the graph input, weights and constants included) are rounded to the dtype, and each
  floating output is rounded to it, so an intermediate above the dtype's range is inf, as on the engine;
* an op with no kernel for the dtype on the device is run in fp32 on the rounded inputs and rounded back; such nodes
  are listed (`ReducedModel.upcast`), as are nodes whose module computed in fp32 internally (`promoted`: an fp32
  constant inside an onnx2torch module; their outputs are rounded back all the same). Both lists are reported.

Each op accumulates as torch's kernel does (fp32 accumulators for half matmul and convolution on CPU), like the
fp16 paths of GPU libraries; the storage between ops is what is reduced.

    runner = ReducedPrecisionRunner(TorchFromOnnx("model.onnx", "fp16"))
    with runner:
        out = runner.infer({input_name: batch})   # float32 arrays of the fp16 results

The ASVP block's small C x C solve runs in fp32 on the rounded Gram matrix, as `asvp build` pins it (and as the
torch mirror asvp_subspace runs it): it raises the normalised Gram to high powers, which leaves fp16's range at any
scale (docs/method.md, "Reduced precision"). Its nodes are listed (`ReducedModel.solve`); the passes over the
feature, the mark and everything else run in the reduced dtype.

Plugin-mode models (AsvpPerturb custom nodes) are refused: defend with --mode subgraph to validate below fp32.
"""
from __future__ import annotations

import copy
import importlib.util
import operator
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch
from polygraphy import util as pg_util
from polygraphy.backend.base import BaseLoader, BaseRunner
from polygraphy.common import TensorMetadata
from polygraphy.datatype import DataType

from asvp.errors import AsvpError, MissingDependencyError, first_line
from asvp.graph_passes.plugin_contract import is_plugin_node
from asvp.onnx_utils import as_model
from asvp.standins import torchvision_standin
from asvp.runtime.engines.precision import in_solve

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
INSTALL_ONNX2TORCH = "pip install 'onnx2torch>=1.5.15,<1.6' (or the extra: pip install 'asvp[precision]')"
REDUCED_BACKENDS = {"onnxrt-cpu": "cpu", "onnxrt-cuda": "cuda"}  # the torch device that stands in for each


def _import_onnx2torch():
    try:
        # onnx2torch imports torchvision.ops (NMS, RoiAlign) eagerly: where it cannot load, a model using them is
        # refused when it runs, never computed wrongly
        torchvision_standin("torchvision.ops", {"torchvision": {},
                                                "torchvision.ops": {"roi_align": None, "nms": None, "box_convert": None}},
                            "this ONNX op needs a working torchvision, which cannot load beside this torch")
        import onnx2torch
    except ImportError:
        raise MissingDependencyError(f"--precision fp16/bf16 needs onnx2torch: {INSTALL_ONNX2TORCH}") from None
    _register_missing_converters()
    return onnx2torch


class OnnxLpNormalization(torch.nn.Module):
    """ONNX LpNormalization (no onnx2torch converter): x / ||x||_p along `axis`, p in {1, 2}. No epsilon, as ONNX
    Runtime's kernel: a zero slice gives NaN there and here."""

    def __init__(self, axis: int, p: int):
        super().__init__()
        self.axis, self.p = axis, p

    def forward(self, x):
        return x / torch.linalg.vector_norm(x, ord=self.p, dim=self.axis, keepdim=True)


def _register_missing_converters() -> None:
    from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription, add_converter
    from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node

    if OperationDescription("", "LpNormalization", 1) in _CONVERTER_REGISTRY:
        return

    @add_converter(operation_type="LpNormalization", version=1)
    def _lp(node, graph):  # noqa: ARG001
        a = node.attributes
        return OperationConverterResult(OnnxLpNormalization(int(a.get("axis", -1)), int(a.get("p", 2))),
                                        onnx_mapping_from_node(node))


def _floating(t) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point()


def _no_kernel(exc: BaseException) -> bool:
    msg = str(exc)
    return "not implemented for" in msg and ("'Half'" in msg or "'BFloat16'" in msg)


@dataclass
class ReducedModel:
    """What TorchFromOnnx returns: the converted graph, its dtype and device, the ONNX inputs and outputs, and what
    the last runs could not compute in the dtype (node name -> op)."""

    graph: torch.fx.GraphModule
    precision: str
    device: str
    inputs: list  # (name, [dims]) of the ONNX graph inputs
    outputs: list  # names of the ONNX graph outputs, in order
    upcast: dict = field(default_factory=dict)  # no kernel in the dtype: computed in fp32 on rounded inputs
    fp32_ops: frozenset = frozenset()  # ops (as `upcast` names them) to compute in fp32 on rounded inputs anyway
    promoted: dict = field(default_factory=dict)  # an onnx2torch module computed in fp32 internally
    solve: frozenset = frozenset()  # the ASVP solve's modules (onnx2torch names them after the ONNX nodes): fp32
    graph32: torch.fx.GraphModule | None = None  # the fp32 graph (when there is a solve): its modules and constants

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.precision]

    def __call__(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        out = ReducedInterpreter(self).run(*inputs)
        return list(out) if isinstance(out, (tuple, list)) else [out]

    def fp32_notes(self) -> list[str]:
        """One line each for what did not run in the reduced dtype (empty: everything did)."""
        notes = []
        if self.solve:
            notes.append(f"{self.precision}: the ASVP solve ({len(self.solve)} node(s)) in fp32 on the rounded Gram "
                         "matrix, as asvp build pins it")
        if self.upcast:
            why = "asked for (fp32_ops)" if set(self.upcast.values()) <= self.fp32_ops else f"no {self.device} kernel"
            notes.append(f"{self.precision}: {why}, computed in fp32 on {self.precision} inputs and rounded back: "
                         f"{', '.join(sorted(set(self.upcast.values())))} ({len(self.upcast)} node(s))")
        if self.promoted:
            notes.append(f"{self.precision}: computed in fp32 inside the converted op, output rounded back: "
                         f"{', '.join(sorted(set(self.promoted.values())))} ({len(self.promoted)} node(s))")
        return notes


class ReducedInterpreter(torch.fx.Interpreter):
    """Runs a ReducedModel's graph keeping every floating tensor in its dtype (see the module docstring)."""

    def __init__(self, model: ReducedModel):
        super().__init__(model.graph)
        self.model = model
        self._fp32 = {}  # call_module target -> an fp32 copy, for modules whose op has no reduced kernel

    def _down(self, v):
        dt = self.model.dtype
        return torch.fx.node.map_aggregate(v, lambda t: t.to(dt) if _floating(t) and t.dtype != dt else t)

    def _what(self, n) -> str:
        if n.op == "call_module":
            return type(self.module.get_submodule(n.target)).__name__.removeprefix("Onnx")
        return getattr(n.target, "__name__", str(n.target))

    def run_node(self, n):
        if n.op == "get_attr" and self.model.graph32 is not None:  # a constant as stored: each consumer rounds it
            return self._attr32(n.target)
        if n.op in ("placeholder", "get_attr", "output"):
            return self._down(super().run_node(n))
        if n.op == "call_function" and n.target is operator.getitem:  # picks a tuple item: computes nothing, rounds
            return super().run_node(n)  # nothing (a pinned solve's fp32 output stays fp32 for its fp32 consumers)
        if n.op == "call_module" and n.target in self.model.solve:  # fp32 in, fp32 out: the pinned layers' types
            up = lambda v: torch.fx.node.map_aggregate(v, lambda t: t.float() if _floating(t) else t)  # noqa: E731
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            return self.model.graph32.get_submodule(n.target)(*up(args), **up(kwargs))
        args, kwargs = self._down(self.fetch_args_kwargs_from_env(n))
        if self._what(n) in self.model.fp32_ops:
            self.model.upcast[n.name] = self._what(n)
            return self._down(self._in_fp32(n, args, kwargs))
        try:
            out = getattr(self, n.op)(n.target, args, kwargs)
        except (RuntimeError, NotImplementedError) as exc:
            if not _no_kernel(exc):
                raise
            self.model.upcast[n.name] = self._what(n)
            out = self._in_fp32(n, args, kwargs)
        wider = []
        torch.fx.node.map_aggregate(out, lambda t: wider.append(t) if _floating(t) and t.dtype != self.model.dtype else t)
        if wider and n.name not in self.model.upcast and self._what(n) != "Cast":
            self.model.promoted[n.name] = self._what(n)  # a Cast to float is rounded back: the converter's fp16 Cast
        return self._down(out)

    def _attr32(self, target: str):
        obj = self.model.graph32
        for atom in target.split("."):
            obj = getattr(obj, atom)
        return obj

    def _in_fp32(self, n, args, kwargs):
        up = lambda v: torch.fx.node.map_aggregate(v, lambda t: t.float() if _floating(t) else t)  # noqa: E731
        if n.op == "call_module":
            if n.target not in self._fp32:
                self._fp32[n.target] = copy.deepcopy(self.module.get_submodule(n.target)).float()
            return self._fp32[n.target](*up(args), **up(kwargs))
        return getattr(self, n.op)(n.target, up(args), up(kwargs))


def explicit_cumsum_direction(proto):
    """A copy of `proto` whose CumSum nodes state `reverse` (ONNX's default is 0). onnx2torch 1.5.15 takes a missing
    `reverse` for 1, so the ASVP subgraph's exclusive CumSum (the adaptive rank's cumulative energies) ran backwards
    and every direction was kept; an explicit attribute means the same model to ONNX and the right op to onnx2torch."""
    if not any(n.op_type == "CumSum" and not any(a.name == "reverse" for a in n.attribute) for n in proto.graph.node):
        return proto
    import onnx

    out = copy.deepcopy(proto)
    for n in out.graph.node:
        if n.op_type == "CumSum" and not any(a.name == "reverse" for a in n.attribute):
            n.attribute.append(onnx.helper.make_attribute("reverse", 0))
    return out


class TorchFromOnnx(BaseLoader):
    """Loader: a ReducedModel for `model` (ONNX path, bytes or ModelProto) converted by onnx2torch, its weights in
    `precision` ("fp16" or "bf16") on `device`."""

    def __init__(self, model, precision: str = "fp16", device: str = "cpu", fp32_ops=frozenset()):
        if precision not in DTYPES:
            raise AsvpError(f"precision must be one of {', '.join(DTYPES)} here, got {precision!r}")
        self.model, self.precision, self.device, self.fp32_ops = model, precision, device, frozenset(fp32_ops)

    def call_impl(self) -> ReducedModel:
        o2t = _import_onnx2torch()
        proto = as_model(self.model)
        if any(is_plugin_node(n) for n in proto.graph.node):
            raise AsvpError("the model has AsvpPerturb plugin nodes, which cannot run below fp32 outside TensorRT: "
                            "defend the clean model with --mode subgraph to validate it at reduced precision")
        proto = explicit_cumsum_direction(proto)
        if self.device == "cuda" and not torch.cuda.is_available():
            raise MissingDependencyError("reduced precision on onnxrt-cuda runs through torch on CUDA, and this torch "
                                         "has no usable CUDA device")
        init = {i.name for i in proto.graph.initializer}
        inputs = [(i.name, [d.dim_value or None for d in i.type.tensor_type.shape.dim])
                  for i in proto.graph.input if i.name not in init]
        try:
            gm = o2t.convert(proto)
        except Exception as exc:
            raise AsvpError(f"onnx2torch cannot convert the model for {self.precision}: {first_line(exc)}") from None
        # onnx2torch names each module after its ONNX node, dots made slashes (ASVP's names have none)
        solve = frozenset(n.name for n in proto.graph.node if in_solve(n.name))
        # the solve keeps its fp32 constants (1e-30 guards are 0 in fp16)
        graph32 = copy.deepcopy(gm).to(device=self.device).eval() if solve else None
        gm = gm.to(device=self.device, dtype=DTYPES[self.precision]).eval()
        return ReducedModel(gm, self.precision, self.device, inputs, [o.name for o in proto.graph.output],
                            fp32_ops=self.fp32_ops, solve=solve, graph32=graph32)


class ReducedPrecisionRunner(BaseRunner):
    """Polygraphy runner over a ReducedModel (or a TorchFromOnnx loader): takes and returns float32 numpy arrays,
    computes in the model's reduced dtype."""

    def __init__(self, model, name: str | None = None):
        super().__init__(name=name, prefix="asvp-reduced-runner")
        self._model = model

    def activate_impl(self):
        self.model, _ = pg_util.invoke_if_callable(self._model)

    def get_input_metadata_impl(self):
        meta = TensorMetadata()
        for name, shape in self.model.inputs:
            meta.add(name, dtype=DataType.FLOAT32, shape=shape)
        return meta

    def infer_impl(self, feed_dict):
        m = self.model
        xs = [torch.as_tensor(np.asarray(feed_dict[name], np.float32), device=m.device).to(m.dtype)
              for name, _ in m.inputs]
        start = time.time()
        with torch.inference_mode():
            outs = m(*xs)
        self.inference_time = time.time() - start
        return OrderedDict((name, o.float().cpu().numpy()) for name, o in zip(m.outputs, outs))

    def deactivate_impl(self):
        del self.model

    @property
    def actual_provider(self) -> str:
        return f"torch {torch.__version__.split('+')[0]} {self.model.device}, {self.model.precision} (onnx2torch)"


def reduced_runner(model, backend: str, precision: str, name: str | None = None,
                   fp32_ops=frozenset()) -> ReducedPrecisionRunner:
    """The runner that stands in for `backend` at `precision` (fp16/bf16): torch on CPU for onnxrt-cpu, on CUDA for
    onnxrt-cuda. TensorRT builds its own reduced-precision engines (`asvp build`), so it is refused here.
    fp32_ops: op names (e.g. "Conv2d") computed in fp32 on rounded inputs and rounded back, named in the report:
    torch's CPU fp16 convolution accumulates in fp32 too, and without AVX512-FP16 it is ~30x slower than fp32."""
    if importlib.util.find_spec("onnx2torch") is None:  # refused before anything runs (exit 3)
        raise MissingDependencyError(f"--precision {precision} needs onnx2torch: {INSTALL_ONNX2TORCH}")
    if backend not in REDUCED_BACKENDS:
        raise AsvpError(f"--precision {precision} runs on {' or '.join(REDUCED_BACKENDS)} (through torch); backend "
                        f"{backend} builds its own reduced-precision engine instead")
    return ReducedPrecisionRunner(TorchFromOnnx(model, precision, REDUCED_BACKENDS[backend], fp32_ops),
                                  name=name or f"{backend}:{precision}")

"""The two defended paths of benchmarks/gpu.py, and the kernel alone, as rows of measurements.

  plugin path     the bundled teacher in torch; the defended run applies the Triton kernel at the node `asvp defend`
                  picks automatically (PLACEMENTS mirrors it in torch) through a forward (pre-)hook
  subgraph path   the defended ONNX model through onnxruntime-gpu or onnx2torch (pick_subgraph_runtime)
  kernel alone    the kernels on the sr teacher's defended feature (KERNEL_FEATURE), against the torch baseline

Timing and the device come from gpu_timing (read through the module, so the tests' stand-ins reach every path).
"""
from __future__ import annotations

from pathlib import Path

import torch

from asvp import api
from asvp.config import AsvpConfig
from asvp.errors import MissingDependencyError
from asvp.exporter.teachers.bundled import load_teacher
from asvp.method import asvp_exact, asvp_reference
from asvp.runtime.engines.kernels import triton_asvp
from asvp.runtime.engines.shapes import format_shape

try:
    from benchmarks import gpu_timing
except ImportError:  # run as a script (benchmarks/gpu_remote.sh): this file's folder is on sys.path
    import gpu_timing

KERNEL_FEATURE = (1, 32, 256, 256)
CONFIG = AsvpConfig(placement="inline")  # the shipped k/h/tau, inline: the perturbed feature feeds the network
# task: (the node api.defend picks automatically, the torch module that consumes/produces that tensor, which side)
PLACEMENTS = {
    "sr": ("/Add", "upsample", "input"),  # f + body_tail(body(f)), read only by the upsampler
    "lowlight": ("/mid/mid.2/Relu", "mid", "output"),  # the U-Net bottleneck, C = 96
    "underwater": ("/Relu", "tail", "input"),  # relu(body(...)), read only by the tail conv
    "dehaze": ("/Concat_2", "c5", "input"),  # cat([x1, x2, x3, x4]), C = 64, read only by c5
    "derain": ("/Relu_1", "tail", "input"),
}


def rel_error(out: torch.Tensor, feat: torch.Tensor, cfg: AsvpConfig) -> float:
    ref = asvp_reference(feat.detach().cpu(), cfg)
    return float((out.detach().cpu().double() - ref).norm() / ref.norm())


# ---- plugin path: torch teacher + Triton kernel at the node -------------------------------------------------------

def kernel_fn(cfg: AsvpConfig):
    args = triton_asvp.config_args(cfg)
    return lambda feat: triton_asvp.asvp_triton(feat, *args)


def hooked(model, task: str, perturb):
    """Install `perturb` at the task's node (PLACEMENTS); returns the hook handle."""
    _, module, side = PLACEMENTS[task]
    mod = model.get_submodule(module)
    if side == "input":
        return mod.register_forward_pre_hook(lambda m, args: (perturb(args[0]),) + tuple(args[1:]))
    return mod.register_forward_hook(lambda m, args, out: perturb(out))


def plugin_rows(task: str, shapes, iters: int, warmup: int, errors: list) -> list:
    model, _ = load_teacher(task)
    model = model.to(gpu_timing.DEVICE).eval()
    perturb = kernel_fn(CONFIG)
    rows = []
    for shape in shapes:
        x = torch.rand(shape, device=gpu_timing.DEVICE)
        row = {"task": task, "shape": format_shape(shape), "path": "plugin", "runtime": "torch + Triton kernel",
               "node": PLACEMENTS[task][0]}
        try:
            with torch.no_grad():
                seen = {}

                def capture(feat):
                    seen["feat"], seen["out"] = feat.clone(), perturb(feat)
                    return seen["out"]

                handle = hooked(model, task, capture)
                model(x)
                handle.remove()
                row["channels"] = int(seen["feat"].shape[1])
                row["kernel_rel_err"] = rel_error(seen["out"][:1], seen["feat"][:1], CONFIG)
                row["clean"] = gpu_timing.measure(lambda: model(x), iters, warmup)
                handle = hooked(model, task, perturb)
                try:
                    row["defended"] = gpu_timing.measure(lambda: model(x), iters, warmup)
                finally:
                    handle.remove()
            row["ratio"] = gpu_timing.ratios(row["clean"], row["defended"])
        except Exception as exc:  # one failed shape must not lose the others
            row["error"] = gpu_timing.one_line(exc)
            errors.append(f"plugin {task} {format_shape(shape)}: {row['error']}")
        rows.append(row)
    return rows


# ---- subgraph path: the defended ONNX on CUDA ----------------------------------------------------------------------

def ort_cuda_available() -> bool:
    try:
        import onnxruntime as ort
    except Exception:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


def pick_subgraph_runtime(choice: str) -> str | None:
    if choice == "none":
        return None
    if choice in ("auto", "onnxruntime-gpu") and ort_cuda_available():
        return "onnxruntime-gpu"
    if choice == "onnxruntime-gpu":
        raise MissingDependencyError("onnxruntime-gpu with a working CUDAExecutionProvider is not installed")
    try:
        import onnx2torch  # noqa: F401
    except Exception as exc:
        raise MissingDependencyError(f"onnx2torch is not importable ({type(exc).__name__}): carry its wheel "
                                     "(benchmarks/gpu_remote.sh) or pass --subgraph-runtime none") from None
    return "onnx2torch"


def onnx2torch_module(path: str):
    import onnx
    from onnx2torch import convert

    return convert(onnx.load(path)).to(gpu_timing.DEVICE).eval()


def require_onnx2torch() -> None:
    """MissingDependencyError, with the reason, when onnx2torch is not importable (it is optional)."""
    try:
        import onnx2torch  # noqa: F401
    except Exception as exc:
        raise MissingDependencyError(f"onnx2torch is not importable ({type(exc).__name__}); carry its wheel "
                                     "(benchmarks/gpu_remote.sh)") from None


def torch_runner(net, x: torch.Tensor):
    def run():
        with torch.no_grad():
            return net(x)

    return run


def ort_runner(path: str, x: torch.Tensor, cuda_graph: bool = False):
    """onnxruntime-gpu with IO binding on torch CUDA buffers (no host copies). UNVERIFIED: never run here."""
    import numpy as np
    import onnxruntime as ort

    opts = {"enable_cuda_graph": "1"} if cuda_graph else {}
    sess = ort.InferenceSession(path, providers=[("CUDAExecutionProvider", opts)])
    if sess.get_providers()[0] != "CUDAExecutionProvider":
        raise MissingDependencyError(f"onnxruntime fell back to {sess.get_providers()[0]}")
    inp, out = sess.get_inputs()[0].name, sess.get_outputs()[0].name
    probe = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    y_shape = probe.run(None, {inp: np.zeros(tuple(x.shape), np.float32)})[0].shape
    y = torch.empty(y_shape, device=gpu_timing.DEVICE)
    binding = sess.io_binding()
    binding.bind_input(inp, "cuda", 0, np.float32, tuple(x.shape), x.data_ptr())
    binding.bind_output(out, "cuda", 0, np.float32, tuple(y.shape), y.data_ptr())

    def run():
        sess.run_with_iobinding(binding)
        return y

    return run


def ort_measure(path: str, x: torch.Tensor, iters: int, warmup: int) -> dict:
    """gpu_timing.measure's figures for onnxruntime-gpu, the CUDA graph being onnxruntime's own."""
    fn = ort_runner(path, x)
    res = gpu_timing.profile_forward(fn)
    res["eager_us"] = gpu_timing.wall_us(fn, iters, warmup)
    try:  # onnxruntime's own CUDA graph (torch cannot capture onnxruntime's stream)
        g = ort_runner(path, x, cuda_graph=True)
        g()
        res.update(captured=True, graph_us=gpu_timing.wall_us(g, iters, warmup), error=None)
    except Exception as exc:
        res.update(captured=False, graph_us=None, error=gpu_timing.one_line(exc))
    return res


def subgraph_rows(task: str, shapes, runtime: str, iters: int, warmup: int, work: Path, errors: list) -> list:
    clean = work / f"{task}.onnx"
    defended = work / f"{task}.inline.onnx"
    api.export(task, clean, force=True)  # the work folder is ours: a rerun rewrites it
    info = api.defend(clean, defended, config=CONFIG, force=True)
    node = info.nodes[0]["node"]
    if node != PLACEMENTS[task][0]:
        errors.append(f"{task}: api.defend picked {node}, the plugin path hooks {PLACEMENTS[task][0]}")
    nets = {}
    if runtime == "onnx2torch":
        nets = {"clean": onnx2torch_module(str(clean)), "defended": onnx2torch_module(str(defended))}
    rows = []
    for shape in shapes:
        x = torch.rand(shape, device=gpu_timing.DEVICE)
        row = {"task": task, "shape": format_shape(shape), "path": "subgraph", "runtime": runtime, "node": node,
               "channels": info.nodes[0]["channels"]}
        try:
            for name, path in (("clean", clean), ("defended", defended)):
                if runtime == "onnx2torch":
                    row[name] = gpu_timing.measure(torch_runner(nets[name], x), iters, warmup)
                else:
                    row[name] = ort_measure(str(path), x, iters, warmup)
            row["ratio"] = gpu_timing.ratios(row["clean"], row["defended"])
        except Exception as exc:
            row["error"] = gpu_timing.one_line(exc)
            errors.append(f"subgraph {task} {format_shape(shape)}: {row['error']}")
        rows.append(row)
    return rows


# ---- the kernel alone ------------------------------------------------------------------------------------------------

def sr_feature() -> torch.Tensor:
    """The sr teacher's defended tensor for a KERNEL_FEATURE-sized input (a real network's feature)."""
    model, _ = load_teacher("sr")
    model = model.to(gpu_timing.DEVICE).eval()
    seen = {}
    handle = hooked(model, "sr", lambda f: seen.setdefault("feat", f.clone()))
    with torch.no_grad():
        model(torch.rand(1, 3, KERNEL_FEATURE[2], KERNEL_FEATURE[3], device=gpu_timing.DEVICE))
    handle.remove()
    feat = seen["feat"].contiguous()
    assert tuple(feat.shape) == KERNEL_FEATURE, feat.shape
    return feat


def kernel_rows(iters: int, warmup: int, errors: list) -> list:
    """The kernels on a real-network-like [1, 32, 256, 256] feature: the sr teacher's defended tensor."""
    feat = sr_feature()
    args = triton_asvp.config_args(CONFIG)
    out = torch.empty_like(feat)
    candidates = [
        ("asvp_triton (gram -> eig -> apply)", lambda: triton_asvp.asvp_triton(feat, *args, out=out)),
        ("asvp_triton_fused (one launch, AOT kernel)", lambda: triton_asvp.asvp_triton_fused(feat, *args, out=out)),
        ("torch asvp_exact (float64 eigh; old plugin kernel)", lambda: out.copy_(asvp_exact(feat, CONFIG))),
    ]
    rows = []
    for name, fn in candidates:  # asvp_exact last: its failed capture is the riskiest step
        row = {"kernel": name, "feature": format_shape(KERNEL_FEATURE)}
        try:
            fn()
            gpu_timing.sync()
            row["rel_err"] = rel_error(out, feat, CONFIG)
            row.update(gpu_timing.measure(fn, iters, warmup))
        except Exception as exc:
            row["error"] = gpu_timing.one_line(exc)
            errors.append(f"kernel {name}: {row['error']}")
        rows.append(row)
    return rows

"""GPU benchmark of the ASVP defence (issue 11, part 4): what one defended node costs on a CUDA device.

    python benchmarks/gpu.py                      # 5 teachers x 4 shapes, both paths (estimated 3-5 min on one H100)
    python benchmarks/gpu.py --quick              # 2 shapes, fewer iterations (a dry run)
    python benchmarks/gpu.py --tasks sr --shapes 1x3x256x256

Writes benchmarks/results/gpu-<device>.json and gpu-<device>.md (--out-dir to change), and prints the markdown.
Without a CUDA device it refuses in one line with exit status 3 and writes nothing.

Per bundled teacher and input shape (for sr the shape is the low-resolution input), clean against defended, one
node, inline placement, the node `asvp defend` picks automatically (PLACEMENTS below mirrors it in torch):

  plugin path     the teacher in torch on CUDA; the defended run applies `asvp_triton` (the Triton kernels) to
                  the node's tensor through a forward (pre-)hook
  subgraph path   the defended ONNX model (api.defend, AsvpConfig(placement="inline")) on CUDA through
                  onnxruntime-gpu when its CUDA provider works, else through onnx2torch (labelled so). TensorRT is
                  not used here (the GPU image this was written for has none).

For each: CUDA kernels per forward and busy time (sum of kernel durations from torch.profiler, so launch gaps are
excluded), host wall time per forward eager and replayed from a CUDA graph, and whether capture succeeded. Also
the kernel alone on a [1, 32, 256, 256] feature (target <= 50 us), the fused one-launch variant, the torch
`asvp_exact` baseline, and the kernels' error against the float64 reference on the features seen.
fp32 throughout, TF32 off; then the reduced-precision section (benchmarks/gpu_precision.py, issue 26.6): the
Triton kernel in fp16/bf16 at three activation scales, and the defended models through onnx2torch in fp32/fp16/
bf16 against float64 (skipped with the reason when onnx2torch is not importable): accuracy, inf/NaN, timing.
Nothing here has been run yet: no GPU was available when it was written (the figures are pending).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import torch

from asvp import api
from asvp.config import AsvpConfig
from asvp.errors import AsvpError, MissingDependencyError
from asvp.exporter.teachers.bundled import load_teacher
from asvp.tasks import TASKS
from asvp.io import write_text_atomic
from asvp.method import asvp_exact, asvp_reference
from asvp.runtime.engines.kernels import triton_asvp, triton_env
from asvp.runtime.engines.shapes import format_shape, parse_shape

try:
    from benchmarks import gpu_precision
except ImportError:  # run as a script (benchmarks/gpu_remote.sh): this file's folder is on sys.path
    import gpu_precision

PROG = "gpu.py"
SHAPES = ("1x3x128x128", "1x3x256x256", "8x3x256x256", "1x3x540x960")
QUICK_SHAPES = ("1x3x128x128", "1x3x256x256")
KERNEL_FEATURE = (1, 32, 256, 256)
KERNEL_TARGET_US = 50.0
# issue 11's targets, busy time defended / clean at 1x3x256x256 (set for an H100): plugin path, subgraph path
TARGET_SHAPE = "1x3x256x256"
PATH_TARGETS = {"plugin": 1.05, "subgraph": 1.3}
CONFIG = AsvpConfig(placement="inline")  # the shipped k/h/tau, inline: the perturbed feature feeds the network
# task: (the node api.defend picks automatically, the torch module that consumes/produces that tensor, which side)
PLACEMENTS = {
    "sr": ("/Add", "upsample", "input"),  # f + body_tail(body(f)), read only by the upsampler
    "lowlight": ("/mid/mid.2/Relu", "mid", "output"),  # the U-Net bottleneck, C = 96
    "underwater": ("/Relu", "tail", "input"),  # relu(body(...)), read only by the tail conv
    "dehaze": ("/Concat_2", "c5", "input"),  # cat([x1, x2, x3, x4]), C = 64, read only by c5
    "derain": ("/Relu_1", "tail", "input"),
}
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
DEVICE = "cuda"  # tests swap in "cpu" (with Triton's interpreter and stand-in timers) to run the pipeline


# ---- arguments and environment -----------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description="GPU cost of the ASVP defence (plugin and subgraph paths).")
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated bundled teachers (default: all five)")
    p.add_argument("--shapes", default=None, help=f"comma-separated input shapes NxCxHxW (default: {','.join(SHAPES)})")
    p.add_argument("--iters", type=int, default=None, help="timed forwards per measurement (default 30; --quick 10)")
    p.add_argument("--warmup", type=int, default=5, help="untimed forwards before each timing (default 5)")
    p.add_argument("--subgraph-runtime", choices=("auto", "onnxruntime-gpu", "onnx2torch", "none"), default="auto",
                   help="how the defended ONNX runs on CUDA (auto: onnxruntime-gpu if its CUDA provider works, "
                        "else onnx2torch)")
    p.add_argument("--out-dir", default=str(DEFAULT_OUT), help="where gpu-<device>.json/.md go")
    p.add_argument("--quick", action="store_true", help=f"shapes {','.join(QUICK_SHAPES)} and 10 iterations")
    args = p.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        raise AsvpError(f"unknown task(s) {', '.join(bad) or '(none)'}; choose from {', '.join(TASKS)}")
    shapes = []
    for text in (args.shapes.split(",") if args.shapes else (QUICK_SHAPES if args.quick else SHAPES)):
        shape = parse_shape(text.strip(), "--shapes entry")
        if len(shape) != 4 or shape[1] != 3:
            raise AsvpError(f"--shapes entry {text.strip()!r} must be NxCxHxW with C=3")
        shapes.append(shape)
    iters = args.iters if args.iters is not None else (10 if args.quick else 30)
    if iters < 1 or args.warmup < 0:
        raise AsvpError("--iters must be >= 1 and --warmup >= 0")
    for t in tasks:
        multiple = TASKS[t].size_multiple
        for s in shapes:
            if s[2] % multiple or s[3] % multiple:
                raise AsvpError(f"{t} needs H and W multiples of {multiple}; {format_shape(s)} is not")
    args.tasks, args.shapes, args.iters = tasks, shapes, iters
    return args


def require_cuda() -> None:
    if not torch.cuda.is_available():
        build = "a CPU-only torch build" if torch.version.cuda is None else f"torch built for CUDA {torch.version.cuda}"
        raise MissingDependencyError(f"no CUDA device visible to torch ({build}); run this on a GPU machine "
                                     "(see benchmarks/gpu_remote.sh)")


def device_slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3' (the results' file name)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "cuda"


def environment() -> dict:
    import triton

    env = {"device": torch.cuda.get_device_name(0), "python": platform.python_version(), "torch": torch.__version__,
           "cuda": torch.version.cuda, "triton": triton.__version__,
           "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    props = torch.cuda.get_device_properties(0)
    env.update(capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
               memory_gib=round(props.total_memory / 2**30, 1))
    try:
        import subprocess

        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        env["driver"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except Exception:
        env["driver"] = None
    for mod in ("onnxruntime", "onnx2torch", "onnx"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception:
            env[mod] = None
    return env


# ---- measurement primitives (CUDA) ---------------------------------------------------------------------------------

def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def summarize_events(events, reps: int) -> dict:
    """Kernels and busy time per forward from torch.profiler events (CUDA-side ones only; memcpy/memset apart)."""
    cuda = torch.autograd.DeviceType.CUDA
    kernels = memops = 0
    busy = 0.0
    for e in events:
        if getattr(e, "device_type", None) != cuda:
            continue
        if e.name.startswith(("Memcpy", "Memset", "cudaMemcpy", "cudaMemset")):
            memops += 1
            continue
        kernels += 1
        busy += e.time_range.elapsed_us()
    return {"kernels": kernels / reps, "memops": memops / reps, "busy_us": busy / reps}


def profile_forward(fn, reps: int = 3) -> dict:
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    return summarize_events(prof.events(), reps)


def wall_us(fn, iters: int, warmup: int) -> float:
    """Mean host wall time per call over `iters` back-to-back calls, synchronised before and after."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters * 1e6


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:200]


def graph_us(fn, iters: int, warmup: int) -> dict:
    """Capture fn() in a CUDA graph and time replays; {'captured': bool, 'graph_us': float|None, 'error': str|None}."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            fn()
    except Exception as exc:
        torch.cuda.synchronize()
        return {"captured": False, "graph_us": None, "error": one_line(exc)}
    return {"captured": True, "graph_us": wall_us(graph.replay, iters, warmup), "error": None}


def measure(fn, iters: int, warmup: int) -> dict:
    res = profile_forward(fn)
    res["eager_us"] = wall_us(fn, iters, warmup)
    res.update(graph_us(fn, iters, warmup))
    return res


def ratios(clean: dict, defended: dict) -> dict:
    def r(key):
        a, b = clean.get(key), defended.get(key)
        return round(b / a, 4) if a and b else None

    return {"busy": r("busy_us"), "eager": r("eager_us"), "graph": r("graph_us")}


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
    model = model.to(DEVICE).eval()
    perturb = kernel_fn(CONFIG)
    rows = []
    for shape in shapes:
        x = torch.rand(shape, device=DEVICE)
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
                row["clean"] = measure(lambda: model(x), iters, warmup)
                handle = hooked(model, task, perturb)
                try:
                    row["defended"] = measure(lambda: model(x), iters, warmup)
                finally:
                    handle.remove()
            row["ratio"] = ratios(row["clean"], row["defended"])
        except Exception as exc:  # one failed shape must not lose the others
            row["error"] = one_line(exc)
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

    return convert(onnx.load(path)).to(DEVICE).eval()


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
    y = torch.empty(y_shape, device=DEVICE)
    binding = sess.io_binding()
    binding.bind_input(inp, "cuda", 0, np.float32, tuple(x.shape), x.data_ptr())
    binding.bind_output(out, "cuda", 0, np.float32, tuple(y.shape), y.data_ptr())

    def run():
        sess.run_with_iobinding(binding)
        return y

    return run


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
        x = torch.rand(shape, device=DEVICE)
        row = {"task": task, "shape": format_shape(shape), "path": "subgraph", "runtime": runtime, "node": node,
               "channels": info.nodes[0]["channels"]}
        try:
            for name, path in (("clean", clean), ("defended", defended)):
                if runtime == "onnx2torch":
                    row[name] = measure(torch_runner(nets[name], x), iters, warmup)
                else:
                    fn = ort_runner(str(path), x)
                    res = profile_forward(fn)
                    res["eager_us"] = wall_us(fn, iters, warmup)
                    try:  # onnxruntime's own CUDA graph (torch cannot capture onnxruntime's stream)
                        g = ort_runner(str(path), x, cuda_graph=True)
                        g()
                        res.update(captured=True, graph_us=wall_us(g, iters, warmup), error=None)
                    except Exception as exc:
                        res.update(captured=False, graph_us=None, error=one_line(exc))
                    row[name] = res
            row["ratio"] = ratios(row["clean"], row["defended"])
        except Exception as exc:
            row["error"] = one_line(exc)
            errors.append(f"subgraph {task} {format_shape(shape)}: {row['error']}")
        rows.append(row)
    return rows


# ---- the kernel alone ------------------------------------------------------------------------------------------------

def sr_feature() -> torch.Tensor:
    """The sr teacher's defended tensor for a KERNEL_FEATURE-sized input (a real network's feature)."""
    model, _ = load_teacher("sr")
    model = model.to(DEVICE).eval()
    seen = {}
    handle = hooked(model, "sr", lambda f: seen.setdefault("feat", f.clone()))
    with torch.no_grad():
        model(torch.rand(1, 3, KERNEL_FEATURE[2], KERNEL_FEATURE[3], device=DEVICE))
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
            sync()
            row["rel_err"] = rel_error(out, feat, CONFIG)
            row.update(measure(fn, iters, warmup))
        except Exception as exc:
            row["error"] = one_line(exc)
            errors.append(f"kernel {name}: {row['error']}")
        rows.append(row)
    return rows


# ---- results ---------------------------------------------------------------------------------------------------------

def _f(value, fmt="{:.1f}"):
    return "n/a" if value is None else fmt.format(value)


def render_markdown(res: dict) -> str:
    env, s = res["environment"], res["settings"]
    lines = [f"# GPU benchmark: {env['device']}", "",
             f"Measured by `python benchmarks/gpu.py` on {env['date']}: {env['device']} (compute capability "
             f"{env.get('capability')}, {env.get('sms')} SMs), driver {env.get('driver') or 'unknown'}; torch "
             f"{env['torch']} (CUDA {env['cuda']}), Triton {env['triton']}, onnxruntime {env.get('onnxruntime')}, "
             f"onnx2torch {env.get('onnx2torch')}. fp32, TF32 off; {s['iters']} timed forwards after {s['warmup']} "
             f"warm-up ones. ASVP config: {s['config']}.", "",
             "Busy = sum of CUDA kernel durations per forward (torch.profiler; launch gaps excluded). Wall = host "
             "time per forward, eager or replayed from a CUDA graph. Ratios are defended / clean.", ""]
    lines += ["## The kernel alone", "",
              f"Target: <= {KERNEL_TARGET_US:.0f} us per {format_shape(KERNEL_FEATURE)} feature.", "",
              "| kernel | launches | busy (us) | eager wall (us) | graph replay (us) | capture | rel. error vs float64 |",
              "|---|---|---|---|---|---|---|"]
    for r in res["kernel"]:
        if "error" in r and "kernels" not in r:
            lines.append(f"| {r['kernel']} | failed: {r['error']} | | | | | |")
            continue
        cap = "yes" if r.get("captured") else f"no ({r.get('error')})"
        lines.append(f"| {r['kernel']} | {_f(r.get('kernels'), '{:.0f}')} | {_f(r.get('busy_us'))} | "
                     f"{_f(r.get('eager_us'))} | {_f(r.get('graph_us'))} | {cap} | {_f(r.get('rel_err'), '{:.1e}')} |")
    for path, title in (("plugin", "Plugin path: torch teacher, Triton kernel at the node (inline)"),
                        ("subgraph", "Subgraph path: the defended ONNX model (inline)")):
        rows = [r for r in res["rows"] if r["path"] == path]
        if not rows:
            continue
        runtimes = sorted({r["runtime"] for r in rows})
        lines += ["", f"## {title}", "", f"Runtime: {', '.join(runtimes)}.", "",
                  "| task | node (C) | input | kernels clean -> defended | busy clean (us) | busy ratio | "
                  "eager ratio | graph ratio | captured clean / defended |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            head = f"| {r['task']} | {r['node']} ({r.get('channels', '?')}) | {r['shape']} |"
            if "error" in r:
                lines.append(f"{head} failed: {r['error']} | | | | | |")
                continue
            c, d, q = r["clean"], r["defended"], r["ratio"]
            lines.append(f"{head} {c['kernels']:.0f} -> {d['kernels']:.0f} | {c['busy_us']:.1f} | "
                         f"{_f(q['busy'], '{:.3f}x')} | {_f(q['eager'], '{:.3f}x')} | {_f(q['graph'], '{:.3f}x')} | "
                         f"{'yes' if c.get('captured') else 'no'} / {'yes' if d.get('captured') else 'no'} |")
        errs = [r for r in rows if r.get("kernel_rel_err") is not None]
        if errs:
            worst = max(errs, key=lambda r: r["kernel_rel_err"])
            lines += ["", f"Kernel vs float64 reference on the features seen (first sample): max relative error "
                          f"{worst['kernel_rel_err']:.1e} ({worst['task']} {worst['shape']})."]
    if res.get("precision"):
        lines += gpu_precision.markdown(res["precision"])
    if res["errors"]:
        lines += ["", "## Problems during the run", ""] + [f"- {e}" for e in res["errors"]]
    return "\n".join(lines) + "\n"


def summary_markdown(res: dict) -> str:
    """One device's figures against issue 11's targets, for BENCHMARKS.md's GPU section: the three-launch kernel
    alone (busy us per [1, 32, 256, 256] feature), and per teacher the plugin and subgraph paths' busy ratio at
    1x3x256x256; with capture and the run's problems."""
    env = res["environment"]
    lines = [f"**{env['device']}** (compute capability {env.get('capability')}), driver "
             f"{env.get('driver') or 'unknown'}, torch {env['torch']} (CUDA {env['cuda']}), Triton {env['triton']}; "
             f"measured {env['date']} by `benchmarks/gpu.py`. Targets were set for an H100.", "",
             "| what | busy | target | verdict | CUDA graph capture |", "|---|---|---|---|---|"]

    def verdict(value, target):
        return "not measured" if value is None else ("met" if value <= target else "**not met**")

    for r in res["kernel"]:
        if r["kernel"].startswith("asvp_triton ("):
            busy = None if "error" in r and "kernels" not in r else r.get("busy_us")
            cap = "yes" if r.get("captured") else f"no ({r.get('error')})"
            lines.append(f"| kernel alone, {r['feature']} | {_f(busy)} us | <= {KERNEL_TARGET_US:.0f} us | "
                         f"{verdict(busy, KERNEL_TARGET_US)} | {cap} |")
    for path, target in PATH_TARGETS.items():
        for r in res["rows"]:
            if r["path"] != path or r["shape"] != TARGET_SHAPE:
                continue
            busy = None if "error" in r else r["ratio"]["busy"]
            cap = "n/a" if "error" in r else "yes" if r["defended"].get("captured") else "no"
            lines.append(f"| {path} path ({r['runtime']}), {r['task']}, {r['shape']} | {_f(busy, '{:.3f}x')} | "
                         f"<= {target}x | {verdict(busy, target)} | {cap} |")
    if res["errors"]:
        lines += ["", f"Problems during the run: {len(res['errors'])} (listed in the device's Markdown file)."]
    return "\n".join(lines) + "\n"


def write_results(res: dict, out_dir) -> tuple[Path, Path]:
    """gpu-<device>.json and .md in out_dir, each written atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"gpu-{device_slug(res['environment']['device'])}"
    js = write_text_atomic(out_dir / f"{stem}.json", json.dumps(res, indent=2, sort_keys=True) + "\n")
    md = write_text_atomic(out_dir / f"{stem}.md", render_markdown(res))
    return Path(js), Path(md)


def run(args) -> dict:
    require_cuda()
    triton_env.require_triton()
    runtime = pick_subgraph_runtime(args.subgraph_runtime)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    res = {"environment": environment(), "errors": [], "rows": [],
           "settings": {"iters": args.iters, "warmup": args.warmup, "tasks": args.tasks,
                        "shapes": [format_shape(s) for s in args.shapes], "subgraph_runtime": runtime,
                        "config": CONFIG.to_dict()}}
    t0 = time.perf_counter()
    for task in args.tasks:
        print(f"[{time.perf_counter() - t0:6.1f} s] {task}: plugin path", file=sys.stderr, flush=True)
        res["rows"] += plugin_rows(task, args.shapes, args.iters, args.warmup, res["errors"])
    if runtime:
        with tempfile.TemporaryDirectory(prefix="asvp-gpu-") as work:
            for task in args.tasks:
                print(f"[{time.perf_counter() - t0:6.1f} s] {task}: subgraph path ({runtime})", file=sys.stderr,
                      flush=True)
                res["rows"] += subgraph_rows(task, args.shapes, runtime, args.iters, args.warmup, Path(work),
                                             res["errors"])
    print(f"[{time.perf_counter() - t0:6.1f} s] the kernel alone", file=sys.stderr, flush=True)
    res["kernel"] = kernel_rows(args.iters, args.warmup, res["errors"])
    print(f"[{time.perf_counter() - t0:6.1f} s] reduced precision (fp16/bf16)", file=sys.stderr, flush=True)
    res["precision"] = precision_section(args, res["errors"])
    res["settings"]["seconds"] = round(time.perf_counter() - t0, 1)
    return res


def require_onnx2torch() -> None:
    """MissingDependencyError, with the reason, when onnx2torch is not importable (it is optional)."""
    try:
        import onnx2torch  # noqa: F401
    except Exception as exc:
        raise MissingDependencyError(f"onnx2torch is not importable ({type(exc).__name__}); carry its wheel "
                                     "(benchmarks/gpu_remote.sh)") from None


def precision_section(args, errors: list) -> dict:
    """issue 26.6: the kernel in fp16/bf16 on the sr feature, and each defended model in fp32/fp16/bf16 (onnx2torch)
    against float64 at the first shape (skipped, with the reason, without onnx2torch)."""
    kern = gpu_precision.kernel_rows(sr_feature(), kernel_fn(CONFIG), CONFIG, measure, args.iters, args.warmup,
                                     errors)
    try:
        require_onnx2torch()
    except MissingDependencyError as exc:
        return {"kernel": kern, "models": [{"skipped": str(exc)}]}
    with tempfile.TemporaryDirectory(prefix="asvp-gpu-half-") as work:
        defended = {}
        for task in args.tasks:
            clean, path = Path(work) / f"{task}.onnx", Path(work) / f"{task}.inline.onnx"
            api.export(task, clean, force=True)
            api.defend(clean, path, config=CONFIG, force=True)
            defended[task] = path
        models = gpu_precision.model_rows(defended, args.shapes[0], DEVICE, onnx2torch_module, measure, args.iters,
                                          args.warmup, errors)
    return {"kernel": kern, "models": models}


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
        res = run(args)
        js, md = write_results(res, args.out_dir)
    except AsvpError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(md.read_text())
    print(f"wrote {js} and {md}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

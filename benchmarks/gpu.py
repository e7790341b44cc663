"""GPU benchmark of the ASVP defence (issue 11, part 4): what one defended node costs on a CUDA device.

    python benchmarks/gpu.py                      # 5 teachers x 4 shapes, both paths (estimated 3-5 min on one H100)
    python benchmarks/gpu.py --quick              # 2 shapes, fewer iterations (a dry run)
    python benchmarks/gpu.py --tasks sr --shapes 1x3x256x256

Writes benchmarks/results/gpu-<device>.json and gpu-<device>.md (--out-dir to change), and prints the markdown.
Without a CUDA device it refuses in one line with exit status 3 and writes nothing.

Per bundled teacher and input shape (for sr the shape is the low-resolution input), clean against defended, one
node, inline placement, the node `asvp defend` picks automatically (gpu_paths.PLACEMENTS mirrors it in torch):

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

This file is the command (arguments, environment, the run, result files); beside it gpu_timing.py measures,
gpu_paths.py builds the plugin/subgraph/kernel rows, gpu_report.py writes the Markdown, gpu_precision.py the fp16/bf16
part. It runs as a script (benchmarks/gpu_remote.sh), importing its siblings from its own folder.
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
from asvp.errors import AsvpError, MissingDependencyError
from asvp.tasks import TASKS
from asvp.io import write_text_atomic
from asvp.runtime.engines.kernels import triton_env
from asvp.runtime.engines.shapes import format_shape, parse_shape

try:
    from benchmarks import gpu_paths, gpu_precision, gpu_report, gpu_timing
except ImportError:  # run as a script (benchmarks/gpu_remote.sh): this file's folder is on sys.path
    import gpu_paths
    import gpu_precision
    import gpu_report
    import gpu_timing

PROG = "gpu.py"
SHAPES = ("1x3x128x128", "1x3x256x256", "8x3x256x256", "1x3x540x960")
QUICK_SHAPES = ("1x3x128x128", "1x3x256x256")
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


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


# ---- results and the run ---------------------------------------------------------------------------------------------

def write_results(res: dict, out_dir) -> tuple[Path, Path]:
    """gpu-<device>.json and .md in out_dir, each written atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"gpu-{device_slug(res['environment']['device'])}"
    js = write_text_atomic(out_dir / f"{stem}.json", json.dumps(res, indent=2, sort_keys=True) + "\n")
    md = write_text_atomic(out_dir / f"{stem}.md", gpu_report.render_markdown(res))
    return Path(js), Path(md)


def run(args) -> dict:
    require_cuda()
    triton_env.require_triton()
    runtime = gpu_paths.pick_subgraph_runtime(args.subgraph_runtime)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    res = {"environment": environment(), "errors": [], "rows": [],
           "settings": {"iters": args.iters, "warmup": args.warmup, "tasks": args.tasks,
                        "shapes": [format_shape(s) for s in args.shapes], "subgraph_runtime": runtime,
                        "config": gpu_paths.CONFIG.to_dict()}}
    t0 = time.perf_counter()
    for task in args.tasks:
        print(f"[{time.perf_counter() - t0:6.1f} s] {task}: plugin path", file=sys.stderr, flush=True)
        res["rows"] += gpu_paths.plugin_rows(task, args.shapes, args.iters, args.warmup, res["errors"])
    if runtime:
        with tempfile.TemporaryDirectory(prefix="asvp-gpu-") as work:
            for task in args.tasks:
                print(f"[{time.perf_counter() - t0:6.1f} s] {task}: subgraph path ({runtime})", file=sys.stderr,
                      flush=True)
                res["rows"] += gpu_paths.subgraph_rows(task, args.shapes, runtime, args.iters, args.warmup,
                                                       Path(work), res["errors"])
    print(f"[{time.perf_counter() - t0:6.1f} s] the kernel alone", file=sys.stderr, flush=True)
    res["kernel"] = gpu_paths.kernel_rows(args.iters, args.warmup, res["errors"])
    print(f"[{time.perf_counter() - t0:6.1f} s] reduced precision (fp16/bf16)", file=sys.stderr, flush=True)
    res["precision"] = precision_section(args, res["errors"])
    res["settings"]["seconds"] = round(time.perf_counter() - t0, 1)
    return res


def precision_section(args, errors: list) -> dict:
    """issue 26.6: the kernel in fp16/bf16 on the sr feature, and each defended model in fp32/fp16/bf16 (onnx2torch)
    against float64 at the first shape (skipped, with the reason, without onnx2torch)."""
    cfg = gpu_paths.CONFIG
    kern = gpu_precision.kernel_rows(gpu_paths.sr_feature(), gpu_paths.kernel_fn(cfg), cfg, gpu_timing.measure,
                                     args.iters, args.warmup, errors)
    try:
        gpu_paths.require_onnx2torch()
    except MissingDependencyError as exc:
        return {"kernel": kern, "models": [{"skipped": str(exc)}]}
    with tempfile.TemporaryDirectory(prefix="asvp-gpu-half-") as work:
        defended = {}
        for task in args.tasks:
            clean, path = Path(work) / f"{task}.onnx", Path(work) / f"{task}.inline.onnx"
            api.export(task, clean, force=True)
            api.defend(clean, path, config=gpu_paths.CONFIG, force=True)
            defended[task] = path
        models = gpu_precision.model_rows(defended, args.shapes[0], gpu_timing.DEVICE, gpu_paths.onnx2torch_module,
                                          gpu_timing.measure, args.iters, args.warmup, errors)
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

"""The measurement primitives of benchmarks/gpu.py: CUDA kernels and busy time per forward (torch.profiler), host wall
time eager and replayed from a CUDA graph, and the defended / clean ratios.

The other gpu_* modules read DEVICE and call measure() through this module (`gpu_timing.measure`), so the tests can
swap in "cpu" and a stand-in timer in one place.
"""
from __future__ import annotations

import time

import torch

DEVICE = "cuda"  # tests swap in "cpu" (with Triton's interpreter and stand-in timers) to run the pipeline


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

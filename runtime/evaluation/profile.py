"""`asvp profile`: latency, throughput and memory of a clean model and (optionally) its defended version.

Both models run in one process on one backend, INTERLEAVED: every iteration runs clean and defended back to
back, alternating which goes first (ABBA...), so machine noise hits both alike; the defended/clean ratio comes
from that one run (runtime.evaluation.timing says how latency is timed and summarised). Ratios:
p50(defended)/p50(clean), mean/mean, and the median of the per-iteration ratios.

Peak memory (`memory=`; runtime.evaluation.memory says how it is measured):
  "subprocess" (default): each model loaded and run in a fresh Python process (order-independent).
  "inprocess": measured in this process around each model's load + first inference (cheaper, order-dependent).
  "off": not measured.
`precision` "fp16"/"bf16" times the models converted to that precision (runtime/engines/reduced.py: torch through
onnx2torch, node by node, so its latency is the converted model's, not an engine's); peak memory is then measured
in this process (the fresh-process measure runs ONNX Runtime).
The result and its rendering: runtime.evaluation.profile_result.
"""
from __future__ import annotations

import os

import numpy as np

from asvp.constants import MEMORY_MODES, PROFILE_ITERS as DEFAULT_ITERS, PROFILE_SHAPE as DEFAULT_SHAPE
from asvp.constants import PROFILE_WARMUP as DEFAULT_WARMUP
from asvp.errors import AsvpError
from asvp.io import require_file
from asvp.onnx_utils import image_io, load_model
from asvp.runtime.engines import backends
from asvp.runtime.engines.sidecar import is_engine_path
from asvp.runtime.evaluation.memory import PeakMemory, device_memory_mb, measure_memory_subprocess
from asvp.runtime.evaluation.profile_result import ModelProfile, ProfileResult
from asvp.runtime.evaluation.report import write_report
from asvp.runtime.evaluation.timing import (active_runners, check_shape, check_size_multiple, check_timing,
                                            latency_stats, time_interleaved)


def profile(clean: str | os.PathLike, defended: str | os.PathLike | None = None, *, backend: str = "onnxrt-cpu",
            shape=DEFAULT_SHAPE, warmup: int = DEFAULT_WARMUP, iters: int = DEFAULT_ITERS, seed: int = 0,
            threads: int | None = None, memory: str = "subprocess", out: str | os.PathLike | None = None,
            progress: bool = True, precision: str = "fp32") -> ProfileResult:
    """Time CLEAN (and DEFENDED, interleaved) on `backend` with a random input of `shape`; measure peak memory."""
    from pathlib import Path

    shape = check_shape(shape)
    check_timing(warmup, iters, threads)
    if memory not in MEMORY_MODES:
        raise AsvpError(f"memory must be one of {', '.join(MEMORY_MODES)}, got {memory!r}")
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise AsvpError(f"--out {out} exists and is not a directory")
    paths = [("clean", clean)] + ([("defended", defended)] if defended is not None else [])
    input_name = None
    for name, p in paths:
        if is_engine_path(p):  # a TensorRT engine: no ONNX metadata to check; the runner checks
            require_file(p, "TensorRT engine")
            continue
        m = load_model(p)
        in_name, _ = image_io(m)
        if input_name is not None and in_name != input_name:
            raise AsvpError(f"the models' inputs differ: clean {input_name!r}, defended {in_name!r}")
        input_name = in_name
        check_size_multiple(m, shape, name)
        del m
    data = np.random.default_rng(seed).random(shape, dtype=np.float32)
    if precision != "fp32" and memory == "subprocess":
        memory = "inprocess"  # the fresh-process measure (runtime.evaluation.memory) runs ONNX Runtime in fp32

    mems, devmem, providers, feeds, method = [], [], [], [], ""
    with active_runners(backend, shape) as runners:
        for name, p in paths:
            r = backends.make_runner(p, backend, input_shape=shape, name=name, threads=threads, precision=precision)
            with PeakMemory() as pm:
                r.activate()  # the session / engine is created here
                runners.append(r)
                feed = {input_name or next(iter(r.get_input_metadata().keys())): data}
                r.infer(feed)  # first inference (checked feed): allocations happen here
            feeds.append(feed)
            mems.append(pm.peak_mb if memory == "inprocess" else None)
            method = pm.method
            devmem.append(device_memory_mb(r))
            providers.append(backends.actual_provider(r, backend))
        times = time_interleaved(runners, feeds, warmup, iters, desc=f"profile [{backend}]", progress=progress)

    if memory == "subprocess":
        for i, m in enumerate(measure_memory_subprocess([p for _, p in paths], backend, shape, seed, threads=threads)):
            mems[i], method = m["peak_rss_mb"], m["method"]
            if m.get("device_memory_mb") is not None:
                devmem[i] = m["device_memory_mb"]
    memory_method = {"off": "not measured",
                     "subprocess": "fresh process per model: peak RSS above RSS after imports",
                     "inprocess": "in this process, per model, order-dependent"}[memory]
    memory_method += "" if memory == "off" else (" (VmHWM)" if method == "VmHWM" else " (ru_maxrss growth, lower bound)")
    models = [ModelProfile(name, str(p), prov, latency_stats(t, shape[0]), [x * 1e3 for x in t], mem, dev)
              for (name, p), t, mem, dev, prov in zip(paths, times, mems, devmem, providers)]
    ratio = {}
    if len(models) == 2:
        c, d = models
        paired = np.asarray(times[1]) / np.maximum(np.asarray(times[0]), 1e-12)
        ratio = {"p50": d.stats["p50_ms"] / c.stats["p50_ms"], "mean": d.stats["mean_ms"] / c.stats["mean_ms"],
                 "paired_median": float(np.median(paired))}
    res = ProfileResult(backend, list(shape), warmup, iters, len(models) == 2, models, ratio,
                        memory_method=memory_method, threads=threads, precision=precision)
    if out is not None:
        res.report_dir = str(write_report(out, {"profile": res.to_section()}))
    return res

"""Interleaved latency measurement and the input checks before it, shared by `asvp profile` and `asvp nodes`'
per-node costs.

Runners are timed INTERLEAVED: every round runs each model once, the order rotating by one each round (ABBA...
for two), so machine noise (other processes, frequency changes, caches) hits all alike and ratios between
them come from one run. Latency per inference is Polygraphy's `runner.last_inference_time()`: the backend call
itself (for ONNX Runtime `session.run`; for TensorRT, execution with the host<->device copies), without
Polygraphy's feed-dict checks. Statistics: mean, std, min, max, p50/p90/p99 (numpy linear-interpolated
percentiles), throughput = batch / mean latency (images/s).
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from typing import TYPE_CHECKING

import numpy as np

from asvp.errors import AsvpError
from asvp.graph_passes.metadata import read_export
from asvp.runtime.engines.shapes import parse_shape

if TYPE_CHECKING:  # annotations only
    import onnx


def latency_stats(samples_s: list[float], batch: int) -> dict:
    """Milliseconds statistics (mean, std, min, max, p50/p90/p99) and throughput (images/s) of per-inference
    times in seconds, for a batch of `batch` images."""
    ms = np.asarray(samples_s, dtype=np.float64) * 1e3
    mean = float(ms.mean())
    return {"mean_ms": mean, "std_ms": float(ms.std()), "min_ms": float(ms.min()), "max_ms": float(ms.max()),
            "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "throughput_ips": batch / (mean / 1e3) if mean > 0 else math.inf}


@contextlib.contextmanager
def active_runners(backend: str, shape):
    """A list for the runners a measurement activates: each is deactivated on the way out, and a backend's own
    exception (not an AsvpError) becomes one line naming the backend and the shape."""
    runners = []
    try:
        yield runners
    except AsvpError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AsvpError(f"inference failed on backend {backend} at shape {'x'.join(map(str, shape))}: {first}") from None
    finally:
        for r in runners:
            try:
                r.deactivate()
            except Exception:
                pass


def time_interleaved(runners, feeds, warmup: int, iters: int, *, desc: str = "timing",
                     progress: bool = True) -> list[list[float]]:
    """Seconds per inference of every (activated) runner, interleaved: each of warmup + iters rounds runs every
    runner once, the order rotating by one each round (for two: AB, BA, AB, ...), so drifts of a shared machine
    hit all alike. The timer is Polygraphy's `runner.last_inference_time()` (the backend call itself), or the
    wall-clock time around `infer` where a runner does not report one. Warm-up rounds are not returned."""
    from tqdm import tqdm

    times = [[] for _ in runners]
    n = len(runners)
    for i in tqdm(range(warmup + iters), desc=desc, unit="it", disable=not progress, leave=False):
        for j in [(i + r) % n for r in range(n)]:
            t0 = time.perf_counter()
            runners[j].infer(feeds[j], check_inputs=False)
            dt = runners[j].last_inference_time()
            if dt is None:
                dt = time.perf_counter() - t0
            if i >= warmup:
                times[j].append(dt)
    return times


def check_timing(warmup, iters, threads=None) -> None:
    """Refuse warm-up / timed iteration counts and a thread count that a measurement cannot run with."""
    for name, v, lo in (("warmup", warmup, 0), ("iters", iters, 1), ("threads", threads, 1)):
        if (v is not None or name != "threads") and (not isinstance(v, int) or isinstance(v, bool) or v < lo):
            raise AsvpError(f"{name} must be an integer >= {lo}, got {v!r}")


def check_input_fits(shape) -> None:
    """Refuse an input shape whose float32 tensor alone would not fit in this machine's memory (before allocating)."""
    need = 4 * int(np.prod([int(d) for d in shape], dtype=object))
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if need > total // 2:
        raise AsvpError(f"--shape {'x'.join(map(str, shape))}: the input alone needs {need / 2**30:.1f} GiB, more than "
                        f"half of this machine's {total / 2**30:.1f} GiB of memory; choose a smaller shape")


def check_shape(shape) -> tuple[int, int, int, int]:
    """An NxCxHxW input shape (text or ints) for an RGB image model: 3 channels, and an input that fits in this
    machine's memory (check_size_multiple then checks it against each model)."""
    shape = parse_shape(shape if isinstance(shape, str) else "x".join(map(str, shape)), "--shape", rank=4)
    if shape[1] != 3:
        raise AsvpError(f"--shape must have 3 channels (NCHW RGB), got {shape[1]}")
    check_input_fits(shape)
    return shape


def check_size_multiple(model: onnx.ModelProto, shape, name: str = "clean") -> None:
    """Refuse a shape whose height or width is not a multiple of the `name` model's asvp.size_multiple."""
    mult = read_export(model).size_multiple
    if mult > 1 and (shape[2] % mult or shape[3] % mult):
        raise AsvpError(f"--shape {'x'.join(map(str, shape))}: the {name} model needs height and width "
                        f"multiples of {mult}")

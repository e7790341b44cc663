"""`asvp profile`: latency, throughput and memory of a clean model and (optionally) its defended version.

Both models run in one process on one backend, INTERLEAVED: every iteration runs clean and defended back to
back, alternating which goes first (ABBA...), so machine noise (other processes, frequency changes, caches)
hits both alike; the defended/clean ratio comes from that one run.

Latency per inference is Polygraphy's `runner.last_inference_time()`: the backend call itself (for ONNX
Runtime `session.run`; for TensorRT, execution with the host<->device copies), without Polygraphy's feed-dict
checks. Statistics: mean, std, min, max, p50/p90/p99 (numpy linear-interpolated percentiles), throughput =
batch / mean latency (images/s). Ratios: p50(defended)/p50(clean), mean/mean, and the median of the
per-iteration ratios.

Peak memory (`memory=`):
  "subprocess" (default): each model is loaded and run (two inferences at the profiled shape) in a fresh Python
      process; reported is that process's peak resident set size (Linux VmHWM) above its resident size just
      before, after the imports. Order-independent, and it includes what the backend initialises on first use
      (a deployed process pays it too). On TensorRT from an ONNX file, the child builds the engine, so the
      peak includes the builder.
  "inprocess": the same measured in this process around each model's load + first inference (VmHWM reset
      through /proc/self/clear_refs); cheaper, but order-dependent: the first model pays the backend's one-time
      initialisation and later models may reuse memory freed by earlier ones.
  "off": not measured.
Host RAM only. Where VmHWM cannot be reset, the growth of getrusage's ru_maxrss is used (a lower bound).
On TensorRT, the engine's device memory size is reported too where the runner exposes the engine.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from asvp.constants import MEMORY_MODES, PROFILE_ITERS as DEFAULT_ITERS, PROFILE_SHAPE as DEFAULT_SHAPE
from asvp.constants import PROFILE_WARMUP as DEFAULT_WARMUP
from asvp.errors import AsvpError
from asvp.graph_passes.metadata import read_export
from asvp.io import require_file
from asvp.onnx_utils import image_io, load_model
from asvp.runtime import quiet_polygraphy
from asvp.runtime.engines import backends, plugin_ort  # noqa: F401  (plugin_ort: loaded before any memory baseline)
from asvp.runtime.engines.shapes import parse_shape
from asvp.runtime.engines.sidecar import is_engine_path
from asvp.runtime.evaluation.report import Section, fmt, jsonable, md_table, new_figure, write_report



# ---- memory ---------------------------------------------------------------------------------------------

def _status_kb(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """Peak resident-set growth of a block of code (see the module docstring)."""

    def __enter__(self):
        self.method = "ru_maxrss"
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS (Linux >= 4.0)
            if _status_kb("VmHWM") is not None:
                self.method = "VmHWM"
        except OSError:
            pass
        self.rss0 = _status_kb("VmRSS")
        self.max0 = self._maxrss_kb()
        if self.method == "VmHWM":
            self.max0 = _status_kb("VmHWM")
        return self

    @staticmethod
    def _maxrss_kb() -> int:
        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return r // 1024 if sys.platform == "darwin" else r  # bytes on macOS, KiB on Linux

    def __exit__(self, *exc):
        if self.method == "VmHWM":
            self.peak_mb = max(0, _status_kb("VmHWM") - (self.rss0 or 0)) / 1024
        else:
            self.peak_mb = max(0, self._maxrss_kb() - self.max0) / 1024
        return False


def _device_memory_mb(runner) -> float | None:
    """TensorRT engines: the execution context's device memory size, where the runner exposes one."""
    ctx = getattr(runner, "context", None)
    engine = getattr(ctx, "engine", None) or getattr(runner, "engine", None)
    if engine is None:
        return None
    for attr in ("device_memory_size_v2", "device_memory_size"):
        v = getattr(engine, attr, None)
        if isinstance(v, (int, float)):
            return float(v) / 2**20
    return None


def measure_memory_subprocess(models, backend: str, shape, seed: int = 0, timeout: float = 900,
                              threads: int | None = None) -> list[dict]:
    """Peak RSS growth (and TensorRT device memory) of loading + running each model, each in a fresh process.

    On onnxrt-cpu the processes run concurrently (host memory is per process, so they do not disturb each
    other's numbers); on GPU backends one after the other (each gets the device to itself).
    """
    def start(model):
        args = json.dumps({"model": str(model), "backend": backend, "shape": list(shape), "seed": seed,
                           "threads": threads})
        cmd = [sys.executable, "-c", "from asvp.runtime.evaluation.profile import _memory_child; _memory_child()", args]
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    concurrent = backend == "onnxrt-cpu"
    procs = [(m, start(m) if concurrent else None) for m in models]
    results, failure = [], None
    for model, proc in procs:
        proc = proc or start(model)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            failure = failure or f"memory measurement of {model} did not finish in {timeout:g} s"
            continue
        lines = out.strip().splitlines()
        if proc.returncode != 0 or not lines:
            errs = [ln for ln in err.strip().splitlines() if ln.strip()]
            msg = errs[-1] if errs else f"exit status {proc.returncode}"
            failure = failure or f"memory measurement of {model} failed: {msg.removeprefix('asvp: error: ')}"
            continue
        results.append(json.loads(lines[-1]))
    if failure:
        raise AsvpError(failure)
    return results


def _memory_child() -> None:  # runs in the subprocess started by measure_memory_subprocess
    quiet_polygraphy()  # an entry point: its stdout carries the result
    args = json.loads(sys.argv[1])
    try:
        data = np.random.default_rng(args["seed"]).random(tuple(args["shape"]), dtype=np.float32)
        with PeakMemory() as pm:
            r = backends.make_runner(args["model"], args["backend"], input_shape=tuple(args["shape"]), name="memory",
                                     threads=args.get("threads"))
            r.activate()
            feed = {next(iter(r.get_input_metadata().keys())): data}
            r.infer(feed)
            r.infer(feed)
        dev = _device_memory_mb(r)
        r.deactivate()
    except AsvpError as exc:
        print(f"asvp: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    print(json.dumps({"peak_rss_mb": pm.peak_mb, "method": pm.method, "device_memory_mb": dev}))


# ---- statistics -----------------------------------------------------------------------------------------

def latency_stats(samples_s: list[float], batch: int) -> dict:
    ms = np.asarray(samples_s, dtype=np.float64) * 1e3
    mean = float(ms.mean())
    return {"mean_ms": mean, "std_ms": float(ms.std()), "min_ms": float(ms.min()), "max_ms": float(ms.max()),
            "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "throughput_ips": batch / (mean / 1e3) if mean > 0 else math.inf}


@dataclass
class ModelProfile:
    name: str  # "clean" or "defended"
    path: str
    provider: str  # what actually ran it (ONNX Runtime provider, or TensorRT version)
    stats: dict
    samples_ms: list
    peak_rss_mb: float | None
    device_memory_mb: float | None = None


@dataclass
class ProfileResult:
    backend: str
    shape: list
    warmup: int
    iters: int
    interleaved: bool
    models: list  # [ModelProfile]
    ratio: dict = field(default_factory=dict)  # defended / clean
    memory_method: str = ""
    timer: str = "polygraphy last_inference_time"
    threads: int | None = None  # ONNX Runtime intra-op threads (None: all CPUs)
    report_dir: str | None = None

    def model(self, name: str) -> ModelProfile | None:
        return next((m for m in self.models if m.name == name), None)

    def to_dict(self) -> dict:
        """Strict-JSON-ready (non-finite floats as "inf"/"nan" strings)."""
        return jsonable(asdict(self))

    def summary_lines(self) -> list[str]:
        ran = ", ".join(sorted({m.provider for m in self.models}))
        thr = f", {self.threads} intra-op thread(s)" if self.threads else ""
        lines = [f"backend {self.backend} ({ran}){thr}, shape {'x'.join(map(str, self.shape))}, {self.warmup} warm-up + "
                 f"{self.iters} timed iteration(s){', interleaved' if self.interleaved else ''}"]
        for m in self.models:
            s = m.stats
            dev = f", device {fmt(m.device_memory_mb, '.1f')} MiB" if m.device_memory_mb is not None else ""
            lines.append(f"{m.name:9} p50 {fmt(s['p50_ms'])} ms  p90 {fmt(s['p90_ms'])}  p99 {fmt(s['p99_ms'])}  "
                         f"mean {fmt(s['mean_ms'])} ms  {fmt(s['throughput_ips'], '.1f')} img/s  "
                         f"peak RSS {fmt(m.peak_rss_mb, '.1f')} MiB{dev}")
        if self.ratio:
            lines.append(f"defended/clean: p50 x{fmt(self.ratio['p50'])}, mean x{fmt(self.ratio['mean'])}, "
                         f"median of paired ratios x{fmt(self.ratio['paired_median'])}")
        if self.report_dir:
            lines.append(f"report: {self.report_dir}")
        return lines

    def to_section(self):
        rows = []
        for m in self.models:
            s = m.stats
            rows.append([m.name, fmt(s["p50_ms"]), fmt(s["p90_ms"]), fmt(s["p99_ms"]), fmt(s["mean_ms"]),
                         fmt(s["std_ms"]), fmt(s["throughput_ips"], ".1f"), fmt(m.peak_rss_mb, ".1f"),
                         fmt(m.device_memory_mb, ".1f")])
        ran = ", ".join(sorted({m.provider for m in self.models}))
        md = (f"Backend `{self.backend}` (ran on {ran}), input shape {'x'.join(map(str, self.shape))}, {self.warmup} warm-up and "
              f"{self.iters} timed iterations per model"
              + (", clean and defended interleaved (alternating order)" if self.interleaved else "")
              + f". Latency: {self.timer}. Peak memory: growth of peak RSS while loading and running each model "
              f"({self.memory_method}).\n\n"
              + md_table(["model", "p50 (ms)", "p90 (ms)", "p99 (ms)", "mean (ms)", "std (ms)", "images/s",
                          "peak RSS (MiB)", "device mem (MiB)"], rows))
        if self.ratio:
            md += "\n" + md_table(["defended / clean", "ratio"], [
                ["p50", fmt(self.ratio["p50"])], ["mean", fmt(self.ratio["mean"])],
                ["median of per-iteration ratios", fmt(self.ratio["paired_median"])]])
        data = self.to_dict()
        data.pop("report_dir", None)
        return Section("Profile: latency and memory", data, md, {"latency": self.latency_figure()})

    def latency_figure(self):
        fig = new_figure(8.0, 3.4)
        ax1, ax2 = fig.subplots(1, 2)
        colors = {"clean": "#4c72b0", "defended": "#dd8452"}
        data = [np.asarray(m.samples_ms) for m in self.models]
        lo = min(float(d.min()) for d in data)
        hi = max(float(d.max()) for d in data)
        bins = np.linspace(lo, hi if hi > lo else lo + 1e-3, 30)
        for m, d in zip(self.models, data):
            ax1.hist(d, bins=bins, alpha=0.6, label=f"{m.name} (p50 {m.stats['p50_ms']:.2f} ms)",
                     color=colors.get(m.name))
        ax1.set_xlabel("latency (ms)")
        ax1.set_ylabel("iterations")
        ax1.legend(fontsize=8)
        ax1.set_title("Latency distribution", fontsize=9)
        ax2.boxplot(data, tick_labels=[m.name for m in self.models], showfliers=True)
        ax2.set_ylabel("latency (ms)")
        ax2.set_title("Latency (box: quartiles, whiskers 1.5 IQR)", fontsize=9)
        for ax in (ax1, ax2):
            ax.grid(True, alpha=0.3)
        sfx = f", defended/clean p50 x{self.ratio['p50']:.3f}" if self.ratio else ""
        fig.suptitle(f"{self.backend}, {'x'.join(map(str, self.shape))}{sfx}", fontsize=10)
        return fig


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


def profile(clean: str | os.PathLike, defended: str | os.PathLike | None = None, *, backend: str = "onnxrt-cpu",
            shape=DEFAULT_SHAPE, warmup: int = DEFAULT_WARMUP, iters: int = DEFAULT_ITERS, seed: int = 0,
            threads: int | None = None, memory: str = "subprocess", out: str | os.PathLike | None = None,
            progress: bool = True) -> ProfileResult:
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

    mems, devmem, providers, feeds, method = [], [], [], [], ""
    with active_runners(backend, shape) as runners:
        for name, p in paths:
            r = backends.make_runner(p, backend, input_shape=shape, name=name, threads=threads)
            with PeakMemory() as pm:
                r.activate()  # the session / engine is created here
                runners.append(r)
                feed = {input_name or next(iter(r.get_input_metadata().keys())): data}
                r.infer(feed)  # first inference (checked feed): allocations happen here
            feeds.append(feed)
            mems.append(pm.peak_mb if memory == "inprocess" else None)
            method = pm.method
            devmem.append(_device_memory_mb(r))
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
                        memory_method=memory_method, threads=threads)
    if out is not None:
        res.report_dir = str(write_report(out, {"profile": res.to_section()}))
    return res

"""Peak memory of loading and running a model: in this process (PeakMemory) or in a fresh one per model
(measure_memory_subprocess), for `asvp profile`.

  subprocess: each model is loaded and run (two inferences at the profiled shape) in a fresh Python process;
      reported is that process's peak resident set size (Linux VmHWM) above its resident size just before, after
      the imports. Order-independent, and it includes what the backend initialises on first use (a deployed
      process pays it too). On TensorRT from an ONNX file, the child builds the engine, so the peak includes the
      builder.
  in process: the same measured around each model's load + first inference (VmHWM reset through
      /proc/self/clear_refs); cheaper, but order-dependent: the first model pays the backend's one-time
      initialisation and later models may reuse memory freed by earlier ones.

Host RAM only. Where VmHWM cannot be reset, the growth of getrusage's ru_maxrss is used (a lower bound).
On TensorRT, the engine's device memory size is reported too where the runner exposes the engine.
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys

import numpy as np

from asvp.errors import AsvpError
from asvp.runtime import quiet_libraries
# plugin_ort is imported here, unused, so that it is loaded before any memory baseline (in this process and in
# the child): its import would otherwise count as the first model's memory.
from asvp.runtime.engines import backends, plugin_ort  # noqa: F401


def _status_kb(field_name: str) -> int | None:
    """One field of /proc/self/status (VmRSS, VmHWM) in KiB; None where there is no /proc (not Linux)."""
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


def device_memory_mb(runner) -> float | None:
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
        cmd = [sys.executable, "-c", "from asvp.runtime.evaluation.memory import _memory_child; _memory_child()", args]
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
    quiet_libraries()  # an entry point: its stdout carries the result
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
        dev = device_memory_mb(r)
        r.deactivate()
    except AsvpError as exc:
        print(f"asvp: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    print(json.dumps({"peak_rss_mb": pm.peak_mb, "method": pm.method, "device_memory_mb": dev}))

"""Portable engines (issue 26.5): the timing cache, hardware and version compatibility and optimisation level of
`asvp build`, what the sidecar records of them, and the check `load_engine` makes before deserialising.

A plan file runs only in the TensorRT version and on the GPU family that built it, unless it was built
version-compatible (TensorRT's BuilderFlag.VERSION_COMPATIBLE: it then loads in the building TensorRT version or a
later one, with the runtime allowed to run the engine's embedded host code) or hardware-compatible
(HardwareCompatibilityLevel.AMPERE_PLUS: any GPU of compute capability 8.0 or later). TensorRT refuses a
mismatch with a cryptic message ("Version tag does not match"); `check_runs_here` refuses it first, in one line
that says what to do. The checks are pure functions of the sidecar, the running TensorRT version and the GPU.

UNVERIFIED: the Polygraphy CreateConfig arguments (load_timing_cache, hardware_compatibility_level,
version_compatible, builder_optimization_level) and the timing-cache and runtime calls follow TensorRT 10's and
Polygraphy's documentation; no real TensorRT has built or loaded such an engine here.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from asvp.constants import ENGINE_OPT_LEVELS, HARDWARE_COMPATIBILITY
from asvp.errors import AsvpError
from asvp.io import atomic_output, check_output
from asvp.options import EngineOptions

AMPERE = (8, 0)  # HardwareCompatibilityLevel.AMPERE_PLUS: Ampere and later
AMPERE_PLUS = HARDWARE_COMPATIBILITY[1]
VERIFIED = False


def check_options(opts: EngineOptions, inputs=()) -> None:
    """One-line AsvpError (exit 2, before TensorRT is touched) for portability options that cannot be honoured;
    `inputs` are paths the timing cache must never replace (the model, the engine)."""
    if opts.hardware_compatibility not in HARDWARE_COMPATIBILITY:
        raise AsvpError(f"--hardware-compatibility must be one of {', '.join(HARDWARE_COMPATIBILITY)}, "
                        f"not {opts.hardware_compatibility!r}")
    if opts.opt_level is not None and opts.opt_level not in ENGINE_OPT_LEVELS:
        raise AsvpError(f"--opt-level must be {ENGINE_OPT_LEVELS[0]} to {ENGINE_OPT_LEVELS[-1]}, not {opts.opt_level}")
    if opts.timing_cache is not None:
        p = check_output(opts.timing_cache, inputs, force=True, what="timing cache")
        if p.exists() and not os.access(p, os.R_OK):
            raise AsvpError(f"timing cache {p} is not readable")


def check_build_device(opts: EngineOptions, device: dict) -> None:
    """--hardware-compatibility ampere+ needs an Ampere or later GPU to build on."""
    cc = parse_cc((device or {}).get("compute_capability"))
    if opts.hardware_compatibility == AMPERE_PLUS and cc is not None and cc < AMPERE:
        raise AsvpError(f"--hardware-compatibility ampere+ needs a GPU of compute capability 8.0 or later to build "
                        f"on; this one is {device['compute_capability']}")


def config_kwargs(trt, opts: EngineOptions) -> dict:
    """The Polygraphy CreateConfig arguments for these options (none for the defaults)."""
    kw = {}
    if opts.timing_cache is not None and Path(opts.timing_cache).is_file():
        kw["load_timing_cache"] = str(opts.timing_cache)
    if opts.hardware_compatibility == AMPERE_PLUS:
        kw["hardware_compatibility_level"] = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    if opts.version_compatible:
        kw["version_compatible"] = True
    if opts.opt_level is not None:
        kw["builder_optimization_level"] = int(opts.opt_level)
    return kw


def save_timing_cache(config, path) -> int:
    """Write the builder config's timing cache (the file's old entries, loaded into it, plus this build's)
    atomically to `path`; returns its size in bytes."""
    data = bytes(memoryview(config.get_timing_cache().serialize()))
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return len(data)


def record(opts: EngineOptions) -> dict:
    """The sidecar's portability section."""
    return {"hardware_compatibility": opts.hardware_compatibility, "version_compatible": bool(opts.version_compatible),
            "opt_level": opts.opt_level, "timing_cache": str(opts.timing_cache) if opts.timing_cache else None,
            "verified": VERIFIED}


def parse_cc(text) -> tuple[int, int] | None:
    """"8.9" -> (8, 9); None for a missing or unreadable value."""
    m = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", str(text)) if text else None
    return (int(m.group(1)), int(m.group(2))) if m else None


def parse_version(text) -> tuple[int, ...]:
    """"10.9.0.34" -> (10, 9, 0, 34) (leading numeric parts only)."""
    parts = []
    for p in str(text).split("."):
        m = re.match(r"\d+", p)
        if not m:
            break
        parts.append(int(m.group()))
    return tuple(parts)


def check_runs_here(sidecar: dict, *, tensorrt_version: str, device: dict | None, engine_path, rebuild: str) -> None:
    """One-line AsvpError when the engine cannot run in this TensorRT or on this GPU, honouring the engine's
    version and hardware compatibility; `rebuild` says how to rebuild it (the sidecar knows the source)."""
    port = sidecar.get("portability") or {}
    built = sidecar.get("tensorrt_version")
    if built != tensorrt_version:
        if not port.get("version_compatible"):
            raise AsvpError(f"{engine_path} was built with TensorRT {built}, this is TensorRT {tensorrt_version}; "
                            f"engines only load in the TensorRT version that built them: {rebuild}, or build it with "
                            "--version-compatible (it then loads in later TensorRT versions)")
        if parse_version(tensorrt_version) < parse_version(built):
            raise AsvpError(f"{engine_path} was built version-compatible with TensorRT {built}, which loads in that "
                            f"version or a later one; this is TensorRT {tensorrt_version}: {rebuild}")
    side_dev = sidecar.get("device") or {}
    want, have = side_dev.get("compute_capability"), (device or {}).get("compute_capability")
    if not (want and have) or want == have:
        return
    here = f"this GPU is {have}" + (f" ({device['name']})" if (device or {}).get("name") else "")
    if port.get("hardware_compatibility") == AMPERE_PLUS:
        if parse_cc(have) is not None and parse_cc(have) < AMPERE:
            raise AsvpError(f"{engine_path} was built for Ampere or later GPUs (--hardware-compatibility ampere+, "
                            f"compute capability 8.0 or later); {here}: {rebuild}")
        return
    both_ampere = all(c is not None and c >= AMPERE for c in (parse_cc(want), parse_cc(have)))
    hint = ", or build it with --hardware-compatibility ampere+" if both_ampere else ""
    raise AsvpError(f"{engine_path} was built for compute capability {want} ({side_dev.get('name', '?')}) with "
                    f"TensorRT {built}; {here}: {rebuild}{hint}")


def runtime_loader(trt, sidecar: dict | None):
    """For a version-compatible engine, a callable returning a trt.Runtime allowed to run the engine's embedded
    host code (IRuntime.engine_host_code_allowed, needed to deserialise it); None otherwise (Polygraphy's default).
    Only engines from a trusted builder should be loaded so: asvp loads only engines with an asvp sidecar so."""
    if not (sidecar and (sidecar.get("portability") or {}).get("version_compatible")):
        return None

    def load():
        from polygraphy.backend.trt import util as trt_util

        runtime = trt.Runtime(trt_util.get_trt_logger())
        runtime.engine_host_code_allowed = True
        return runtime

    return load

"""An engine file's JSON sidecar `<engine>.json`: what built it (TensorRT version, GPU and its compute capability,
profile, precision and the layers pinned to fp32, portability flags, plugins, source model digest), written
atomically beside the engine and checked before loading (pure: needs neither TensorRT nor a GPU; the version and
GPU rules, with hardware and version compatibility: runtime.engines.portability).

TensorRT engines only load in the TensorRT version and on the GPU kind that built them, and fail obscurely
otherwise; the sidecar lets `load_engine` refuse in one line that says how to rebuild.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path

import asvp
from asvp.errors import AsvpError
from asvp.io import atomic_output
from asvp.runtime.engines.portability import check_runs_here
from asvp.runtime.engines.shapes import ShapeProfile

SIDECAR_FORMAT = "asvp-engine-sidecar/1"
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
SIDECAR_SUFFIX = ".json"


def is_engine_path(model) -> bool:
    """Whether `model` names a TensorRT engine file (by its suffix), rather than an ONNX model."""
    return isinstance(model, (str, os.PathLike)) and str(model).lower().endswith(ENGINE_SUFFIXES)


def sha256_file(path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (engines and models can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data) -> str:
    """Hex SHA-256 of in-memory bytes (an engine just built or read)."""
    return hashlib.sha256(bytes(data)).hexdigest()


def sidecar_path(engine_path) -> Path:
    """`m.engine` -> `m.engine.json`."""
    p = Path(engine_path)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def make_sidecar(*, engine_sha256: str, tensorrt_version: str, profile: ShapeProfile, source_path,
                 source_sha256: str, fp16: bool, int8: bool, workspace: int | None, plugins: list[dict],
                 device: dict | None = None, source_metadata: dict | None = None, precision: dict | None = None,
                 portability: dict | None = None) -> dict:
    """The sidecar's content for an engine just built (SIDECAR_FORMAT). precision: more of the precision section
    (runtime.engines.precision.record); portability: runtime.engines.portability.record (absent: a plain engine,
    tied to its TensorRT version and GPU)."""
    return {
        "format": SIDECAR_FORMAT,
        "asvp_version": asvp.__version__,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "tensorrt_version": tensorrt_version,
        "engine_sha256": engine_sha256,
        "device": device or {},
        "profile": profile.to_dict(),
        "precision": {"fp32": True, "fp16": bool(fp16), "int8": bool(int8), **(precision or {})},
        "portability": portability or {},
        "workspace_bytes": workspace,
        "plugins": plugins,
        "source_model": {"path": str(source_path), "sha256": source_sha256, "metadata": source_metadata or {}},
    }


def read_sidecar(engine_path) -> dict | None:
    """The engine's sidecar, None when there is none; one-line AsvpError when it is unreadable or not ours."""
    p = sidecar_path(engine_path)
    if not p.exists():
        return None
    try:
        d = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise AsvpError(f"engine sidecar {p} is not readable JSON ({type(exc).__name__}); rebuild the engine "
                        "with asvp build") from None
    if not isinstance(d, dict) or d.get("format") != SIDECAR_FORMAT:
        raise AsvpError(f"{p} is not an asvp engine sidecar (format {d.get('format') if isinstance(d, dict) else '?'!r})")
    return d


def check_sidecar(sidecar: dict, *, tensorrt_version: str, engine_sha256: str | None = None,
                  device: dict | None = None, engine_path="engine") -> None:
    """One-line AsvpError when the engine cannot run here (digest, then TensorRT version and GPU as
    portability.check_runs_here rules); says what to do."""
    src = sidecar.get("source_model", {}).get("path", "the source ONNX model")
    rebuild = f"rebuild it here with: asvp build {src} -o {engine_path}"
    if engine_sha256 is not None and sidecar.get("engine_sha256") != engine_sha256:
        raise AsvpError(f"{engine_path} does not match its sidecar {sidecar_path(engine_path).name} (digest differs): "
                        f"the engine was replaced or truncated; {rebuild}")
    check_runs_here(sidecar, tensorrt_version=tensorrt_version, device=device, engine_path=engine_path, rebuild=rebuild)


def write_engine(engine_bytes, engine_path, sidecar: dict) -> Path:
    """Engine and sidecar, each written to a temporary file and renamed into place only when complete."""
    engine_path = Path(engine_path)
    with atomic_output(engine_path) as tmp_engine:
        with open(tmp_engine, "wb") as f:
            f.write(memoryview(engine_bytes))
        with atomic_output(sidecar_path(engine_path)) as tmp_side:
            tmp_side.write_text(json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    return engine_path


def current_device() -> dict:
    """Name and compute capability of CUDA device 0 (through torch), {} without one: what an engine is tied to."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return {"name": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}
    except Exception:
        pass
    return {}

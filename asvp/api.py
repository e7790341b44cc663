"""The public Python API. Every CLI subcommand is a thin call into one function here."""
from __future__ import annotations

import os
from pathlib import Path

from asvp.errors import AsvpError

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors")


def train_teacher(task: str, **kw) -> dict:
    """Train a bundled task's teacher (deterministic seed) and overwrite its bundled weights."""
    from asvp.exporter.teachers.train import train_teacher as _train

    return _train(task, **kw)


def teacher_quality(tasks=None) -> list[dict]:
    """Held-out PSNR/SSIM of the bundled teachers against their trivial baselines."""
    from asvp.exporter.teachers.train import quality_table

    return quality_table(tasks)


def export(source: str, out: str | os.PathLike, *, weights=None, kwargs=None, task: str | None = None,
           size_multiple: int = 1, opset: int | None = None):
    """Export a teacher to ONNX with parity checks.

    source: a bundled task name (sr, lowlight, underwater, dehaze, derain), `package.module:Class`
    (with `weights` and optional JSON `kwargs`), or a spandrel-loadable checkpoint (.pth/.pt/.safetensors).
    """
    from asvp.exporter import export as ex
    from asvp.exporter.teachers.tasks import TASKS

    kw = {} if opset is None else {"opset": opset}
    if source in TASKS:
        if weights is not None:
            raise AsvpError("--weights applies to module:Class sources, not to bundled teachers")
        return ex.export_bundled(source, out, **kw)
    if Path(source).suffix in CHECKPOINT_SUFFIXES and ":" not in source:
        return ex.export_spandrel(source, out, task=task or "custom", size_multiple=size_multiple, **kw)
    if ":" in source:
        return ex.export_user_module(source, out, weights, kwargs, task=task or "custom", size_multiple=size_multiple, **kw)
    raise AsvpError(f"unknown teacher {source!r}: give a bundled task ({', '.join(TASKS)}), "
                    "package.module:Class, or a .pth/.safetensors checkpoint")


def list_nodes(model_path: str | os.PathLike):
    """Candidate feature nodes of an ONNX image model, for `defend --nodes`."""
    from asvp.graph_passes.candidates import feature_candidates
    from asvp.onnx_utils import image_io, load_model

    model = load_model(model_path)
    image_io(model)
    return feature_candidates(model)

"""The public Python API. Every CLI subcommand is a thin call into one function here."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from asvp.errors import AsvpError
from asvp.fingerprint import new_key
from asvp.exporter import export as ex
from asvp.exporter.teachers.train import quality_table, train_teacher as _train
from asvp.graph_passes.defend import defend_file
from asvp.graph_passes.select import candidates
from asvp.onnx_utils import image_io, load_model
from asvp.runtime.attacks import fingerprint as _fp
from asvp.runtime.attacks.attack import run_attack
from asvp.runtime.attacks.sweep import run_sweep
from asvp.runtime.engines.backends import backends_status
from asvp.runtime.engines.build import build_engine as _build, load_engine as _load
from asvp.runtime.evaluation.profile import profile as _profile
from asvp.runtime.evaluation.report import write_report as _write
from asvp.runtime.evaluation.validate import validate as _validate
from asvp.tasks import TASKS

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors")


def train_teacher(task: str, **kw) -> dict:
    """Train a bundled task's teacher (deterministic seed) and overwrite its bundled weights."""
    return _train(task, **kw)


def teacher_quality(tasks=None) -> list[dict]:
    """Held-out PSNR/SSIM of the bundled teachers against their trivial baselines."""
    return quality_table(tasks)


def export(source: str, out: str | os.PathLike, *, weights=None, kwargs=None, task: str | None = None,
           size_multiple: int = 1, opset: int | None = None):
    """Export a teacher to ONNX with parity checks.

    source: a bundled task name (sr, lowlight, underwater, dehaze, derain), `package.module:Class`
    (with `weights` and optional JSON `kwargs`), or a spandrel-loadable checkpoint (.pth/.pt/.safetensors).
    """
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
    model = load_model(model_path)
    image_io(model)
    return candidates(model)  # ASVP's own inserted nodes are not candidates


@dataclasses.dataclass
class DefendResult:
    """What `defend` wrote: the output path, mode, placement, defended nodes (records as in asvp.nodes), config."""

    path: str
    mode: str
    placement: str
    nodes: list
    config: dict
    digest: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def summary_lines(self) -> list[str]:
        where = ", ".join(f"{n['node']} (C={n['channels']}{', tap ' + n['tap_output'] if n['tap_output'] else ''})"
                          for n in self.nodes)
        return [f"wrote {self.path}: ASVP {self.mode} ({self.placement}) at {where}; config {self.digest}"]


def defend(model_path: str | os.PathLike, out_path: str | os.PathLike, *, nodes=None, config=None,
           mode: str = "subgraph", allow_redefend: bool = False) -> DefendResult:
    """Insert ASVP at feature nodes of an ONNX image model and write the defended model atomically.

    nodes: selector strings (exact node name, "re:PATTERN", "OP#I", "auto"; default: the automatic choice,
    see asvp.graph_passes.select). config: AsvpConfig or dict of its fields (default AsvpConfig()).
    mode: "subgraph" (standard ONNX ops, any runtime) or "plugin" (one AsvpPerturb custom node per feature).
    Refuses a node already defended unless allow_redefend. Nothing is written when anything fails.
    """
    info = defend_file(model_path, out_path, nodes=nodes, config=config, mode=mode, allow_redefend=allow_redefend)
    return DefendResult(str(out_path), info.mode, info.placement, info.nodes, info.config, info.digest)


def validate(clean: str | os.PathLike, defended: str | os.PathLike, *, task: str | None = None, images=None,
             backend: str = "onnxrt-cpu", heldout_size: int = 192, max_teacher_drop: float | None = 0.1,
             max_ssim_drop: float | None = None, min_output_psnr: float | None = None,
             max_abs_diff: float | None = None, spectrum: bool = True, out=None, progress: bool = True):
    """Quality cost of the defence: clean vs defended on held-out (or `images`: DIR/input + DIR/target) pairs.

    Returns a ValidationResult (`.passed` is the verdict against the thresholds; a failed verdict is not an
    exception). `out`: a report directory (report.json, report.md, PNGs), written atomically at the end.
    """
    return _validate(clean, defended, task=task, images=images, backend=backend, heldout_size=heldout_size,
                     max_teacher_drop=max_teacher_drop, max_ssim_drop=max_ssim_drop, min_output_psnr=min_output_psnr,
                     max_abs_diff=max_abs_diff, spectrum=spectrum, out=out, progress=progress)


def profile(clean: str | os.PathLike, defended: str | os.PathLike | None = None, *, backend: str = "onnxrt-cpu",
            shape="1x3x256x256", warmup: int = 10, iters: int = 50, memory: str = "subprocess", out=None,
            progress: bool = True):
    """Latency (p50/p90/p99, mean, throughput), peak memory, and the defended/clean ratio measured interleaved.

    memory: "subprocess" (each model in a fresh process; default), "inprocess" (order-dependent) or "off".
    """
    return _profile(clean, defended, backend=backend, shape=shape, warmup=warmup, iters=iters, memory=memory,
                    out=out, progress=progress)


def write_report(out_dir: str | os.PathLike, sections: dict):
    """Add sections (key -> asvp.runtime.evaluation.report.Section) to the report in out_dir (report.json/.md + PNGs)."""
    return _write(out_dir, sections)


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, *, min_shape=None, opt_shape=None,
                 max_shape=None, fp16: bool = False, int8: bool = False, workspace=None, plugin: bool = True):
    """Build a TensorRT engine (one dynamic-shape profile) and its `<engine>.json` sidecar, atomically.

    Shapes are "NxCxHxW" strings or int sequences (defaults 1x3x32x32 / 1x3x256x256 / 4x3x512x512, adapted to
    the model); workspace is bytes or "2G"/"512M". The AsvpPerturb TensorRT plugin is registered before parsing
    when the model has plugin nodes. MissingDependencyError (exit 3, nothing written) without TensorRT/GPU.
    """
    return _build(onnx_path, engine_path, min_shape=min_shape, opt_shape=opt_shape, max_shape=max_shape,
                  fp16=fp16, int8=int8, workspace=workspace, plugin=plugin)


def load_engine(engine_path: str | os.PathLike):
    """Deserialize a TensorRT engine built by build_engine (registers the AsvpPerturb plugin first)."""
    return _load(engine_path)


def backends() -> list[dict]:
    """Every inference backend with whether it runs here and what runs it (or what is missing)."""
    return [s.to_dict() for s in backends_status()]


def attack(task: str | None = None, *, clean=None, defended=None, kind: str = "output", preset: str = "quick",
           seed: int = 0, out=None, config=None, nodes=None, steps: int | None = None, pool: int | None = None,
           progress: bool = True):
    """Distillation attack: students trained only on the served models' answers (ONNX Runtime queries).

    task: one bundled task, or None for the preset's tasks ("quick": sr; "full": all five). clean/defended: ONNX
    paths (one task only); missing ones are exported (bundled teacher) / defended (api.defend with `config`,
    default AsvpConfig(), and `nodes`) into out/<task>/. kind: "output" | "feature" | "adaptive". steps/pool
    override the preset's training steps / number of queries. Returns an AttackResult; with `out`, a report
    (report.json, report.md, attack-<kind>-drops.png) and per-task resumable results are written there.
    """
    return run_attack(task, clean=clean, defended=defended, kind=kind, preset=preset, seed=seed, out=out,
                      config=config, nodes=nodes, steps=steps, pool=pool, progress=progress)


def sweep(tasks, *, h=None, k=None, placement=None, nodes=None, preset: str = "quick", seed: int = 0, out=None,
          k_mode: str = "adaptive", tau: float = 0.9, steps: int | None = None, pool: int | None = None,
          progress: bool = True):
    """Grid over h x k x placement x node sets: teacher drop vs student drop per configuration, and the best one
    (largest student drop with teacher drop <= 0.1 dB). nodes: selector strings, "default" = defend's choice,
    "a,b" = several nodes at once. Returns a SweepResult; with `out`, report.json/.md and sweep-scatter.png."""
    return run_sweep(tasks, h=h, k=k, placement=placement, nodes=nodes, preset=preset, seed=seed, out=out,
                     k_mode=k_mode, tau=tau, steps=steps, pool=pool, progress=progress)



def fingerprint_new_key() -> str:
    """A fresh random fingerprint key (128 bits, hex). Keep it secret: it is never stored in a model."""
    return new_key()


def fingerprint_mark(model_path, out_path, key: str, *, node=None, m: int = _fp.DEFAULT_M,
                     strength_db: float = _fp.DEFAULT_STRENGTH_DB, task: str | None = None):
    """Mark a clean or ASVP-defended ONNX model with a secret key (a keyed perturbation in the top-m principal
    subspace of one feature, `strength_db` PSNR away from the unmarked output on the probes). Returns a
    MarkResult. The key is not stored in the model; keep it (and the marked file) secret."""
    return _fp.mark_file(model_path, out_path, key, node=node, m=m, strength_db=strength_db, task=task)


def fingerprint_calibrate(clean, defended, *, cache, task: str | None = None, seeds=(100, 101, 102),
                          steps: int = 300, pool: int = 96, references=None, test_key: str | None = None,
                          progress: bool = True):
    """Store reference models (students of the clean teacher, and any `references`: ONNX paths or callables that
    never saw the marked outputs) in `cache`; verify removes their systematic bias. Key-independent."""
    return _fp.calibrate(clean, defended, cache=cache, task=task, seeds=seeds, steps=steps, pool=pool,
                         references=references, test_key=test_key, progress=progress)


def fingerprint_verify(suspect, *, clean, defended, key: str, alpha: float = _fp.DEFAULT_ALPHA, cache=None,
                       task: str | None = None, references=None, name: str | None = None):
    """Was `suspect` (an ONNX file or a callable batch -> outputs, queried as a black box on probe images)
    distilled from the marked model `defended`? Returns a FingerprintResult: statistic, exact p-value, verdict."""
    return _fp.verify(suspect, clean, defended, key, alpha=alpha, cache=cache, task=task, references=references,
                      name=name)


def fingerprint_check(clean, served, task: str, workdir, *, key: str, steps: int = 300, pool: int = 96,
                      progress: bool = False) -> dict:
    """The demo's quick check: mark `served`, distil a student from it and one from `clean`, verify both."""
    return _fp.quick_check(clean, served, task, workdir, key=key, steps=steps, pool=pool, progress=progress)

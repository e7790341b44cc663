"""The public Python API. Every CLI subcommand is a thin call into one function here."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from asvp import api_serving
from asvp.config import AsvpConfig
from asvp.constants import (BACKENDS, DEFAULT_PRESET, FINGERPRINT_MAX_DROP_DB as FP_DEFAULT_MAX_DROP_DB, HELDOUT_SIZE,
                            MEMORY_MODES, REFERENCE_POOL, REFERENCE_SEEDS, REFERENCE_STEPS)
from asvp.errors import AsvpError
from asvp.exporter import export as ex
from asvp.exporter.teachers.train import quality_table, train_teacher as _train
from asvp.fingerprint import DEFAULT_ALPHA as FP_DEFAULT_ALPHA, DEFAULT_M as FP_DEFAULT_M, new_key
from asvp.graph_passes.defend import defend_file
from asvp.graph_passes.metadata import read_export
from asvp.graph_passes.select import automatic, candidates, resolve
from asvp.io import check_output
from asvp.onnx_utils import get_metadata, image_input, image_io, load_model
from asvp.options import EngineOptions, ExportOptions, ShapeProfile, Thresholds, Timing
from asvp.runtime.attacks.run import run_attack
from asvp.runtime.attacks.ladder import run_ladder
from asvp.runtime.attacks.sweep import run_sweep
from asvp.runtime.engines.backends import backends_status
from asvp.runtime.engines.build import build_engine as _build
from asvp.runtime.engines.load import load_engine as _load
from asvp.runtime.engines.sidecar import sidecar_path
from asvp.runtime.evaluation import absorbability as _ab
from asvp.runtime.evaluation.images import load_inputs
from asvp.runtime.evaluation.node_cost import node_costs as _node_costs
from asvp.runtime.evaluation.profile import profile as _profile
from asvp.runtime.evaluation.report import check_report_dir, write_report as _write
from asvp.runtime.evaluation.served import make_queries
from asvp.runtime.evaluation.validate import validate as _validate
from asvp.runtime.evaluation.validate_inputs import resolve_task
from asvp.runtime.fingerprint.calibration import calibrate as _fp_calibrate
from asvp.runtime.fingerprint.check import quick_check as _fp_quick_check
from asvp.runtime.fingerprint.mark import mark_file as _fp_mark_file
from asvp.runtime.fingerprint.verifier import verify as _fp_verify
from asvp.tasks import TASKS

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors")


def train_teacher(task: str, **kw) -> dict:
    """Train a bundled task's teacher (deterministic seed) and overwrite its bundled weights."""
    return _train(task, **kw)


def teacher_quality(tasks=None) -> list[dict]:
    """Held-out PSNR/SSIM of the bundled teachers against their trivial baselines."""
    return quality_table(tasks)


def export(source: str, out: str | os.PathLike, options: ExportOptions | None = None, *, force: bool = False):
    """Export a teacher to ONNX with parity checks at several sizes and batch 2.

    source: a bundled task name (sr, lowlight, underwater, dehaze, derain), `package.module:Class`
    (with options.weights and optional JSON options.kwargs), or a spandrel-loadable checkpoint
    (.pth/.pt/.safetensors). options: ExportOptions (asvp/options.py: task label, size multiple, opset, exporter,
    static batch / size). An existing `out` is refused unless force; `out` equal to the checkpoint or weights file
    is always refused.
    """
    o = options or ExportOptions()
    check_output(out, [source if source not in TASKS and ":" not in source else None, o.weights], force=force,
                 what="output")
    kw = {"exporter": o.exporter, "static_batch": o.static_batch, "static_size": o.static_size}
    if o.opset is not None:
        kw["opset"] = o.opset
    if source in TASKS:
        if o.weights is not None:
            raise AsvpError("--weights applies to module:Class sources, not to bundled teachers")
        if o.size_multiple is not None:
            raise AsvpError("--size-multiple applies to user models; a bundled teacher records its own")
        return ex.export_bundled(source, out, **kw)
    if Path(source).suffix in CHECKPOINT_SUFFIXES and ":" not in source:
        return ex.export_spandrel(source, out, task=o.task or "custom", size_multiple=o.size_multiple, **kw)
    if ":" in source:
        return ex.export_user_module(source, out, o.weights, o.kwargs, task=o.task or "custom",
                                     size_multiple=1 if o.size_multiple is None else o.size_multiple, **kw)
    raise AsvpError(f"unknown teacher {source!r}: give a bundled task ({', '.join(TASKS)}), "
                    "package.module:Class, or a .pth/.safetensors checkpoint")


def list_nodes(model_path: str | os.PathLike, *, input_name: str | None = None):
    """Candidate feature nodes of an ONNX image model, for `defend --nodes` (the rule: graph_passes.candidates).

    input_name: the image input of a model with extra inputs (noise maps, masks); default: detected."""
    model = load_model(model_path)
    image_input(model, input_name)
    return candidates(model, input_name)  # ASVP's own inserted nodes are not candidates


def node_costs(model_path: str | os.PathLike, *, nodes=None, config=None, mode: str = "subgraph",
               backend: str = "onnxrt-cpu", shape="1x3x256x256", warmup: int = 3, iters: int = 20,
               threads: int | None = None, budget: float | None = None, count: int = 1, out=None,
               progress: bool = True):
    """Latency cost of the defence at each candidate node of a CLEAN model, measured (runtime/evaluation/node_cost.py).

    Each candidate (or each node the `nodes` selectors name) is defended alone with `config`/`mode` and timed
    against the clean model, interleaved, on `backend` with `threads` intra-op threads at `shape`. With `budget`
    (a defended/clean ratio > 1), also chooses up to `count` nodes spread over the network whose cost together,
    measured, fits it. Returns a CostResult (`.costs`, `.choice`, `.trials`); `out`: a report directory."""
    return _node_costs(model_path, nodes=nodes, config=config, mode=mode, backend=backend, shape=shape,
                       warmup=warmup, iters=iters, threads=threads, budget=budget, count=count, out=out,
                       progress=progress)


def absorbability(model_path: str | os.PathLike, *, task: str | None = None, images=None, config=None,
                  nodes=None, queries: int = _ab.DEFAULT_QUERIES, crop: int = _ab.DEFAULT_CROP, seed: int = 0,
                  max_side: int = 256, backend: str = "onnxrt-cpu", progress: bool = True):
    """Absorbability diagnostic (runtime/evaluation/absorbability.py) at the candidate nodes of a CLEAN model.

    Images: the attacker's query crops of `task` (runtime.evaluation.served.make_queries: `queries` crops of side
    `crop`, seed `seed`; task default: the model's asvp.task metadata), or a folder `images` (DIR/input/* or DIR/*,
    centre-cropped to at most `max_side`). nodes: selectors as for defend (default: every candidate).
    config: AsvpConfig or dict (h, k, k_mode, tau; default AsvpConfig()). Returns an AbsorbabilityResult.
    """
    model = load_model(model_path)
    image_io(model)
    meta = get_metadata(model)
    cfg = AsvpConfig.from_dict(config) if isinstance(config, dict) else config
    if images is not None:
        mult = resolve_task(task, meta, {}, True)[3] if task is not None else read_export(meta).size_multiple
        batch = load_inputs(images, mult, max_side)
        source = f"{len(batch)} image(s) from {images}"
    else:
        task, spec, _, _ = resolve_task(task, meta, {}, False)
        if spec is None:
            raise AsvpError(f"task {task!r} has no bundled training images to make queries from; give --images DIR")
        if not isinstance(queries, int) or queries < 2:
            raise AsvpError(f"queries must be an integer >= 2, got {queries!r}")
        if not isinstance(crop, int) or crop < 8:
            raise AsvpError(f"crop must be an integer >= 8, got {crop!r}")
        batch = make_queries(task, queries, crop, seed)
        source = f"task {task}: {queries} attacker query crops (side {crop}, seed {seed})"
    cands = candidates(model)
    chosen = resolve(model, nodes) if nodes else cands
    auto = automatic(cands).name if cands else None
    return _ab.absorbability(model, chosen, batch, cfg, backend=backend, source=source, automatic=auto,
                             model_label=str(model_path), progress=progress)


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
           mode: str = "subgraph", allow_redefend: bool = False, force: bool = False, input_name: str | None = None,
           force_nodes: bool = False) -> DefendResult:
    """Insert ASVP at feature nodes of an ONNX image model and write the defended model atomically.

    nodes: selector strings (exact node name, "re:PATTERN", "OP#I", "auto"; default: the automatic choice,
    see asvp.graph_passes.select). config: AsvpConfig or dict of its fields (default AsvpConfig()).
    mode: "subgraph" (standard ONNX ops, any runtime) or "plugin" (one AsvpPerturb custom node per feature).
    Refuses a node already defended unless allow_redefend. Nothing is written when anything fails. An existing
    `out_path` is refused unless force; `out_path` equal to `model_path` is always refused. input_name: the image
    input of a model with extra inputs (default: detected). force_nodes: take an exactly named tensor that is not
    a feature map (refused otherwise, with the reason).
    """
    check_output(out_path, [model_path], force=force, what="output")
    info = defend_file(model_path, out_path, nodes=nodes, config=config, mode=mode, allow_redefend=allow_redefend,
                       input_name=input_name, force_nodes=force_nodes)
    return DefendResult(str(out_path), info.mode, info.placement, info.nodes, info.config, info.digest)


def validate(clean: str | os.PathLike, defended: str | os.PathLike, *, task: str | None = None, images=None,
             backend: str = BACKENDS[0], heldout_size: int = HELDOUT_SIZE, thresholds: Thresholds | None = None,
             spectrum: bool = True, out=None, progress: bool = True, precision: str = "fp32"):
    """Quality cost of the defence: clean vs defended on held-out (or `images`: DIR/input + DIR/target) pairs.

    Returns a ValidationResult (`.passed` is the verdict against `thresholds`, default Thresholds(): teacher drop
    <= MAX_TEACHER_DROP_DB; a failed verdict is not an exception). `out`: a report directory (report.json,
    report.md, PNGs), written atomically at the end; an existing asvp report there gets this section added (reports
    compose); anything else in the way is refused before the work starts.
    """
    if out is not None:
        check_report_dir(out)
    return _validate(clean, defended, task=task, images=images, backend=backend, heldout_size=heldout_size,
                     thresholds=thresholds, spectrum=spectrum, out=out, progress=progress, precision=precision)


def profile(clean: str | os.PathLike, defended: str | os.PathLike | None = None, *, backend: str = BACKENDS[0],
            timing: Timing | None = None, memory: str = MEMORY_MODES[0], out=None, progress=True, precision="fp32"):
    """Latency (p50/p90/p99, mean, throughput), peak memory, and the defended/clean ratio measured interleaved.

    timing: Timing (asvp/options.py: input shape, warmup and timed iterations per model, ONNX Runtime intra-op
    threads; default Timing()). memory: "subprocess" (each model in a fresh
    process; default), "inprocess" (order-dependent) or "off". `out`: a report directory, checked before the work
    starts (see validate).
    """
    if out is not None:
        check_report_dir(out)
    t = timing or Timing()
    return _profile(clean, defended, backend=backend, shape=t.shape, warmup=t.warmup, iters=t.iters,
                    threads=t.threads, memory=memory, out=out, progress=progress, precision=precision)


def write_report(out_dir: str | os.PathLike, sections: dict):
    """Add sections (key -> asvp.runtime.evaluation.report.Section) to the report in out_dir (report.json/.md + PNGs)."""
    return _write(out_dir, sections)


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, *, profile: ShapeProfile | None = None,
                 options: EngineOptions | None = None, force: bool = False, **fields):
    """Build a TensorRT engine (one dynamic-shape profile) and its `<engine>.json` sidecar, atomically.

    profile: ShapeProfile (asvp/options.py) of "NxCxHxW" strings or int sequences (defaults ENGINE_MIN_SHAPE /
    ENGINE_OPT_SHAPE / ENGINE_MAX_SHAPE of asvp.constants, adapted to the model). options: EngineOptions
    (precisions, workspace, plugin, timing cache, portability; UNVERIFIED with a real TensorRT), or its fields as
    keywords (fp16=True, aot_plugin=True, ...). MissingDependencyError (exit 3, nothing written) without TensorRT/GPU.
    An existing engine (or sidecar) is refused unless force; the engine path equal to the model is always refused.
    """
    check_output(engine_path, [onnx_path], force=force, what="engine")
    check_output(sidecar_path(engine_path), [onnx_path], force=force, what="engine sidecar")
    p = profile or ShapeProfile()
    opts = dataclasses.replace(options or EngineOptions(), **fields)
    return _build(onnx_path, engine_path, min_shape=p.min, opt_shape=p.opt, max_shape=p.max, options=opts)


def load_engine(engine_path: str | os.PathLike):
    """Deserialize a TensorRT engine built by build_engine (registers the AsvpPerturb plugin first)."""
    return _load(engine_path)


def backends() -> list[dict]:
    """Every inference backend with whether it runs here and what runs it (or what is missing)."""
    return [s.to_dict() for s in backends_status()]


def attack(task: str | None = None, *, clean=None, defended=None, kind: str = "output", preset: str = DEFAULT_PRESET,
           seed: int = 0, out=None, config=None, nodes=None, steps: int | None = None, pool: int | None = None,
           progress: bool = True, seeds: int | None = None, interval: str = "t", remote=None):
    """Distillation attack: students trained only on the served models' answers (ONNX Runtime queries).

    task: one bundled task, or None for the preset's tasks ("quick": sr; "standard", "thorough", "full": all five).
    clean/defended: ONNX paths (one task only); missing ones are exported (bundled teacher) / defended (api.defend
    with `config`, default AsvpConfig(), and `nodes`) into out/<task>/. kind: one of runtime.attacks.recipes.KINDS
    (output, feature, adaptive, the ladder's rungs fitnets-0.1/1/10, direct, staged, larger) or "ladder". steps/pool
    override the preset's training steps / number of queries. Returns an AttackResult; with `out`, a report
    (report.json, report.md, attack-<kind>-drops.png) and per-task resumable results are written there.
    seeds > 1: paired students (a clean and a defended one per seed seed .. seed+seeds-1, same queries) and the
    paired drop with a confidence interval (interval "t" or "bootstrap", runtime.evaluation.stats) per task;
    the claims then count a drop only when its interval excludes 0 and its mean passes 0.1 dB. seeds None: the
    preset's (quick and full 1, standard 5, thorough 10).
    kind "ladder": every rung of the attacker ladder (runtime/attacks/ladder.py; the preset's rungs, all for
    standard and thorough), with convergence at two budgets and the absorbability diagnostic against the measured
    drops; returns a LadderResult (report section "ladder", figure ladder-drops.png).
    remote (RemoteOptions): the defended model is the one served at that KServe v2 endpoint (`defended` is its
    file), so the attacker's queries and the defended teacher's held-out answers go over the network.
    """
    if out is not None:
        check_report_dir(out)
    if kind == "ladder":
        if remote is not None:
            raise AsvpError("--kind ladder runs in-process only; over --url run one kind at a time")
        return run_ladder(task, clean=clean, defended=defended, preset=preset, seed=seed, out=out, config=config,
                          nodes=nodes, steps=steps, pool=pool, progress=progress, seeds=seeds, interval=interval)
    return run_attack(task, clean=clean, defended=defended, kind=kind, preset=preset, seed=seed, out=out,
                      config=config, nodes=nodes, steps=steps, pool=pool, progress=progress, seeds=seeds,
                      interval=interval, remote=remote)


def sweep(tasks, *, h=None, k=None, placement=None, nodes=None, preset: str = DEFAULT_PRESET, seed: int = 0, out=None,
          k_mode: str = "adaptive", tau: float = 0.9, steps: int | None = None, pool: int | None = None,
          progress: bool = True):
    """Grid over h x k x placement x node sets: teacher drop vs student drop per configuration, and the best one
    (largest student drop with teacher drop <= 0.1 dB). nodes: selector strings, "default" = defend's choice,
    "a,b" = several nodes at once. Returns a SweepResult; with `out`, report.json/.md and sweep-scatter.png."""
    if out is not None:
        check_report_dir(out)
    return run_sweep(tasks, h=h, k=k, placement=placement, nodes=nodes, preset=preset, seed=seed, out=out,
                     k_mode=k_mode, tau=tau, steps=steps, pool=pool, progress=progress)


def fingerprint_new_key() -> str:
    """A fresh random fingerprint key (128 bits, hex). Keep it secret: it is never stored in a model."""
    return new_key()


def fingerprint_mark(model_path, out_path, key: str, *, node=None, m: int = FP_DEFAULT_M,
                     strength_db: float | None = None, max_drop_db: float = FP_DEFAULT_MAX_DROP_DB,
                     task: str | None = None, bias_students: int = 0, progress: bool = False):
    """Mark a clean or ASVP-defended ONNX model with a secret key (a keyed perturbation in the top-m principal
    subspace of one feature). Its size: as strong as the teacher's budget `max_drop_db` allows (calibrated on
    training crops of the task), or, with `strength_db`, that PSNR away from the unmarked output on the probes.
    `bias_students` > 0: keep the key away from the directions along which that many quick students of the model
    deviate from it (more power against weakly trained copies on some tasks; docs/fingerprint.md).
    Returns a MarkResult. The key is not stored in the model; keep it (and the marked file) secret."""
    return _fp_mark_file(model_path, out_path, key, node=node, m=m, strength_db=strength_db,
                         max_drop_db=max_drop_db, task=task, bias_students=bias_students, progress=progress)


def fingerprint_calibrate(clean, defended, *, cache, task: str | None = None, seeds=REFERENCE_SEEDS,
                          steps: int = REFERENCE_STEPS, pool: int = REFERENCE_POOL, references=None,
                          test_key: str | None = None, progress: bool = True):
    """Store reference models (students of the clean teacher, and any `references`: ONNX paths or callables that
    never saw the marked outputs) in `cache`; verify removes their systematic bias. Key-independent."""
    return _fp_calibrate(clean, defended, cache=cache, task=task, seeds=seeds, steps=steps, pool=pool,
                         references=references, test_key=test_key, progress=progress)


def fingerprint_verify(suspect, *, clean, defended, key: str, alpha: float = FP_DEFAULT_ALPHA, cache=None,
                       task: str | None = None, references=None, name: str | None = None):
    """Was `suspect` (an ONNX file or a callable batch -> outputs, queried as a black box on probe images)
    distilled from the marked model `defended`? Returns a FingerprintResult: statistic, exact p-value, verdict."""
    return _fp_verify(suspect, clean, defended, key, alpha=alpha, cache=cache, task=task, references=references,
                      name=name)


def fingerprint_check(clean, served, task: str, workdir, *, key: str, steps: int = REFERENCE_STEPS,
                      pool: int = REFERENCE_POOL,
                      progress: bool = False) -> dict:
    """The demo's quick check: mark `served`, distil a student from it and one from `clean`, verify both."""
    return _fp_quick_check(clean, served, task, workdir, key=key, steps=steps, pool=pool, progress=progress)


# The serving commands' functions live in asvp.api_serving (docs/serving.md); asvp.api offers them like the rest.
triton_repo, serve, validate_served = api_serving.triton_repo, api_serving.serve, api_serving.validate_served
profile_served, fingerprint_verify_served = api_serving.profile_served, api_serving.fingerprint_verify_served

"""`asvp validate`: what the defence costs in quality, measured on one backend.

Clean and defended models run on the same images (the task's held-out images, or a user's folder of pairs)
through Polygraphy's Comparator (streaming: both runners active, one image at a time). Reported:

* PSNR/SSIM (scikit-image, through asvp.metrics) of clean and defended outputs against ground truth, and the
  teacher drop (clean - defended); the task's trivial baseline for context;
* defended-vs-clean output: PSNR (clean output as reference), max and mean |defended - clean| (Polygraphy's
  SimpleCompareFunc statistics);
* tap placement: the relative feature perturbation ||F' - F|| / ||F|| at each tap, F from the clean model
  with that tensor exposed as an extra output, F' the defended model's tap output; and the error of F'
  against `asvp_reference(F)` with the recorded config, relative to the reference perturbation;
* the singular-value spectrum at each defended node before/after (first image; see asvp.runtime.evaluation.spectrum);
* a verdict against thresholds (default: teacher PSNR drop <= 0.1 dB).

Images: runtime/evaluation/images.py (held-out pairs, or `--images DIR` with DIR/input and DIR/target).
"""
from __future__ import annotations

import contextlib
import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from polygraphy.comparator import Comparator
from tqdm import tqdm

from asvp.errors import AsvpError, first_line
from asvp.graph_passes.metadata import read_defence, read_export
from asvp.metrics import psnr_from_mse, psnr_ssim
from asvp.onnx_utils import get_metadata, image_io, load_model
from asvp.options import Thresholds
from asvp.runtime.engines import backends
from asvp.runtime.engines.sidecar import is_engine_path
from asvp.runtime.evaluation import spectrum as sp
from asvp.runtime.evaluation.images import DEFAULT_HELDOUT_SIZE, check_samples, heldout_samples, load_pairs
from asvp.runtime.evaluation.report import Section, fmt, jsonable, md_table, new_figure, write_report
from asvp.tasks import TASKS, get_task


# ---- task -----------------------------------------------------------------------------------------------

def resolve_task(task: str | None, clean_meta: dict, defended_meta: dict, have_images: bool):
    """(task name, TaskSpec or None, scale, size_multiple) from --task and the models' metadata."""
    clean_info = read_export(clean_meta)
    d_task = read_export(defended_meta).task
    recorded = clean_info.task or d_task
    if recorded and d_task and d_task != recorded:
        raise AsvpError(f"CLEAN is a {recorded!r} model but DEFENDED is a {d_task!r} model")
    if task is not None and task not in TASKS and task != recorded:
        get_task(task)  # raises the one-line "unknown task" error listing the bundled tasks
    if task is None:
        if not recorded:
            raise AsvpError("no --task given and the clean model records no asvp.task metadata; pass --task")
        task = recorded
    elif recorded in TASKS and task != recorded:
        raise AsvpError(f"--task {task} does not match the clean model, which was exported for task {recorded!r}")
    if task in TASKS:
        spec = get_task(task)
        if clean_info.scale is not None and clean_info.scale != spec.scale:
            raise AsvpError(f"the clean model upscales x{clean_info.scale} but task {task} is x{spec.scale}")
        return task, spec, spec.scale, spec.size_multiple
    if task != recorded:
        get_task(task)  # raises the one-line "unknown task" error listing the bundled tasks
    if not have_images:
        raise AsvpError(f"the models were exported for task {task!r}, which has no bundled held-out images: "
                        "give --images DIR (DIR/input/*, DIR/target/*)")
    # a user model exported with its own task label: geometry from its metadata, images from --images
    return task, None, clean_info.scale or 1, clean_info.size_multiple


def baseline(spec, scale: int, inp: np.ndarray) -> np.ndarray:
    """The task's trivial baseline (bicubic for SR, identity otherwise)."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(inp)
    if spec is not None:
        return spec.baseline_output(t).numpy()
    if scale == 1:
        return inp
    return F.interpolate(t, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1).numpy()


# ---- result ---------------------------------------------------------------------------------------------

@dataclass
class Check:
    name: str
    value: float | None
    op: str  # "<=" or ">="
    threshold: float
    passed: bool
    what: str = ""


@dataclass
class ValidationResult:
    task: str
    backend: str
    provider: str  # what actually ran the models (e.g. CPUExecutionProvider, TensorRT 10.x)
    clean_model: str
    defended_model: str
    images: str  # "heldout:<size>" or the folder
    n_images: int
    defence: dict
    clean_psnr: float
    clean_ssim: float
    defended_psnr: float | None
    defended_ssim: float | None
    teacher_psnr_drop: float | None
    teacher_ssim_drop: float | None
    baseline_psnr: float
    baseline_ssim: float
    output_psnr: float | None  # defended vs clean output
    output_max_abs_diff: float
    output_mean_abs_diff: float
    defended_finite: bool
    thresholds: dict
    checks: list = field(default_factory=list)  # [Check]
    passed: bool = False
    per_image: list = field(default_factory=list)
    tap: list = field(default_factory=list)
    spectrum: list = field(default_factory=list)
    spectrum_image: str | None = None
    notes: list = field(default_factory=list)
    report_dir: str | None = None

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"

    def failed_checks(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict:
        """Strict-JSON-ready (non-finite floats as "inf"/"nan" strings)."""
        d = asdict(self)
        d["verdict"] = self.verdict
        return jsonable(d)

    def summary_lines(self) -> list[str]:
        lines = [f"task {self.task}, {self.n_images} image(s) ({self.images}), backend {self.backend} ({self.provider})",
                 f"clean     PSNR {fmt(self.clean_psnr)} dB  SSIM {fmt(self.clean_ssim, '.4f')}   "
                 f"(baseline {fmt(self.baseline_psnr)} dB / {fmt(self.baseline_ssim, '.4f')})",
                 f"defended  PSNR {fmt(self.defended_psnr)} dB  SSIM {fmt(self.defended_ssim, '.4f')}   "
                 f"drop {fmt(self.teacher_psnr_drop, '.4f')} dB / {fmt(self.teacher_ssim_drop, '.5f')}",
                 f"defended vs clean output: PSNR {fmt(self.output_psnr, '.2f')} dB, "
                 f"max |diff| {fmt(self.output_max_abs_diff, '.3g')}, mean |diff| {fmt(self.output_mean_abs_diff, '.3g')}"]
        for t in self.tap:
            ref = f", error vs reference {fmt(t['reference_rel_error'], '.3g')}" if t.get("reference_rel_error") is not None else ""
            lines.append(f"tap {t['tap_output']}: ||F'-F||/||F|| = {fmt(t['rel_change']['mean'], '.4f')} "
                         f"(min {fmt(t['rel_change']['min'], '.4f')}, max {fmt(t['rel_change']['max'], '.4f')}){ref}")
        for c in self.checks:
            if c.name == "finite":
                lines.append(f"check finite: defended outputs {'all finite' if c.passed else 'contain NaN/inf'}: "
                             f"{'pass' if c.passed else 'FAIL'}")
                continue
            lines.append(f"check {c.name}: {fmt(c.value, '.4g')} {c.op} {c.threshold:g}: {'pass' if c.passed else 'FAIL'}")
        lines += [f"note: {n}" for n in self.notes]
        lines.append(f"verdict: {self.verdict}")
        if self.report_dir:
            lines.append(f"report: {self.report_dir}")
        return lines

    # -- report ------------------------------------------------------------------------------------------
    def to_sections(self) -> dict:
        data = self.to_dict()
        data.pop("report_dir", None)
        if self.spectrum:  # lives in its own section
            data.pop("spectrum", None)
        secs = {"validate": Section("Validation: quality cost of the defence", data, self._markdown(),
                                    {"quality": self.quality_figure()})}
        if self.spectrum:
            secs["spectrum"] = Section(
                "Singular-value spectrum at each defended node",
                {"image": self.spectrum_image, "nodes": self.spectrum},
                "Singular values of the feature matrix M = F.reshape(C, H*W) at each defended node for the first "
                f"image ({self.spectrum_image}): before = the clean model's feature; after = `asvp_reference` applied "
                "to it with the defended model's recorded config"
                + (" (and the defended model's own tap output)" if any(e.get("s_after_model") for e in self.spectrum) else "")
                + ". The dotted line marks the k actually amplified.\n\n"
                + _spectrum_table(self.spectrum),
                {"nodes": sp.plot_spectra(self.spectrum, self.spectrum_image or "")})
        return secs

    def _markdown(self) -> str:
        md = [f"Task **{self.task}**, {self.n_images} image(s) ({self.images}), backend `{self.backend}` "
              f"(ran on {self.provider}).  ",
              f"Clean: `{self.clean_model}`; defended: `{self.defended_model}`"
              + (f" ({self.defence.get('mode') or '?'} mode, {self.defence.get('placement')} placement, "
                 f"{len(self.defence.get('nodes') or [])} node(s))" if self.defence.get("defended") else " (no asvp.defended metadata)")
              + ".\n",
              f"**Verdict: {self.verdict}**\n",
              md_table(["model", "PSNR (dB)", "SSIM"], [
                  ["baseline", fmt(self.baseline_psnr), fmt(self.baseline_ssim, ".4f")],
                  ["clean", fmt(self.clean_psnr), fmt(self.clean_ssim, ".4f")],
                  ["defended", fmt(self.defended_psnr), fmt(self.defended_ssim, ".4f")],
                  ["drop (clean - defended)", fmt(self.teacher_psnr_drop, ".4f"), fmt(self.teacher_ssim_drop, ".5f")]]),
              md_table(["defended vs clean output", "value"], [
                  ["PSNR (dB)", fmt(self.output_psnr, ".2f")],
                  ["max abs diff", fmt(self.output_max_abs_diff, ".3g")],
                  ["mean abs diff", fmt(self.output_mean_abs_diff, ".3g")]]),
              md_table(["check", "value", "threshold", "result"],
                       [[c.what or c.name, ("yes" if c.passed else "no") if c.name == "finite" else fmt(c.value, ".4g"),
                         "yes" if c.name == "finite" else f"{c.op} {c.threshold:g}", "pass" if c.passed else "**FAIL**"]
                        for c in self.checks])]
        if self.tap:
            md.append("Tap feature perturbation (relative change ||F'-F||/||F||, mean over images; "
                      "reference error = ||F' - asvp_reference(F)|| / ||asvp_reference(F) - F||):\n")
            md.append(md_table(["tap output", "tensor", "mean", "min", "max", "reference error"],
                               [[t["tap_output"], t["tensor"], fmt(t["rel_change"]["mean"], ".4f"),
                                 fmt(t["rel_change"]["min"], ".4f"), fmt(t["rel_change"]["max"], ".4f"),
                                 fmt(t.get("reference_rel_error"), ".3g")] for t in self.tap]))
        md.append("Per image:\n")
        md.append(md_table(["image", "clean PSNR", "defended PSNR", "clean SSIM", "defended SSIM", "output PSNR", "max abs diff"],
                           [[r["name"], fmt(r["clean_psnr"]), fmt(r["defended_psnr"]), fmt(r["clean_ssim"], ".4f"),
                             fmt(r["defended_ssim"], ".4f"), fmt(r["output_psnr"], ".2f"), fmt(r["max_abs_diff"], ".3g")]
                            for r in self.per_image]))
        if self.notes:
            md.append("Notes:\n\n" + "\n".join(f"- {n}" for n in self.notes) + "\n")
        return "\n".join(md)

    def quality_figure(self):
        fig = new_figure(8.0, 3.4)
        ax1, ax2 = fig.subplots(1, 2)
        labels = ["baseline", "clean", "defended"]
        colors = ["#bbbbbb", "#4c72b0", "#dd8452"]
        for ax, vals, title, unit in (
                (ax1, [self.baseline_psnr, self.clean_psnr, self.defended_psnr], "PSNR vs ground truth", "dB"),
                (ax2, [self.baseline_ssim, self.clean_ssim, self.defended_ssim], "SSIM vs ground truth", "")):
            v = [x if x is not None and math.isfinite(x) else 0.0 for x in vals]
            bars = ax.bar(labels, v, color=colors)
            lo = min(v) - 0.15 * (max(v) - min(v) + 1e-9) if unit else max(0.0, min(v) - 0.05)
            ax.set_ylim(lo, max(v) + 0.1 * (max(v) - lo + 1e-9))
            ax.bar_label(bars, fmt="%.3f" if unit else "%.4f", fontsize=8)
            ax.set_title(title, fontsize=9)
            ax.set_ylabel(unit or "SSIM")
            ax.grid(True, axis="y", alpha=0.3)
        drop = self.teacher_psnr_drop if self.teacher_psnr_drop is not None else float("nan")
        fig.suptitle(f"{self.task}: teacher drop {drop:.4f} dB "
                     f"({self.verdict})", fontsize=10)
        return fig


def _spectrum_table(entries: list[dict]) -> str:
    rows = []
    for e in entries:
        s0, s1 = e["s_before"], e.get("s_after_reference")
        rows.append([e["tensor"], e["channels"], e.get("k_used", "-"), fmt(s0[0], ".4g"),
                     fmt(s1[0], ".4g") if s1 else "-", fmt(s0[-1], ".3g")])
    return md_table(["tensor", "C", "k used", "s_1 before", "s_1 after", "s_C"], rows)


# ---- the measurement ------------------------------------------------------------------------------------

def _threshold(name: str, v):
    if v is None:
        return None
    try:
        v = float(v)
    except (TypeError, ValueError):
        raise AsvpError(f"{name} must be a number, got {v!r}") from None
    if not math.isfinite(v):
        raise AsvpError(f"{name} must be finite, got {v}")
    return v


def _psnr_ssim(pred: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    with np.errstate(divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # identical images: PSNR = inf (mse 0)
        return psnr_ssim(pred, ref)



@dataclass
class _Plan:
    """Everything validate decides before any model runs (so bad input fails fast, with nothing written)."""

    clean_model: object  # onnx.ModelProto
    io: tuple  # (input name, clean output name, defended output name)
    info: object  # graph_passes.metadata.DefenceInfo
    task: str
    spec: object  # TaskSpec or None
    scale: int
    samples: list
    source: str
    taps: list  # defended nodes with a tap output
    feat_nodes: list  # defended nodes whose tensor exists in the clean model
    notes: list


def _plan(clean, defended, task, images, heldout_size) -> _Plan:
    for p in (clean, defended):
        if is_engine_path(p):
            raise AsvpError(f"{p}: validate takes ONNX models (metadata, node tensors); with --backend tensorrt "
                            "it builds their engines itself")
    cm, dm = load_model(clean), load_model(defended)
    (in_c, out_c), (in_d, out_d) = image_io(cm), image_io(dm)
    if in_c != in_d:
        raise AsvpError(f"the models' inputs differ: clean {in_c!r}, defended {in_d!r}")
    meta_c, meta_d = get_metadata(cm), get_metadata(dm)
    info = read_defence(meta_d)
    task, spec, scale, mult = resolve_task(task, meta_c, meta_d, images is not None)
    if images is not None:
        samples, source = load_pairs(images), str(images)
    else:
        if spec is None:
            raise AsvpError(f"task {task!r} has no bundled held-out images; give --images DIR")
        samples, source = heldout_samples(spec, heldout_size), f"heldout:{heldout_size}"
    check_samples(samples, scale, mult)

    notes = []
    d_outputs = [o.name for o in dm.graph.output]
    taps = info.taps
    for n in taps:
        if n.tap_output not in d_outputs:
            raise AsvpError(f"the defended model's metadata names tap output {n.tap_output!r}, which is not a graph output")
    if info.placement == "tap" and info.nodes and not taps:
        notes.append("tap placement but asvp.nodes names no tap outputs: tap perturbation not measured")
    clean_tensors = {o for node in cm.graph.node for o in node.output}
    feat_nodes = [n for n in info.nodes if n.tensor in clean_tensors]
    for n in info.nodes:
        if n.tensor not in clean_tensors:
            notes.append(f"defended node tensor {n.tensor!r} is not in the clean model: no spectrum/tap measure there")
    if info.nodes and info.config is None:
        notes.append("the defended model records no asvp.config: spectrum 'after' and reference error not computed")
    if info.config is not None and info.config.keyed:
        notes.append(f"variant {info.config.variant} (docs/variants.md): its reference needs the key, which the model "
                     "does not record: spectrum 'after' and reference error not computed")
    if not info.defended:
        notes.append("DEFENDED carries no asvp.defended metadata (not written by `asvp defend`?)")
    return _Plan(cm, (in_c, out_c, out_d), info, task, spec, scale, samples, source, taps, feat_nodes, notes)


def _image_row(smp, oc: np.ndarray, od: np.ndarray, cmp, spec, scale: int) -> dict:
    """Quality of one image pair: clean, defended and baseline against the target, defended against clean."""
    cp, cs = _psnr_ssim(oc, smp.target)
    bp, bs = _psnr_ssim(baseline(spec, scale, smp.input), smp.target)
    row = {"name": smp.name, "input_shape": list(smp.input.shape), "clean_psnr": cp, "clean_ssim": cs,
           "baseline_psnr": bp, "baseline_ssim": bs, "defended_psnr": None, "defended_ssim": None,
           "output_psnr": None, "max_abs_diff": cmp.max_absdiff, "mean_abs_diff": cmp.mean_absdiff,
           "defended_finite": bool(np.all(np.isfinite(od))), "sq_err": None}
    if row["defended_finite"]:
        dp, ds = _psnr_ssim(od, smp.target)
        op, _ = _psnr_ssim(od, oc)
        row.update(defended_psnr=dp, defended_ssim=ds, output_psnr=op,
                   sq_err=float(np.mean((np.clip(od, 0, 1).astype(np.float64) - np.clip(oc, 0, 1)) ** 2)))
    return row


class _FeatureStats:
    """Tap perturbation (every image) and spectra (first image) at the defended nodes."""

    def __init__(self, plan: _Plan, spectrum: bool):
        self.plan, self.spectrum = plan, spectrum
        self.rel = {n.tap_output: [] for n in plan.taps}
        self.ref_err = {n.tap_output: [] for n in plan.taps}
        self.entries, self.image = [], None

    def wanted(self, i: int) -> bool:
        return bool(self.plan.taps) or i == 0

    def add(self, i: int, name: str, feats: dict, defended_out: dict) -> None:
        cfg = self.plan.info.config
        if cfg is not None and cfg.keyed:  # a keyed variant's reference needs the key, which the model does not record
            cfg = None
        tap_outs = {n.tap_output: np.array(defended_out[n.tap_output], dtype=np.float32) for n in self.plan.taps}
        for n in self.plan.taps:
            if n.tensor not in feats:
                continue
            f, fp = feats[n.tensor], tap_outs[n.tap_output]
            if fp.shape != f.shape:
                raise AsvpError(f"tap output {n.tap_output!r} has shape {fp.shape} but tensor {n.tensor!r} has {f.shape}")
            self.rel[n.tap_output].append(sp.rel_change(fp, f))
            if cfg is not None:
                ref = sp.reference_perturb(f, cfg)
                denom = float(np.linalg.norm(ref - f))
                self.ref_err[n.tap_output].append(float(np.linalg.norm(fp - ref)) / denom if denom > 0 else math.nan)
        if i == 0 and self.spectrum:
            self.image = name
            for n in self.plan.feat_nodes:
                tap_feat = tap_outs.get(n.tap_output) if n.tap_output else None
                self.entries.append(sp.spectrum_entry(n, feats[n.tensor], cfg, tap_feat))

    def tap_rows(self) -> list[dict]:
        return [{"node": n.node, "tensor": n.tensor, "tap_output": n.tap_output,
                 "rel_change": sp.tap_stats(self.rel[n.tap_output]),
                 "reference_rel_error": float(np.nanmax(self.ref_err[n.tap_output])) if self.ref_err[n.tap_output] else None,
                 "per_image_rel_change": self.rel[n.tap_output]}
                for n in self.plan.taps if self.rel[n.tap_output]]


def _checks(thresholds: dict, finite: bool, drop, sdrop, o_psnr, max_abs: float, poly_pass: bool) -> list[Check]:
    """The verdict: every threshold given becomes one check (finite outputs are always checked)."""
    checks = [Check("finite", 1.0 if finite else 0.0, ">=", 1.0, finite, "defended outputs finite")]
    t = thresholds
    if t["max_teacher_drop"] is not None:
        checks.append(Check("max_teacher_drop", drop, "<=", t["max_teacher_drop"],
                            drop is not None and drop <= t["max_teacher_drop"], "teacher PSNR drop (dB)"))
    if t["max_ssim_drop"] is not None:
        checks.append(Check("max_ssim_drop", sdrop, "<=", t["max_ssim_drop"],
                            sdrop is not None and sdrop <= t["max_ssim_drop"], "teacher SSIM drop"))
    if t["min_output_psnr"] is not None:
        checks.append(Check("min_output_psnr", o_psnr, ">=", t["min_output_psnr"],
                            o_psnr is not None and o_psnr >= t["min_output_psnr"], "defended-vs-clean output PSNR (dB)"))
    if t["max_abs_diff"] is not None:
        checks.append(Check("max_abs_diff", max_abs, "<=", t["max_abs_diff"], poly_pass,
                            "max |defended - clean| (Polygraphy SimpleCompareFunc, atol)"))
    return checks


def validate(clean: str | os.PathLike, defended: str | os.PathLike, *, task: str | None = None,
             images: str | os.PathLike | None = None, backend: str = "onnxrt-cpu",
             heldout_size: int = DEFAULT_HELDOUT_SIZE, thresholds: Thresholds | None = None, spectrum: bool = True,
             out: str | os.PathLike | None = None, progress: bool = True) -> ValidationResult:
    """Run CLEAN and DEFENDED on the same images and judge the quality cost (see the module docstring).

    Every input is checked before anything runs; `out` (a report directory) is written only at the end.
    A failed verdict is a result (`.passed` False), not an exception. thresholds: default Thresholds() (teacher
    drop <= asvp.constants.MAX_TEACHER_DROP_DB).
    """
    given = (thresholds or Thresholds()).to_dict()
    thresholds = {name: _threshold(name, v) for name, v in given.items()}
    if thresholds["max_abs_diff"] is not None and thresholds["max_abs_diff"] < 0:
        raise AsvpError(f"max_abs_diff must be >= 0, got {given['max_abs_diff']}")
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise AsvpError(f"--out {out} exists and is not a directory")
    plan = _plan(clean, defended, task, images, heldout_size)
    (in_c, out_c, out_d), samples = plan.io, plan.samples

    shapes = {s.input.shape for s in samples}
    fixed = next(iter(shapes)) if len(shapes) == 1 else None  # lets TensorRT build for exactly this shape
    rc = backends.make_runner(clean, backend, input_shape=fixed, name="clean")
    rd = backends.make_runner(defended, backend, input_shape=fixed, name="defended")
    compare = _compare_func(out_c, out_d, thresholds["max_abs_diff"])
    feeds = [{in_c: s.input} for s in samples]
    # Clean features at the defended nodes (tap measure on every image, spectrum on the first), from the clean
    # model with those tensors exposed, running beside the two runners: every image is measured and dropped.
    need_feats = bool(plan.feat_nodes) and (bool(plan.taps) or spectrum)
    fr = sp.FeatureRunner(plan.clean_model, [n.tensor for n in plan.feat_nodes], backend, input_shape=fixed) \
        if need_feats else None
    stats = _FeatureStats(plan, spectrum)

    per_image, cmp_res, provider, poly_pass = [], [], backend, True
    stream = Comparator.run([rc, rd], data_loader=feeds, streaming=True)
    try:
        with fr if fr is not None else contextlib.nullcontext():
            for i, single in enumerate(tqdm(stream, total=len(feeds), desc=f"validate {plan.task} [{backend}]",
                                            unit="img", disable=not progress, leave=False)):
                smp = samples[i]
                (_, it_c), (_, it_d) = list(single.items())
                if i == 0:
                    provider = backends.actual_provider(rd, backend)
                oc = np.array(it_c[0][out_c], dtype=np.float32)
                od = np.array(it_d[0][out_d], dtype=np.float32)
                if oc.shape != smp.target.shape:
                    raise AsvpError(f"model output for {smp.name!r} is {oc.shape[2]}x{oc.shape[3]} but the target is "
                                    f"{smp.target.shape[2]}x{smp.target.shape[3]}: wrong task or scale for this model?")
                if od.shape != oc.shape:
                    raise AsvpError(f"output shapes differ: clean {oc.shape}, defended {od.shape}")
                if not np.all(np.isfinite(oc)):
                    raise AsvpError(f"the clean model produced NaN/inf on {smp.name!r}")
                acc = Comparator.compare_accuracy(single, compare_func=compare)
                r = next(iter(acc[0].values()))[0][out_c]
                cmp_res.append(r)
                poly_pass = poly_pass and bool(acc)
                per_image.append(_image_row(smp, oc, od, r, plan.spec, plan.scale))
                if fr is not None and stats.wanted(i):
                    stats.add(i, smp.name, fr.features({in_c: smp.input}), it_d[0])
    except AsvpError:
        raise
    except Exception as exc:
        raise AsvpError(f"inference failed on backend {backend}: {first_line(exc)}") from None
    finally:
        stream.close()  # deactivates both runners even when we stop early

    finite = all(r["defended_finite"] for r in per_image)
    notes = list(plan.notes)
    if not finite:
        notes.append("the defended model produced NaN/inf outputs; quality metrics cover finite outputs only")

    def mean(key):
        v = [r[key] for r in per_image if r[key] is not None]
        return float(np.mean(v)) if v else None

    c_psnr, c_ssim, d_psnr, d_ssim = mean("clean_psnr"), mean("clean_ssim"), mean("defended_psnr"), mean("defended_ssim")
    # Output PSNR over the set from the pooled MSE (a per-image mean would be inf as soon as one image is identical).
    o_psnr = None
    if finite:
        mse = float(np.mean([r["sq_err"] for r in per_image]))
        o_psnr = psnr_from_mse(mse)
    drop = (c_psnr - d_psnr) if finite else None
    sdrop = (c_ssim - d_ssim) if finite else None
    max_abs = float(max(r.max_absdiff for r in cmp_res))
    checks = _checks(thresholds, finite, drop, sdrop, o_psnr, max_abs, poly_pass)
    for r in per_image:
        del r["sq_err"]

    res = ValidationResult(
        task=plan.task, backend=backend, provider=provider, clean_model=str(clean), defended_model=str(defended),
        images=plan.source, n_images=len(samples), defence=plan.info.to_dict(), clean_psnr=c_psnr, clean_ssim=c_ssim,
        defended_psnr=d_psnr, defended_ssim=d_ssim, teacher_psnr_drop=drop, teacher_ssim_drop=sdrop,
        baseline_psnr=mean("baseline_psnr"), baseline_ssim=mean("baseline_ssim"), output_psnr=o_psnr,
        output_max_abs_diff=max_abs, output_mean_abs_diff=float(np.mean([r.mean_absdiff for r in cmp_res])),
        defended_finite=finite, thresholds=thresholds, checks=checks, passed=all(c.passed for c in checks),
        per_image=per_image, tap=stats.tap_rows(), spectrum=stats.entries, spectrum_image=stats.image, notes=notes)
    if out is not None:
        res.report_dir = str(write_report(out, res.to_sections()))
    return res


def _compare_func(out_c: str, out_d: str, atol: float | None):
    """Polygraphy's simple comparison of the image output only (tap outputs and exposed tensors are ignored)."""
    try:
        from polygraphy.comparator import SimpleCompareFunc as make
    except ImportError:  # Polygraphy < 0.50
        from polygraphy.comparator import CompareFunc

        make = CompareFunc.simple
    return make(atol=math.inf if atol is None else atol, rtol=0.0, check_shapes=True,
                find_output_func=lambda name, index, iter_result: [out_d] if name == out_c else None)

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

`precision` "fp16"/"bf16" runs both models (and the clean features) converted to that precision
(runtime/engines/reduced.py) and adds the teacher's fidelity against fp32, the inf/NaN counts and the ops that
stayed fp32 (runtime/evaluation/validate_precision.py).

Images: runtime/evaluation/images.py (held-out pairs, or `--images DIR` with DIR/input and DIR/target).
This module runs the models; the parts live beside it: validate_inputs (task, images, what can be measured),
validate_metrics (the per-image and per-node measures), validate_verdict (thresholds, checks), validate_result
(the result and its report).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
from polygraphy.comparator import Comparator
from tqdm import tqdm

from asvp.errors import AsvpError, first_line
from asvp.metrics import psnr_from_mse
from asvp.options import Thresholds
from asvp.runtime.engines import backends
from asvp.runtime.evaluation import spectrum as sp
from asvp.runtime.evaluation.images import DEFAULT_HELDOUT_SIZE
from asvp.runtime.evaluation.report import write_report
from asvp.runtime.evaluation.validate_inputs import plan_validation
from asvp.runtime.evaluation.validate_metrics import FeatureStats, compare_func, image_row
from asvp.runtime.evaluation.validate_precision import FP32, PrecisionCheck
from asvp.runtime.evaluation.validate_result import ValidationResult
from asvp.runtime.evaluation.validate_verdict import parse_thresholds, verdict_checks


def validate(clean: str | os.PathLike, defended: str | os.PathLike, *, task: str | None = None,
             images: str | os.PathLike | None = None, backend: str = "onnxrt-cpu",
             heldout_size: int = DEFAULT_HELDOUT_SIZE, thresholds: Thresholds | None = None, spectrum: bool = True,
             out: str | os.PathLike | None = None, progress: bool = True, precision: str = FP32) -> ValidationResult:
    """Run CLEAN and DEFENDED on the same images and judge the quality cost (see the module docstring).

    Every input is checked before anything runs; `out` (a report directory) is written only at the end.
    A failed verdict is a result (`.passed` False), not an exception. thresholds: default Thresholds() (teacher
    drop <= asvp.constants.MAX_TEACHER_DROP_DB).
    """
    thresholds = parse_thresholds(thresholds)
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise AsvpError(f"--out {out} exists and is not a directory")
    plan = plan_validation(clean, defended, task, images, heldout_size)
    (in_c, out_c, out_d), samples = plan.io, plan.samples

    shapes = {s.input.shape for s in samples}
    fixed = next(iter(shapes)) if len(shapes) == 1 else None  # lets TensorRT build for exactly this shape
    rc = backends.make_runner(clean, backend, input_shape=fixed, name="clean", precision=precision)
    rd = backends.make_runner(defended, backend, input_shape=fixed, name="defended", precision=precision)
    prec = PrecisionCheck(clean, precision, fixed) if precision != FP32 else None
    compare = compare_func(out_c, out_d, thresholds["max_abs_diff"])
    feeds = [{in_c: s.input} for s in samples]
    # Clean features at the defended nodes (tap measure on every image, spectrum on the first), from the clean
    # model with those tensors exposed, running beside the two runners: every image is measured and dropped.
    need_feats = bool(plan.feat_nodes) and (bool(plan.taps) or spectrum)
    fr = sp.FeatureRunner(plan.clean_model, [n.tensor for n in plan.feat_nodes], backend, input_shape=fixed,
                          precision=precision) if need_feats else None
    stats = FeatureStats(plan, spectrum)

    per_image, cmp_res, provider, poly_pass = [], [], backend, True
    stream = Comparator.run([rc, rd], data_loader=feeds, streaming=True)
    try:
        with fr if fr is not None else contextlib.nullcontext(), prec or contextlib.nullcontext():
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
                if prec is not None:
                    prec.add({in_c: smp.input}, out_c, it_c[0], it_d[0], (rc, rd))
                if not np.all(np.isfinite(oc)):
                    if prec is None:
                        raise AsvpError(f"the clean model produced NaN/inf on {smp.name!r}")
                    oc = np.nan_to_num(oc, nan=0.0, posinf=1.0, neginf=0.0)  # counted by prec; metrics need numbers
                acc = Comparator.compare_accuracy(single, compare_func=compare)
                r = next(iter(acc[0].values()))[0][out_c]
                cmp_res.append(r)
                poly_pass = poly_pass and bool(acc)
                per_image.append(image_row(smp, oc, od, r, plan.spec, plan.scale))
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
    precision_report = prec.report() if prec is not None else None
    checks = verdict_checks(thresholds, finite, drop, sdrop, o_psnr, max_abs, poly_pass, precision_report)
    for r in per_image:
        del r["sq_err"]

    res = ValidationResult(
        task=plan.task, backend=backend, provider=provider, clean_model=str(clean), defended_model=str(defended),
        images=plan.source, n_images=len(samples), defence=plan.info.to_dict(), clean_psnr=c_psnr, clean_ssim=c_ssim,
        defended_psnr=d_psnr, defended_ssim=d_ssim, teacher_psnr_drop=drop, teacher_ssim_drop=sdrop,
        baseline_psnr=mean("baseline_psnr"), baseline_ssim=mean("baseline_ssim"), output_psnr=o_psnr,
        output_max_abs_diff=max_abs, output_mean_abs_diff=float(np.mean([r.mean_absdiff for r in cmp_res])),
        defended_finite=finite, thresholds=thresholds, checks=checks, passed=all(c.passed for c in checks),
        per_image=per_image, tap=stats.tap_rows(), spectrum=stats.entries, spectrum_image=stats.image, notes=notes,
        precision=precision, precision_report=precision_report)
    if out is not None:
        res.report_dir = str(write_report(out, res.to_sections()))
    return res

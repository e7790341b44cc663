"""What `asvp validate` measures on each image: quality of clean, defended and the task's trivial baseline
against the target (PSNR/SSIM through asvp.metrics), defended against clean (Polygraphy's SimpleCompareFunc
statistics and PSNR), and, at the defended nodes, the tap perturbation ||F' - F|| / ||F|| with its error against
`asvp_reference(F)` and the singular-value spectra (asvp.runtime.evaluation.spectrum).
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from asvp.errors import AsvpError
from asvp.metrics import psnr_ssim
from asvp.runtime.evaluation import spectrum as sp
from asvp.runtime.evaluation.validate_inputs import ValidationPlan


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


def _psnr_ssim(pred: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    with np.errstate(divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # identical images: PSNR = inf (mse 0)
        return psnr_ssim(pred, ref)


def image_row(smp, oc: np.ndarray, od: np.ndarray, cmp, spec, scale: int) -> dict:
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


class FeatureStats:
    """Tap perturbation (every image) and spectra (first image) at the defended nodes."""

    def __init__(self, plan: ValidationPlan, spectrum: bool):
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
                if tap_feat is not None and not np.all(np.isfinite(tap_feat)):
                    tap_feat = None  # inf/NaN at a reduced precision: counted there, no spectrum of it
                if np.all(np.isfinite(feats[n.tensor])):
                    self.entries.append(sp.spectrum_entry(n, feats[n.tensor], cfg, tap_feat))

    def tap_rows(self) -> list[dict]:
        return [{"node": n.node, "tensor": n.tensor, "tap_output": n.tap_output,
                 "rel_change": sp.tap_stats(self.rel[n.tap_output]),
                 "reference_rel_error": _nanmax(self.ref_err[n.tap_output]) if self.ref_err[n.tap_output] else None,
                 "per_image_rel_change": self.rel[n.tap_output]}
                for n in self.plan.taps if self.rel[n.tap_output]]


def _nanmax(values: list) -> float:
    """The largest finite-or-inf value; NaN when every one is NaN (a zero reference perturbation, or NaN taps)."""
    kept = [v for v in values if not math.isnan(v)]
    return float(max(kept)) if kept else math.nan


def compare_func(out_c: str, out_d: str, atol: float | None):
    """Polygraphy's simple comparison of the image output only (tap outputs and exposed tensors are ignored)."""
    try:
        from polygraphy.comparator import SimpleCompareFunc as make
    except ImportError:  # Polygraphy < 0.50
        from polygraphy.comparator import CompareFunc

        make = CompareFunc.simple
    return make(atol=math.inf if atol is None else atol, rtol=0.0, check_shapes=True,
                find_output_func=lambda name, index, iter_result: [out_d] if name == out_c else None)

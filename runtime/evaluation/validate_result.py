"""What `asvp validate` found (ValidationResult) and how it reads: summary lines, strict JSON, the report's
validation section (tables, quality figure) and its spectrum section.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from asvp.runtime.evaluation import spectrum as sp
from asvp.runtime.evaluation.report import Section, fmt, jsonable, md_table, new_figure
from asvp.runtime.evaluation.validate_verdict import Check


@dataclass
class ValidationResult:
    """Everything `asvp validate` measured and judged; summary lines, strict JSON and report sections."""

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
    precision: str = "fp32"  # what the models computed in (fp16/bf16: converted, runtime/engines/reduced.py)
    precision_report: object = None  # validate_precision.PrecisionReport at fp16/bf16

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
        lines = [f"task {self.task}, {self.n_images} image(s) ({self.images}), backend {self.backend} ({self.provider})"
                 + (f", {self.precision}" if self.precision != "fp32" else ""),
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
        lines += self.precision_report.summary_lines() if self.precision_report is not None else []
        for c in self.checks:
            if c.name == "finite":
                lines.append(f"check finite: {c.what} {'yes' if c.passed else 'no (NaN/inf)'}: "
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
              (f"Computed in **{self.precision}** (converted: runtime/engines/reduced.py).  \n"
               + "".join(f"{x}  \n" for x in self.precision_report.summary_lines())
               if self.precision_report is not None else ""),
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

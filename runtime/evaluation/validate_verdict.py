"""The verdict of `asvp validate`: its thresholds (default Thresholds(): teacher PSNR drop <=
asvp.constants.MAX_TEACHER_DROP_DB) and the checks against them. A failed verdict is a result (`passed` False),
not an error; only a threshold that cannot be checked (not a finite number, a negative max_abs_diff) is refused.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from asvp.errors import AsvpError
from asvp.options import Thresholds


@dataclass
class Check:
    """One check of the verdict (a threshold, or the defended outputs being finite): the value measured, the
    threshold and whether it passed."""

    name: str
    value: float | None
    op: str  # "<=" or ">="
    threshold: float
    passed: bool
    what: str = ""


def _threshold(name: str, v):
    """A threshold as a finite float (None stays None: that check is off)."""
    if v is None:
        return None
    try:
        v = float(v)
    except (TypeError, ValueError):
        raise AsvpError(f"{name} must be a number, got {v!r}") from None
    if not math.isfinite(v):
        raise AsvpError(f"{name} must be finite, got {v}")
    return v


def verdict_checks(thresholds: dict, finite: bool, drop, sdrop, o_psnr, max_abs: float, poly_pass: bool,
                   precision=None) -> list[Check]:
    """The verdict: every threshold given becomes one check (finite outputs are always checked; at a reduced
    precision, every output of both models, taps included: `precision` is validate_precision.PrecisionReport)."""
    checks = [Check("finite", 1.0 if finite else 0.0, ">=", 1.0, finite, "defended outputs finite")]
    if precision is not None:
        checks.append(Check("finite", 1.0 if precision.finite else 0.0, ">=", 1.0, precision.finite,
                            f"every output of both models finite in {precision.precision}"))
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


def parse_thresholds(thresholds: Thresholds | None) -> dict:
    """The verdict's thresholds by name (None: not checked), each a finite number; default Thresholds() (teacher
    drop <= asvp.constants.MAX_TEACHER_DROP_DB). Refused in one line before anything runs."""
    given = (thresholds or Thresholds()).to_dict()
    parsed = {name: _threshold(name, v) for name, v in given.items()}
    if parsed["max_abs_diff"] is not None and parsed["max_abs_diff"] < 0:
        raise AsvpError(f"max_abs_diff must be >= 0, got {given['max_abs_diff']}")
    return parsed

"""Paired statistics for student drops: mean, 95 % confidence interval, and the verdict rule.

A distillation attack with several seeds trains, for each seed s, one student of the clean teacher and one of the
defended teacher that share s (initial weights and batch order) and the queries; the only difference is the
answers. The paired differences d_s = PSNR(clean-teacher student) - PSNR(defended-teacher student) cancel the
seed-to-seed spread of the students, which is what makes small effects measurable.

    interval "t"          mean(d) +- t_{(1+c)/2, n-1} * sd(d) / sqrt(n)  (Student's t on the paired differences)
    interval "bootstrap"  percentile interval of the mean over resamples of the n differences (seeded; with few
                          seeds it is narrower than the t interval and over-confident: prefer "t" for n < 10)

Verdict rule: a drop **counts** only when its interval excludes 0 (its lower end is > 0) and its mean is at least
the threshold (MIN_DROP_DB by default: smaller effects are not worth a defence even when real). `counts_above(r, x)`
applies the same rule to "the drop exceeds x" (e.g. the teacher's own drop).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as _sp

from asvp.constants import MIN_STUDENT_DROP_DB as MIN_DROP_DB
from asvp.errors import AsvpError

CONFIDENCE = 0.95
INTERVALS = ("t", "bootstrap")
BOOTSTRAP_RESAMPLES = 10000


@dataclass(frozen=True)
class PairedDrop:
    n: int
    mean: float  # mean paired drop (dB)
    sd: float | None  # standard deviation of the paired differences (None for n = 1)
    ci_low: float | None  # confidence interval of the mean (None for n = 1)
    ci_high: float | None
    confidence: float
    interval: str  # "t" or "bootstrap"
    threshold: float
    diffs: tuple  # the paired differences, in seed order
    counts: bool  # the verdict rule (interval excludes 0 and mean >= threshold); False for n = 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["diffs"] = list(self.diffs)
        return d

    def text(self) -> str:
        """'+0.05 dB [95% CI +0.01, +0.09], n=5' (no interval for n = 1)."""
        if self.ci_low is None:
            return f"{self.mean:+.2f} dB (n=1, no interval)"
        return (f"{self.mean:+.2f} dB [{100 * self.confidence:g}% CI {self.ci_low:+.2f}, {self.ci_high:+.2f}], "
                f"n={self.n}")


def counts_above(r: PairedDrop | dict, level: float = 0.0) -> bool:
    """The verdict rule for "the drop exceeds `level`": interval lower end > level and mean - level >= threshold."""
    g = r.to_dict() if isinstance(r, PairedDrop) else r
    if g.get("ci_low") is None:
        return False
    return g["ci_low"] > level and g["mean"] - level >= g["threshold"]


def paired_drop(clean, defended, *, threshold: float = MIN_DROP_DB, confidence: float = CONFIDENCE,
                interval: str = "t", resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> PairedDrop:
    """Paired drop statistics from per-seed metrics: clean[i] and defended[i] come from students sharing seed i."""
    c, d = np.asarray(clean, dtype=np.float64).ravel(), np.asarray(defended, dtype=np.float64).ravel()
    if len(c) != len(d) or len(c) == 0:
        raise AsvpError(f"paired statistics need the same non-zero number of clean and defended values, "
                        f"got {len(c)} and {len(d)}")
    if not (np.all(np.isfinite(c)) and np.all(np.isfinite(d))):
        raise AsvpError("paired statistics need finite values")
    if interval not in INTERVALS:
        raise AsvpError(f"unknown interval {interval!r}; choose one of: {', '.join(INTERVALS)}")
    if not 0 < confidence < 1:
        raise AsvpError(f"confidence must be in (0, 1), got {confidence!r}")
    diffs = c - d
    n, mean = len(diffs), float(diffs.mean())
    if n == 1:
        return PairedDrop(1, mean, None, None, None, confidence, interval, threshold, (float(diffs[0]),), False)
    sd = float(diffs.std(ddof=1))
    if interval == "t":
        half = float(_sp.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
        lo, hi = mean - half, mean + half
    else:
        rng = np.random.default_rng(seed)
        means = diffs[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
        lo, hi = (float(q) for q in np.quantile(means, [0.5 - confidence / 2, 0.5 + confidence / 2]))
    res = PairedDrop(n, mean, sd, lo, hi, confidence, interval, threshold, tuple(float(x) for x in diffs), False)
    return PairedDrop(**{**asdict(res), "diffs": res.diffs, "counts": counts_above(res)})


# ---- convergence ---------------------------------------------------------------------------------------------

PLATEAU_WINDOW = 0.3  # the last 30 % of the training steps ...
PLATEAU_TOL = 0.02  # ... improve the best validation loss by less than 2 % (relative): plateaued


def plateau(curve, *, window: float = PLATEAU_WINDOW, tol: float = PLATEAU_TOL) -> dict:
    """Whether a validation-loss curve [[step, loss], ...] has flattened.

    Criterion: the best loss reached in the last `window` of the steps improves on the best loss before it by less
    than `tol` (relative). A curve with fewer than 3 points, or none before the window, is not judged
    (plateaued None).
    """
    pts = [(float(s), float(v)) for s, v in curve]
    if len(pts) < 3 or not all(math.isfinite(v) for _, v in pts):
        return {"plateaued": None, "rel_improvement": None, "window": window, "tol": tol}
    last = pts[-1][0]
    cut = last - window * last
    before = [v for s, v in pts if s <= cut]
    after = [v for s, v in pts if s > cut]
    if not before or not after:
        return {"plateaued": None, "rel_improvement": None, "window": window, "tol": tol}
    b = min(before)
    rel = (b - min(after)) / b if b > 0 else 0.0
    return {"plateaued": bool(rel < tol), "rel_improvement": float(rel), "window": window, "tol": tol}

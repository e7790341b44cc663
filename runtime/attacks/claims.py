"""Judging the measurements: whether a student drop counts (paired intervals or the seed-noise margin), and which
of the paper's claims hold (computed, thresholds stated).
"""
from __future__ import annotations

import numpy as np

from asvp.constants import MAX_TEACHER_DROP_DB
from asvp.runtime.evaluation.stats import counts_above

TEACHER_DROP_LIMIT_DB = MAX_TEACHER_DROP_DB  # what "negligible" teacher degradation means here (the sweep's constraint too)
PAPER_STUDENT_DB = 4.0  # "students lose up to 4 dB PSNR"
PAPER_SSIM_PCT = (60.0, 75.0)  # "and 60-75% SSIM"


def convergence_summary(per_seed: list[dict], has_val: bool) -> dict:
    """Over the clean students of all seeds: mean PSNR to the clean teacher (held-out images), and with a
    validation split how many validation curves plateaued (stats.plateau) and the mean last-stretch improvement."""
    cl = [p["clean"] for p in per_seed]
    out = {"clean_psnr_to_teacher_mean": float(np.mean([c["psnr_to_teacher"] for c in cl])),
           "clean_psnr_mean": float(np.mean([c["psnr"] for c in cl])), "students": len(cl)}
    if has_val:
        pl = [c["plateau"] for c in cl if c.get("plateau") and c["plateau"]["plateaued"] is not None]
        out.update({"plateaued": sum(bool(p["plateaued"]) for p in pl), "judged": len(pl),
                    "rel_improvement_mean": float(np.mean([p["rel_improvement"] for p in pl])) if pl else None})
    return out


def noise_margin(noise: float | None) -> float:
    """A student drop counts as real only above this: 1.5 x the PSNR range of the clean students over seeds
    (about 2.5 standard deviations for 3 seeds), and at least 0.1 dB."""
    return max(0.1, 1.5 * noise) if noise is not None else 0.1


def paired_drop_of(r: dict, key: str) -> dict | None:
    """The paired-seed drop summary of `key` in an attack_task result, or None when it has no paired seeds (n = 1)."""
    p = (r.get("paired") or {}).get(key)
    return p if p and p.get("n", 1) > 1 else None


def is_paired(r: dict, key: str = "student") -> bool:
    """Whether the result's `key` drop has paired seeds (n > 1), so its verdict comes from the interval."""
    return paired_drop_of(r, key) is not None


def drop_counts(r: dict, key: str = "student", level: float = 0.0) -> bool:
    """Whether a student drop counts (exceeds `level`): with paired seeds, the interval rule of
    runtime.evaluation.stats (interval excludes level, mean - level >= threshold); otherwise drop > level + noise margin."""
    p = paired_drop_of(r, key)
    if p is not None:
        return counts_above(p, level)
    if inconclusive(r, key):
        return False
    return r["drops"][key]["db"] > level + r["noise_margin_db"]


def inconclusive(r: dict, key: str = "student") -> bool:
    """One seed pair and no measured seed noise (preset noise_seeds 0): the drop cannot be judged, and does not
    count. (Students of different seeds differ by tenths of a dB, so a lone pair decides nothing.)"""
    return paired_drop_of(r, key) is None and "seed_noise_db" in r and r["seed_noise_db"] is None


def mean_drop(r: dict, key: str = "student") -> float:
    """The paired mean drop when there are paired seeds, else the single-seed drop."""
    p = paired_drop_of(r, key)
    return p["mean"] if p is not None else r["drops"][key]["db"]


def drop_text(r: dict, key: str = "student") -> str:
    """The drop of `key` in words: the paired mean and interval, or the single drop with its margin."""
    p = paired_drop_of(r, key)
    if p is not None:
        return (f"{p['mean']:+.2f} dB [{100 * p['confidence']:g}% CI {p['ci_low']:+.2f}, {p['ci_high']:+.2f}, "
                f"n={p['n']}]")
    if inconclusive(r, key):
        return f"{r['drops'][key]['db']:+.2f} dB (1 seed, no noise estimate: inconclusive)"
    return f"{r['drops'][key]['db']:+.2f} dB (margin {r['noise_margin_db']:.2f})"


def claims(rows: list[dict]) -> list[dict]:
    """Which of the paper's claims hold in these measurements (computed, thresholds stated). With paired seeds
    (attack_task's seeds > 1) a drop counts by its confidence interval, otherwise by the seed-noise margin."""
    if not rows:
        return []
    out = []
    td = [(r["task"], r["drops"]["teacher"]["db"]) for r in rows]
    ok = [t for t, d in td if d <= TEACHER_DROP_LIMIT_DB]
    out.append({"claim": f"the defended teacher's own drop is negligible (<= {TEACHER_DROP_LIMIT_DB} dB PSNR)",
                "holds": len(ok) == len(td),
                "evidence": f"{len(ok)}/{len(td)} tasks; teacher drops: " + ", ".join(f"{t} {d:+.2f} dB" for t, d in td)})
    real = [r["task"] for r in rows if drop_counts(r)]
    out.append({"claim": "students distilled from the defended teacher are worse than from the clean one "
                         "(drop above seed noise; with paired seeds: interval excludes 0 and mean >= threshold)",
                "holds": len(real) == len(rows),
                "evidence": f"{len(real)}/{len(rows)} tasks count; student drops: "
                            + ", ".join(f"{r['task']} {drop_text(r)}" for r in rows)})
    amp = [(r["task"], mean_drop(r), r["drops"]["teacher"]["db"], r["noise_margin_db"]) for r in rows]
    more = [r["task"] for r in rows if drop_counts(r, "student", r["drops"]["teacher"]["db"])]
    out.append({"claim": "the defence hurts the distilled copy more than the teacher itself "
                         "(student drop > teacher drop + noise margin; with paired seeds: interval above the "
                         "teacher drop)",
                "holds": len(more) == len(amp),
                "evidence": f"{len(more)}/{len(amp)} tasks; student vs teacher drop: "
                            + ", ".join(f"{t} {s:+.2f} vs {d:+.2f} dB" for t, s, d, _ in amp)})
    best = max(rows, key=mean_drop)
    mx = mean_drop(best)
    out.append({"claim": f"student PSNR drop of paper scale (up to {PAPER_STUDENT_DB:g} dB; counted as holding "
                         f"if >= {PAPER_STUDENT_DB / 2:g} dB somewhere)",
                "holds": mx >= PAPER_STUDENT_DB / 2,
                "evidence": f"largest student drop {mx:+.2f} dB ({best['task']})"})
    ss = max(r["drops"]["student"]["ssim_pct"] for r in rows)
    out.append({"claim": f"student SSIM drop of {PAPER_SSIM_PCT[0]:g}-{PAPER_SSIM_PCT[1]:g}%",
                "holds": ss >= PAPER_SSIM_PCT[0], "evidence": f"largest student SSIM drop {ss:.1f}%"})
    both = [r["task"] for r in rows if r["drops"]["teacher"]["db"] <= TEACHER_DROP_LIMIT_DB and drop_counts(r)]
    out.append({"claim": "protection at negligible teacher cost (both of the first two on the same task)",
                "holds": len(both) == len(rows),
                "evidence": f"{len(both)}/{len(rows)} tasks" + (f": {', '.join(both)}" if both else "")})
    ad = [(r["task"], mean_drop(r, "student_adaptive"), mean_drop(r), r["noise_margin_db"])
          for r in rows if "student_adaptive" in r["drops"]]
    if ad:
        surv = [r["task"] for r in rows if "student_adaptive" in r["drops"] and drop_counts(r, "student_adaptive")]
        out.append({"claim": "the protection survives an adaptive attacker who knows ASVP is present",
                    "holds": len(surv) == len(ad),
                    "evidence": f"{len(surv)}/{len(ad)} tasks keep a drop above noise; adaptive vs naive student drop: "
                                + ", ".join(f"{t} {a:+.2f} vs {d:+.2f} dB" for t, a, d, _ in ad)})
    return out


def claims_text(cl: list[dict]) -> str:
    """The claims as a Markdown list."""
    return "\n".join(f"- **{'holds' if c['holds'] else 'does not hold'}**: {c['claim']}. {c['evidence']}." for c in cl)


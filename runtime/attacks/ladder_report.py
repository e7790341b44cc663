"""Rendering the attacker ladder (runtime/attacks/ladder.py): its tables, the report's text and the figure."""
from __future__ import annotations

import numpy as np

from asvp.runtime.evaluation.report import fmt, md_table, new_figure
from asvp.runtime.evaluation.stats import MIN_DROP_DB


def best_table(best: list[dict]) -> str:
    """The best attacker per task (ladder.best_attacker)."""
    header = ["task", "teacher drop dB", "best rung vs clean teacher (PSNR)", "best rung vs defended teacher (PSNR)",
              "best-attacker drop dB"]
    body = [[b["task"], fmt(b["teacher_drop_db"], "+.3f"), f"{b['best_rung_clean']} ({b['best_clean_psnr']:.2f})",
             f"{b['best_rung_defended']} ({b['best_defended_psnr']:.2f})", fmt(b["best_attacker_drop_db"], "+.3f")]
            for b in best]
    return md_table(header, body)


def ci_text(row: dict) -> str:
    """A ladder row's 95 % interval as text ("-" without paired seeds)."""
    if row["ci_low"] is None:
        return "-"
    return f"[{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]"


def ladder_table(rows: list[dict]) -> str:
    """One row per (task, rung): params, drops, interval, verdict (or why the rung does not apply)."""
    header = ["task", "rung", "student params", "teacher drop dB", "clean student PSNR", "student->teacher PSNR",
              "mean student drop dB", "95% CI", "n", "verdict"]
    body = [[r["task"], r["rung"], r["student_params"], fmt(r["teacher_drop_db"], "+.3f"),
             fmt(r["student_clean_psnr_mean"], ".2f"), fmt(r["student_psnr_to_teacher_mean"], ".2f"),
             fmt(r["mean_drop_db"], "+.3f") + (" (same answers)" if r["answers_identical"] and r["rung"] != "adaptive"
                                                else ""),
             ci_text(r), r["n"], r["verdict"]] if r["verdict"] != "n/a" else
            [r["task"], r["rung"], "-", "-", "-", "-", "-", "-", 0, "n/a: " + r["reason"]] for r in rows]
    return md_table(header, body)


def convergence_table(conv: list[dict]) -> str:
    """The output rung at the preset's budget and at `convergence` times it."""
    header = ["task", "steps S / 2S", "clean student PSNR S / 2S", "student->teacher PSNR S / 2S",
              "output drop S (95% CI)", "output drop 2S (95% CI)", "val plateaued S / 2S", "gain from 2S dB"]
    body = []
    for c in conv:
        a, b = c["budgets"]
        pl = lambda x: f"{x['plateaued']}/{x['judged']}" if x.get("judged") is not None else "-"  # noqa: E731
        dr = lambda x: (f"{x['mean_drop_db']:+.3f} " + ci_text(x)) if x else "-"  # noqa: E731
        body.append([c["task"], f"{a['steps']} / {b['steps']}", f"{a['clean_psnr_mean']:.2f} / {b['clean_psnr_mean']:.2f}",
                     f"{a['clean_psnr_to_teacher_mean']:.2f} / {b['clean_psnr_to_teacher_mean']:.2f}",
                     dr(a.get("row")), dr(b.get("row")), f"{pl(a)} / {pl(b)}",
                     f"{b['clean_psnr_mean'] - a['clean_psnr_mean']:+.2f}"])
    return md_table(header, body)


def diagnostic_table(diag: list[dict]) -> str:
    """The absorbability prediction per task against whether any rung's drop counts."""
    header = ["task", "defended node(s)", "unexplained (held-out)", "predicted", "rungs whose drop exceeds the teacher's",
              "agrees (any rung)", "best-attacker drop dB"]
    body = [[d["task"], ", ".join(d["nodes"]), fmt(100 * d["unexplained_heldout"], ".1f") + " %"
             if d["unexplained_heldout"] is not None else "-", d["predicted"],
             ", ".join(d["counting_rungs"]) or "none", {True: "yes", False: "no", None: "-"}[d["agrees"]],
             fmt(d.get("best_attacker_drop_db"), "+.3f")]
            for d in diag]
    return md_table(header, body)


def markdown(res) -> str:
    """The report section's text for a LadderResult: the recipe, the table and the sections that apply."""
    p = res.preset_detail
    tr = p.get("train", {})
    split = (f"{p['val_frac']:g} of them held out as a validation split" if p.get("val_frac")
             else "no validation split")
    seeds = (f"paired seeds {res.seed}..{res.seed + res.seeds - 1} ({res.interval} intervals)" if res.seeds > 1
             else f"one seed ({res.seed}; seed noise from {p.get('noise_seeds', 0)} extra clean students)")
    head = (f"Preset `{res.preset}`: queries {p.get('pool')} x crop {p.get('crop')} ({split}), {tr.get('steps')} "
            f"steps x batch {tr.get('batch')}, {seeds}, device {p.get('device')}. Drops = clean-teacher value - defended-teacher value (students: the student "
            f"of the clean teacher minus the student of the defended teacher with the same seed), PSNR on held-out "
            f"images. A drop counts when its 95% interval excludes 0 and its mean >= {MIN_DROP_DB} dB. "
            f"\"same answers\": the defended model returns exactly the clean answers to this rung (tap placement, "
            f"output rungs), so its students are the clean ones and the drop is 0 by construction.\n\n")
    md = head + ladder_table(res.rows)
    if res.best:
        md += ("\n\n### The best attacker\n\n" + best_table(res.best) + "\n\nMean held-out PSNR over the seeds of the "
               "best rung's students; the attacker who picks its recipe well loses the best-attacker drop.")
    if res.convergence:
        md += "\n\n### Convergence (output rung)\n\n" + convergence_table(res.convergence) + (
            "\n\nPlateaued: validation L1 (held-out queries vs the served answers) improved by less than 2 % over the "
            "last 30 % of the steps (runtime.evaluation.stats.plateau), counted over the clean students.")
    if res.diagnostic:
        md += ("\n\n### Absorbability diagnostic vs the ladder\n\n" + diagnostic_table(res.diagnostic)
               + "\n\nA rung's drop exceeds the teacher's when its interval lies above the teacher's drop and the "
               "difference is >= 0.1 dB (with tap placement the teacher's drop is 0, so this is the plain verdict). "
               "Agrees (any rung): predicted absorbable and no rung exceeds, or predicted not absorbable and some "
               "rung does (an absorbed perturbation leaves the copy no worse off than the teacher). The best-attacker drop (previous table) is what an attacker who picks its "
               "recipe well loses.")
    md += "".join(f"\n\nSkipped {s['task']}: {s['reason']}." for s in res.skipped)
    return md + "\n"


def ladder_figure(rows: list[dict]):
    """Paired student drops per rung and task, coloured by verdict, with the thresholds."""
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig = new_figure(max(6.4, 3.2 * len(tasks)), 4.0)
    axes = np.atleast_1d(fig.subplots(1, len(tasks), sharey=True))
    for ax, t in zip(axes, tasks):
        rs = [r for r in rows if r["task"] == t and r["verdict"] != "n/a"]
        x = np.arange(len(rs))
        m = np.array([r["mean_drop_db"] for r in rs])
        lo = np.array([r["mean_drop_db"] - r["ci_low"] if r["ci_low"] is not None else 0 for r in rs])
        hi = np.array([r["ci_high"] - r["mean_drop_db"] if r["ci_high"] is not None else 0 for r in rs])
        colors = ["tab:red" if r["verdict"].startswith("counts") else "tab:grey" for r in rs]
        ax.bar(x, m, color=colors, yerr=[lo, hi], capsize=3)
        ax.axhline(0, color="k", lw=0.8)
        ax.axhline(MIN_DROP_DB, color="tab:red", lw=0.8, ls=":")
        ax.axhline(rs[0]["teacher_drop_db"], color="tab:blue", lw=0.8, ls="--")
        ax.set_xticks(x, [r["rung"] for r in rs], rotation=60, fontsize=7)
        ax.set_title(t, fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].set_ylabel("student PSNR drop, mean and 95% CI (dB)")
    fig.suptitle(f"Attacker ladder: paired student drops (red: counts; dotted: {MIN_DROP_DB} dB; dashed: teacher "
                 f"drop)", fontsize=9)
    return fig

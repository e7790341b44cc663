"""The attacker ladder: every attack rung on the chosen tasks, paired seeds, one table (`asvp attack --kind ladder`).

Rungs (runtime/attacks/recipes.LADDER_RUNGS, or the preset's subset): output, fitnets-0.1, fitnets-1, fitnets-10,
direct, staged, adaptive, larger. Each rung is one attack_task with the same queries, seeds and batches for the
clean and the defended teacher; students whose recipe coincides between rungs are trained once (a StudentStore
per task, on disk under the report directory), and every (task, rung) result is cached, so an interrupted ladder
resumes where it stopped.

Per task x rung the table gives the teacher's drop, the mean paired student drop with its 95 % interval, and the
verdict (runtime.evaluation.stats: the drop counts when its interval excludes 0 and its mean >= MIN_DROP_DB; one
seed: "inconclusive", or the noise-margin rule marked "(margin)" when the preset measures seed noise). For the
adaptive rung the drop is that of the adaptive student.

Convergence (preset.convergence = c > 1): the output rung again at c x the steps, with the same seeds; the table
gives both budgets' clean-student PSNR, their distance to the clean teacher (PSNR of student vs teacher outputs
on the held-out images), the paired drop at both budgets, and how many validation curves plateaued
(stats.plateau on the held-out part of the attacker's own queries).

Diagnostic check: the absorbability diagnostic (runtime/evaluation/absorbability.py) at the defended node(s),
on the attacker's queries, predicts "absorbable" or not; the ladder reports it next to whether any rung's drop
counts, and whether the two agree (absorbable <-> no rung counts).
"""
from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from asvp.config import AsvpConfig
from asvp.errors import AsvpError
from asvp.runtime.attacks.claims import drop_counts, inconclusive, is_paired
from asvp.runtime.attacks.recipes import KINDS, LADDER_RUNGS
from asvp.runtime.attacks.run import attack_one, plan_run
from asvp.runtime.attacks.store import StudentStore
from asvp.runtime.attacks.sweep import absorbability_at
from asvp.runtime.evaluation.report import Section, fmt, md_table, new_figure, write_report
from asvp.runtime.evaluation.served import THREADS, torch_threads
from asvp.runtime.evaluation.stats import MIN_DROP_DB, counts_above
from asvp.runtime.evaluation.students import TrainBudget


def rung_drop_key(rung: str) -> str:
    """Which student drop a rung is judged by: the adaptive student's for `adaptive`, else the plain student's."""
    return "student_adaptive" if rung == "adaptive" else "student"


def verdict(r: dict, key: str = "student") -> str:
    """"counts" / "no" from the paired interval. One seed: with a measured seed noise (preset noise_seeds > 0)
    the noise-margin rule of claims.drop_counts, marked "(margin)"; without one "inconclusive" (the seed-to-seed
    spread of students is tenths of a dB, docs/protection.md, so one pair cannot decide)."""
    if inconclusive(r, key):
        return "inconclusive"
    counted = "counts" if drop_counts(r, key) else "no"
    return counted if is_paired(r, key) else counted + " (margin)"


def ladder_row(r: dict, rung: str) -> dict:
    """The table's row for one (task, rung) result of attack_task."""
    key = rung_drop_key(rung)
    p = (r.get("paired") or {}).get(key)
    single = r["drops"][key]["db"]
    per = (r.get("paired") or {}).get("per_seed") or [{"seed": None, **r["students"]}]
    dkey = "adaptive" if rung == "adaptive" else "defended"
    return {"task": r["task"], "rung": rung, "placement": r["placement"],
            "teacher_drop_db": r["drops"]["teacher"]["db"],
            "student_params": r["student_model"]["params"], "teacher_params": r["student_model"]["teacher_params"],
            "student_clean_psnr_mean": float(np.mean([s["clean"]["psnr"] for s in per])),
            "student_defended_psnr_mean": float(np.mean([s[dkey]["psnr"] for s in per])),
            "student_psnr_to_teacher_mean": float(np.mean([s["clean"]["psnr_to_teacher"] for s in per])),
            "mean_drop_db": p["mean"] if p else single, "ci_low": p["ci_low"] if p else None,
            "ci_high": p["ci_high"] if p else None, "n": p["n"] if p else 1,
            "ssim_drop_pct": r["drops"][key]["ssim_pct"], "verdict": verdict(r, key),
            "answers_identical": r.get("answers_identical", False), "seconds": r["seconds"],
            # the diagnostic's question: does the copy lose more than the teacher? (tap: teacher drop 0)
            "beyond_teacher": bool(p and counts_above(p, max(r["drops"]["teacher"]["db"], 0.0)))}


def na_row(task: str, rung: str, reason: str) -> dict:
    """The table's row for a rung that does not apply to this task's model (the reason says why)."""
    return {"task": task, "rung": rung, "verdict": "n/a", "reason": reason, "placement": None,
            "teacher_drop_db": None, "student_params": None, "teacher_params": None,
            "student_clean_psnr_mean": None, "student_defended_psnr_mean": None, "student_psnr_to_teacher_mean": None,
            "mean_drop_db": None, "ci_low": None, "ci_high": None, "n": 0, "ssim_drop_pct": None,
            "answers_identical": False, "seconds": 0.0, "beyond_teacher": False}


@dataclass
class LadderResult:
    preset: str
    seed: int
    seeds: int
    interval: str
    rungs: list
    rows: list = field(default_factory=list)  # ladder_row per (task, rung)
    best: list = field(default_factory=list)  # per task: the best attacker against each teacher (best_attacker)
    convergence: list = field(default_factory=list)  # per task
    diagnostic: list = field(default_factory=list)  # per task: prediction vs measured
    results: dict = field(default_factory=dict)  # task -> rung -> attack_task result
    skipped: list = field(default_factory=list)
    out: str | None = None
    seconds: float = 0.0
    preset_detail: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary_lines(self) -> list[str]:
        return [markdown(self), f"\n{len({r['task'] for r in self.rows})} task(s), {len(self.rungs)} rung(s) in "
                f"{self.seconds:.0f} s" + (f"; report in {self.out}" if self.out else "")]


def best_attacker(rows: list[dict], task: str) -> dict:
    """The attacker who picks the best recipe: the rung whose students of the clean teacher score highest (mean
    over seeds) against the rung whose students of the defended teacher do. Their difference is what the defence
    costs a rational attacker (descriptive: the two rungs differ, so it is not a paired difference)."""
    rs = [r for r in rows if r["task"] == task and r["verdict"] != "n/a"]
    bc = max(rs, key=lambda r: r["student_clean_psnr_mean"])
    bd = max(rs, key=lambda r: r["student_defended_psnr_mean"])
    return {"task": task, "teacher_drop_db": rs[0]["teacher_drop_db"], "best_rung_clean": bc["rung"],
            "best_clean_psnr": bc["student_clean_psnr_mean"], "best_rung_defended": bd["rung"],
            "best_defended_psnr": bd["student_defended_psnr_mean"],
            "best_attacker_drop_db": bc["student_clean_psnr_mean"] - bd["student_defended_psnr_mean"]}


def best_table(best: list[dict]) -> str:
    header = ["task", "teacher drop dB", "best rung vs clean teacher (PSNR)", "best rung vs defended teacher (PSNR)",
              "best-attacker drop dB"]
    body = [[b["task"], fmt(b["teacher_drop_db"], "+.3f"), f"{b['best_rung_clean']} ({b['best_clean_psnr']:.2f})",
             f"{b['best_rung_defended']} ({b['best_defended_psnr']:.2f})", fmt(b["best_attacker_drop_db"], "+.3f")]
            for b in best]
    return md_table(header, body)


def _ci(row: dict) -> str:
    if row["ci_low"] is None:
        return "-"
    return f"[{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]"


def ladder_table(rows: list[dict]) -> str:
    header = ["task", "rung", "student params", "teacher drop dB", "clean student PSNR", "student->teacher PSNR",
              "mean student drop dB", "95% CI", "n", "verdict"]
    body = [[r["task"], r["rung"], r["student_params"], fmt(r["teacher_drop_db"], "+.3f"),
             fmt(r["student_clean_psnr_mean"], ".2f"), fmt(r["student_psnr_to_teacher_mean"], ".2f"),
             fmt(r["mean_drop_db"], "+.3f") + (" (same answers)" if r["answers_identical"] and r["rung"] != "adaptive"
                                                else ""),
             _ci(r), r["n"], r["verdict"]] if r["verdict"] != "n/a" else
            [r["task"], r["rung"], "-", "-", "-", "-", "-", "-", 0, "n/a: " + r["reason"]] for r in rows]
    return md_table(header, body)


def convergence_table(conv: list[dict]) -> str:
    header = ["task", "steps S / 2S", "clean student PSNR S / 2S", "student->teacher PSNR S / 2S",
              "output drop S (95% CI)", "output drop 2S (95% CI)", "val plateaued S / 2S", "gain from 2S dB"]
    body = []
    for c in conv:
        a, b = c["budgets"]
        pl = lambda x: f"{x['plateaued']}/{x['judged']}" if x.get("judged") is not None else "-"  # noqa: E731
        dr = lambda x: (f"{x['mean_drop_db']:+.3f} " + _ci(x)) if x else "-"  # noqa: E731
        body.append([c["task"], f"{a['steps']} / {b['steps']}", f"{a['clean_psnr_mean']:.2f} / {b['clean_psnr_mean']:.2f}",
                     f"{a['clean_psnr_to_teacher_mean']:.2f} / {b['clean_psnr_to_teacher_mean']:.2f}",
                     dr(a.get("row")), dr(b.get("row")), f"{pl(a)} / {pl(b)}",
                     f"{b['clean_psnr_mean'] - a['clean_psnr_mean']:+.2f}"])
    return md_table(header, body)


def diagnostic_table(diag: list[dict]) -> str:
    header = ["task", "defended node(s)", "unexplained (held-out)", "predicted", "rungs whose drop exceeds the teacher's",
              "agrees (any rung)", "best-attacker drop dB"]
    body = [[d["task"], ", ".join(d["nodes"]), fmt(100 * d["unexplained_heldout"], ".1f") + " %"
             if d["unexplained_heldout"] is not None else "-", d["predicted"],
             ", ".join(d["counting_rungs"]) or "none", {True: "yes", False: "no", None: "-"}[d["agrees"]],
             fmt(d.get("best_attacker_drop_db"), "+.3f")]
            for d in diag]
    return md_table(header, body)


def markdown(res: LadderResult) -> str:
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


def run_ladder(task: str | None = None, clean=None, defended=None, preset: str = "quick", seed: int = 0, out=None,
               config: AsvpConfig | None = None, nodes=None, steps: int | None = None, pool: int | None = None,
               progress: bool = True, seeds: int | None = None, interval: str = "t",
               rungs=None, threads: int = THREADS) -> LadderResult:
    """Every rung of the ladder (or `rungs`; default: the preset's, else all) on one task or the preset's tasks;
    torch runs on `threads` threads meanwhile (restored afterwards)."""
    plan = plan_run(task, clean, defended, config, preset, steps, pool, seeds, interval, seed, nodes)
    p, seeds, tasks, skipped = plan.preset, plan.seeds, list(plan.tasks), list(plan.skipped)
    rungs = list(rungs or p.rungs or LADDER_RUNGS)
    bad = [r for r in rungs if r not in KINDS]
    if bad:
        raise AsvpError(f"unknown ladder rung(s) {bad}; choose from: {', '.join(LADDER_RUNGS)}")
    out_dir = Path(out) if out else None
    t0 = time.perf_counter()
    res = LadderResult(p.name, seed, seeds, interval, rungs, skipped=skipped,
                       out=str(out_dir) if out_dir else None, preset_detail=p.to_dict())
    absorb: dict = {}
    jobs = [(t, r) for t in tasks for r in rungs] + ([(t, "output-x%d" % p.convergence) for t in tasks]
                                                     if p.convergence > 1 else [])
    bar = tqdm(total=len(jobs), desc=f"ladder ({p.name})", disable=not progress)
    with torch_threads(threads), contextlib.ExitStack() as stack:
        # without a report directory the models, answers and students live in one scratch folder for all rungs
        root = out_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="asvp-ladder-")))
        for t in tasks:
            store = StudentStore(root / t / "students")
            got = {}
            for rung in rungs:
                bar.set_postfix(task=t, rung=rung)
                try:
                    got[rung] = attack_one(plan, t, rung, root, stack, False, store=store, name=f"ladder-{rung}")
                    res.rows.append(ladder_row(got[rung], rung))
                except AsvpError as e:  # a rung that cannot apply to this model (e.g. direct without a
                    res.rows.append(na_row(t, rung, str(e)))  # width-matched layer): recorded, not fatal
                bar.update()
            if p.convergence > 1:
                bar.set_postfix(task=t, rung=f"output x{p.convergence}")
                p2 = p.with_(train=TrainBudget(**{**asdict(p.train), "steps": p.train.steps * p.convergence}))
                long = attack_one(plan, t, "output", root, stack, False, preset=p2, store=store,
                                  name=f"ladder-output-x{p.convergence}")
                bar.update()
                base = got.get("output")
                got[f"output-x{p.convergence}"] = long
                res.convergence.append({"task": t, "budgets": [
                    _budget(base, p.train.steps) if base else _budget(None, p.train.steps),
                    _budget(long, p2.train.steps)]})
            res.results[t] = got
            if got:
                res.best.append(best_attacker(res.rows, t))
                res.diagnostic.append({**_diagnostic(t, next(iter(got.values())), rungs, res.rows, p, seed, absorb),
                                       "best_attacker_drop_db": res.best[-1]["best_attacker_drop_db"]})
            if out_dir is not None:  # the partial report after each task (the ladder may be interrupted)
                res.seconds = round(time.perf_counter() - t0, 1)
                _write(res, out_dir)
    bar.close()
    res.seconds = round(time.perf_counter() - t0, 1)
    if out_dir is not None:
        _write(res, out_dir)
    return res


def _budget(r: dict | None, steps: int) -> dict:
    if r is None:
        return {"steps": steps, "clean_psnr_mean": float("nan"), "clean_psnr_to_teacher_mean": float("nan")}
    c = r["convergence"]
    return {"steps": steps, "clean_psnr_mean": c["clean_psnr_mean"],
            "clean_psnr_to_teacher_mean": c["clean_psnr_to_teacher_mean"], "plateaued": c.get("plateaued"),
            "judged": c.get("judged"), "rel_improvement_mean": c.get("rel_improvement_mean"),
            "row": ladder_row(r, "output")}


def _diagnostic(task: str, r: dict, rungs: list, rows: list, p, seed: int, cache: dict) -> dict:
    """The absorbability prediction at the defended node(s) against whether any rung's drop counts."""
    tensors = [n["tensor"] for n in r["nodes"]]
    cfg = AsvpConfig.from_dict(r["config"]) if r.get("config") else AsvpConfig()
    try:
        ab = absorbability_at(task, Path(r["models"]["clean"]), tensors, cfg, p, seed, cache)
    except AsvpError as e:  # the diagnostic is a side result: say why it is missing
        ab = {"unexplained_heldout": None, "predicted": f"n/a ({e})"}
    counting = [x["rung"] for x in rows if x["task"] == task and x.get("beyond_teacher")]
    judged = any(x["verdict"] not in ("inconclusive", "n/a") for x in rows if x["task"] == task)
    pred = ab["predicted"]
    agrees = None
    if judged and pred in ("absorbable", "not absorbable"):
        agrees = (pred == "absorbable") == (not counting)
    return {"task": task, "nodes": tensors, "unexplained_heldout": ab.get("unexplained_heldout"),
            "subspace_variation": ab.get("subspace_variation"), "predicted": pred, "counting_rungs": counting,
            "agrees": agrees}


def _write(res: LadderResult, out_dir: Path) -> None:
    data = {k: v for k, v in res.to_dict().items() if k != "results"}
    write_report(out_dir, {"ladder": Section("Attacker ladder", data=data, markdown=markdown(res),
                                             figures={"drops": ladder_figure(res.rows)} if res.rows else {})})

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
from asvp.constants import DEFAULT_PRESET
from asvp.errors import AsvpError
from asvp.runtime.attacks.claims import drop_counts, inconclusive, is_paired
from asvp.runtime.attacks.recipes import KINDS, LADDER_RUNGS
from asvp.runtime.attacks.run import attack_one, plan_run
from asvp.runtime.attacks.store import StudentStore
from asvp.runtime.attacks.sweep import absorbability_at
from asvp.runtime.attacks.ladder_report import ladder_figure, markdown
from asvp.runtime.evaluation.report import Section, write_report
from asvp.runtime.evaluation.served import THREADS, torch_threads
from asvp.runtime.evaluation.stats import counts_above
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


def run_ladder(task: str | None = None, clean=None, defended=None, preset: str = DEFAULT_PRESET, seed: int = 0, out=None,
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

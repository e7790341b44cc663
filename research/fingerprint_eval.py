"""Evaluate the keyed distillation fingerprint (`asvp fingerprint`): teacher cost, TPR, FPR, ROC/AUC, p-values,
removal attempts. Writes research/results/fingerprint.json (one entry per task, written as each task finishes,
so a stopped run resumes with the missing tasks) and renders research/results/fingerprint.md from it.

    python -m research.fingerprint_eval --task sr [--task lowlight ...] [--profile cpu|tiny]
    python -m research.fingerprint_eval --render            # markdown from the JSON only
    python -m research.fingerprint_eval --key K --json R.json --task sr   # another evaluation key, its own file
    python -m research.fingerprint_eval --compare A.json B.json           # the same arms under each file's key
    python -m research.fingerprint_eval --max-drop 0.2 --json R.json --task sr   # another teacher budget, its own file
    python -m research.fingerprint_eval --bias-students 16 --json R.json --task derain   # the bias-avoiding key space

Every model is trained here on CPU, one thread, from the served models' answers through ONNX Runtime (the attack
harness: asvp.runtime.evaluation.served.make_queries / get_answers); a suspect is queried only on the verifier's
probe images. Seeds are fixed and listed in the output. The mark is calibrated to the teacher's budget
(fingerprint.mark_file: max drop 0.05 dB by default, the issue's budget, or --max-drop; 40 % of it on training-image
calibration crops); the teacher's cost is measured on the held-out images.

Positives (students of the MARKED model), profile cpu: output distillation at the quick budget (seeds 0-2), the
full budget (seed 0) and the long budget (1024 queries, 3000 steps; seed 0); the ladder's feature rungs fitnets-1, direct and staged (asvp.runtime.attacks.recipes.FEATURE_RUNGS,
the marked feature exposed to the attacker; seed 0); a smaller and a larger student (half / double width, seed 0).
Removal attempts: the adaptive rung's output filtering, post-hoc residual smoothing of a marked student's outputs,
fine-tuning it on ground truth, and training on a 50/50 mix of marked answers and ground-truth pairs.
Negatives (never saw the marked outputs): students of the clean teacher with the same seeds, budgets, rungs and
sizes, a model trained on ground truth, another architecture, the task's trivial baseline. Reference students
(seeds 100-103, quick budget, of the clean teacher) give the bias subspace that verify removes; they are not among
the negatives.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from asvp.errors import AsvpError
from asvp.exporter.export import export_bundled
from asvp.fingerprint import coefficients, key_statistic
from asvp.graph_passes.candidates import feature_candidates
from asvp.graph_passes.mark import PREFIX
from asvp.io import write_text_atomic
from asvp.metrics import psnr_ssim
from asvp.onnx_utils import load_model
from asvp.runtime import fingerprint as fp
from asvp.runtime.attacks.adaptive import filter_outputs, gaussian_blur as _gauss
from asvp.runtime.attacks.recipes import FEATURE_RUNGS as LADDER
from asvp.runtime.evaluation.served import ServedModel, make_queries, torch_threads as single_thread
from asvp.runtime.evaluation.students import STUDENTS, TrainBudget, predict, train_student
from asvp.tasks import get_task
from asvp.tasks.architectures import ARCHITECTURES, ResidualCNN
from asvp.tasks.data import TRAIN_IMAGES, random_crops

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "research" / "results" / "fingerprint.json"
KEY = "fingerprint-eval-key-0"  # a fixed, public evaluation key (a deployment uses `asvp fingerprint keygen`)
NULL_KEYS = 2000  # random keys per task over the negatives: the empirical p-value distribution
BUDGETS = {"quick": (96, 300), "full": (256, 800),  # (queries, steps), as the attack presets
           "long": (1024, 3000)}  # the query count and steps of the converged H100 run (batch 8 here, not 16)
REF_SEEDS = (100, 101, 102, 103)
OTHER_ARCH = {"sr": ("BicubicResCNN", {"ch": 16, "blocks": 2}), "lowlight": ("ResidualCNN", {"ch": 16, "blocks": 2}),
              "underwater": ("UNetLite", {"ch": 12}), "dehaze": ("ResidualCNN", {"ch": 16, "blocks": 2}),
              "derain": ("UNetLite", {"ch": 12})}
TEACHER_DROP_BUDGET = 0.05  # the target; --max-drop marks at another budget (a trade-off, not the target)
ALPHA = 0.01


class BicubicResCNN(nn.Module):
    """sr's 'other architecture': bicubic x2 then a plain residual CNN (no pixel shuffle)."""

    def __init__(self, ch=16, blocks=2):
        super().__init__()
        self.net = ResidualCNN(ch, blocks)

    def forward(self, x):
        return self.net(F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False))


def build(task: str, size: str, seed: int) -> nn.Module:
    """The task's student (students.STUDENTS) at the standard width, half (small) or double (large) width, or the
    task's other architecture."""
    torch.manual_seed(seed)
    if size == "other":
        arch, kw = OTHER_ARCH[task]
        return BicubicResCNN(**kw) if arch == "BicubicResCNN" else ARCHITECTURES[arch](**kw)
    arch, kw = STUDENTS[task]
    kw = dict(kw)
    if size == "large":
        kw["ch"] = kw["ch"] * 2
    elif size == "small":
        kw["ch"] = max(4, kw["ch"] // 2)
    return ARCHITECTURES[arch](**kw)


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, steps: int, seed: int, lr: float = 2e-3,
          batch: int = 8) -> nn.Module:
    """students.train_student's loop (Adam, one-cycle, L1), for any model."""
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    xa, ya = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(steps):
        idx = torch.randint(len(xa), (batch,), generator=g)
        loss = F.l1_loss(model(xa[idx]), ya[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def gt_pairs(task: str, pool: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    spec = get_task(task)
    crop = 64 - 64 % (spec.scale * spec.size_multiple)
    g = torch.Generator().manual_seed(seed)
    x, y = spec.make_pair(random_crops(TRAIN_IMAGES, pool, crop, g), g)
    return x.numpy().astype(np.float32), y.numpy().astype(np.float32)


def baseline(task: str, x: torch.Tensor) -> torch.Tensor:
    return get_task(task).baseline_output(x)


def smoothed(task: str, fn, sigma: float = 1.0):
    """Post-hoc output smoothing: Gaussian (sigma px) on the suspect's residual over the task's baseline."""
    def g(x):
        xt = torch.from_numpy(np.asarray(x, np.float32))
        y = torch.from_numpy(np.asarray(fn(x), np.float32))
        b = baseline(task, xt) if get_task(task).scale > 1 else xt
        return (b + _gauss(y - b, sigma)).numpy()
    return g


def fn_of(model):
    return lambda x: predict(model, torch.from_numpy(np.ascontiguousarray(x, np.float32)))


def teacher_psnr(path, h_in: np.ndarray, h_tgt: np.ndarray) -> float:
    with single_thread():
        return psnr_ssim(ServedModel(path).query(h_in, 2)[0], h_tgt)[0]


def plan(profile: str) -> tuple[list, list]:
    """(distilled arms, removal seeds): each arm (kind, size, budget, seed, negative too) is trained from the marked
    teacher (positive) and, where the flag says so, from the clean teacher (negative) with the same queries and
    seed."""
    if profile == "tiny":
        return [("output", "standard", "quick", s, True) for s in (0, 1)], (0,)
    if profile == "long-seeds":  # added to a cpu entry (--add): more seeds of the converged arm, marked and clean
        return [("output", "standard", "long", s, True) for s in (1, 2)], ()
    if profile == "long-rungs":  # added to a cpu entry (--add): the ladder's feature rungs at the long budget
        return [("fitnets-1", "standard", "long", 0, True), ("direct", "wide", "long", 0, False),
                ("staged", "standard", "long", 0, False)], ()
    arms = [("output", "standard", "quick", s, True) for s in (0, 1, 2)]
    arms += [("output", "standard", "full", 0, True), ("output", "standard", "long", 0, True)]
    arms += [("fitnets-1", "standard", "quick", 0, True), ("direct", "wide", "quick", 0, False),
             ("staged", "standard", "quick", 0, False)]
    arms += [("output", "small", "quick", 0, True), ("output", "large", "quick", 0, True)]
    return arms, (0,)


def extra_negatives(task: str, spec, clean: Path, evaluate) -> None:
    """The innocent models that never saw any teacher answer, or are of another family: a model trained on ground
    truth, another architecture distilled from the clean teacher, the task's trivial baseline."""
    xg, yg = gt_pairs(task, BUDGETS["quick"][0], 500)
    evaluate("trained on ground truth, standard, quick, seed 0", "negative",
             fn_of(train(build(task, "standard", 0), xg, yg, BUDGETS["quick"][1], 0)),
             {"kind": "ground truth", "size": "standard", "budget": "quick", "seed": 0})
    q = make_queries(task, BUDGETS["quick"][0], 64, 0)
    y = ServedModel(clean).query(q, 16)[0]
    evaluate(f"student of clean, other architecture ({OTHER_ARCH[task][0]}), seed 0", "negative",
             fn_of(train(build(task, "other", 0), q, y, BUDGETS["quick"][1], 0)),
             {"kind": "other architecture", "size": "other", "budget": "quick", "seed": 0})
    evaluate(f"trivial baseline ({spec.baseline})", "negative",
             lambda x: baseline(task, torch.from_numpy(np.asarray(x, np.float32))).numpy(),
             {"kind": "baseline", "size": "-", "budget": "-", "seed": None})


def run_task(task: str, profile: str, work: Path, log, existing: dict | None = None, key: str = KEY,
             max_drop: float = TEACHER_DROP_BUDGET, bias_students: int = 0) -> dict:
    """One task's entry under evaluation key `key`, the mark calibrated to the teacher budget `max_drop` dB (its key
    space kept away from the deviations of `bias_students` students of the clean teacher, if > 0). With
    `existing` (an entry of the same mark), only `profile`'s arms are trained and their rows appended to it: the mark,
    the probes and the references are recomputed and must match."""
    t0 = time.perf_counter()
    spec = get_task(task)
    clean = work / f"{task}.onnx"
    export_bundled(task, clean)
    h_in, h_tgt = (t.numpy() for t in spec.heldout())
    t_clean = teacher_psnr(clean, h_in, h_tgt)
    marked = work / f"{task}.fp.onnx"
    mres = fp.mark_file(clean, marked, key, task=task, max_drop_db=max_drop, bias_students=bias_students)
    t_marked = teacher_psnr(marked, h_in, h_tgt)
    log(f"{task}: mark {mres.mark['node']} ({mres.key_dim} key dims) {mres.mark['strength_db']} dB on the probes, "
        f"teacher {t_clean:.3f} -> {t_marked:.3f} dB held-out ({time.perf_counter() - t0:.0f} s)")
    if existing is not None and (existing["mark"]["eps"] != mres.mark["eps"] or existing["key_dim"] != mres.key_dim):
        raise SystemExit(f"{task}: the mark differs from the recorded entry's (eps {mres.mark['eps']} against "
                         f"{existing['mark']['eps']}): re-run the whole task instead of adding to it")
    v = fp.Verifier.open(clean, marked, task=task)
    u, key_check = v.check_key(key)
    rows = [dict(r) for r in existing["rows"]] if existing is not None else []

    def evaluate(name, label, fn, meta):
        out = v.query(fn, name)  # one pass over the probes: the verdict and the stored projections t
        res = v.result(out, name, key, u, key_check)
        psnr = psnr_ssim(fn(h_in), h_tgt)[0]
        t = fp.projections(out, v.base, v.delta)
        row = {"name": name, "label": label, **meta, "c": res.statistic, "p": res.p_value, "flagged": res.flagged,
               "beta": res.beta, "psnr": psnr, "t": t.tolist()}
        rows.append(row)
        log(f"  {label:8s} {name:58s} c={res.statistic:+.3f} p={res.p_value:.2g} beta={res.beta:+.2f} "
            f"psnr={psnr:.2f} ({time.perf_counter() - t0:.0f} s)")
        return row

    # the feature the ladder's feature rungs read: the marked tensor (as the network consumes it) from the marked
    # model, the same tensor from the clean one
    cands = [c.output for c in feature_candidates(load_model(clean))]
    depth = cands.index(v.info.tensor) / max(len(cands) - 1, 1) if v.info.tensor in cands else 0.5
    arms, rseeds = plan(profile)
    skipped = []
    with single_thread():
        for name, fn in fp.train_reference_students(clean, task, REF_SEEDS, BUDGETS["quick"][1],
                                                    BUDGETS["quick"][0]).items():
            v.refs[name] = v.project(fn, name)
        log(f"  {len(v.refs)} reference students ({time.perf_counter() - t0:.0f} s)")
        marked_students = {}
        for kind, size, bname, s, with_negative in arms:
            pool, steps = BUDGETS[bname]
            q = make_queries(task, pool, 64, s)
            for label, path in (("positive", marked), ("negative", clean))[: 2 if with_negative else 1]:
                who = "marked" if label == "positive" else "clean"
                feat = PREFIX + "marked" if label == "positive" else v.info.tensor
                served = ServedModel(path, expose=[feat] if kind in LADDER else None,
                                     read=[feat] if kind in LADDER else None)
                y, fs = served.query(q, 16)
                t1 = time.perf_counter()
                try:
                    if kind in LADDER:
                        meta = [{"name": v.info.tensor, "hw": tuple(fs[0].shape[-2:]), "depth": depth}]
                        budget = TrainBudget(**{**asdict(TrainBudget(steps=steps, batch=8)), **LADDER[kind]})
                        m, _ = train_student(task, q, y, seed=s, budget=budget, feats=[f.astype(np.float32) for f in fs],
                                             feat_meta=meta, progress=False)
                    else:
                        m = train(build(task, size, s), q, y, steps, s)
                except AsvpError as exc:
                    skipped.append({"arm": f"{kind}, {size}, {bname}, seed {s}", "why": str(exc)})
                    log(f"  skipped {kind} {size} {bname} seed {s}: {exc}")
                    break
                evaluate(f"student of {who}, {kind}, {size}, {bname}, seed {s}", label, fn_of(m),
                         {"kind": kind, "size": size, "budget": bname, "seed": s,
                          "train_s": round(time.perf_counter() - t1, 1)})
                if label == "positive":
                    marked_students[(kind, size, bname, s)] = (m, q, y)
        if existing is None:  # adding arms (existing): the recorded entry has these, and the removal attempts
            extra_negatives(task, spec, clean, evaluate)
        else:
            rseeds = ()
        # removal attempts on students of the marked model
        for s in rseeds:
            pool, steps = BUDGETS["quick"]
            base_m, q, y = marked_students[("output", "standard", "quick", s)]
            evaluate(f"adaptive: trained on filtered answers, seed {s}", "removal",
                     fn_of(train(build(task, "standard", s), q, filter_outputs(task, y, q), steps, s)),
                     {"kind": "adaptive filter", "size": "standard", "budget": "quick", "seed": s})
            evaluate(f"output smoothing sigma 1.0 of the marked student, seed {s}", "removal",
                     smoothed(task, fn_of(base_m)),
                     {"kind": "output smoothing", "size": "standard", "budget": "quick", "seed": s})
            xg, yg = gt_pairs(task, pool, 600 + s)
            ft = build(task, "standard", s)
            ft.load_state_dict(base_m.state_dict())
            evaluate(f"fine-tuned on ground truth ({steps} steps, lr 1e-3), seed {s}", "removal",
                     fn_of(train(ft, xg, yg, steps, s, lr=1e-3)),
                     {"kind": "fine-tune on ground truth", "size": "standard", "budget": "quick", "seed": s})
            evaluate(f"trained on 50/50 marked answers + ground truth, seed {s}", "removal",
                     fn_of(train(build(task, "standard", s), np.concatenate([q, xg]), np.concatenate([y, yg]),
                                 steps, s)),
                     {"kind": "mix clean data 50%", "size": "standard", "budget": "quick", "seed": s})
    # empirical null: the negatives under random keys (the reference subspace is key-independent)
    rng = np.random.default_rng(12345)
    null_p = []
    negs = [r for r in rows if r["label"] == "negative"]
    for r in negs:
        a = coefficients(np.asarray(r["t"]), v.gram, v.nuisance(exclude=r["name"]))
        for _ in range(NULL_KEYS // max(1, len(negs))):
            w = rng.standard_normal(len(u))
            null_p.append(key_statistic(a, w / np.linalg.norm(w))[1])
    seconds = round(time.perf_counter() - t0, 1)
    entry = {"task": task, "profile": profile, "key": key, "max_drop_db": max_drop, "bias_students": bias_students,
             "key_dim": v.info.key_dim,
             "mark": mres.mark,
             "teacher_psnr": {"clean": t_clean, "marked": t_marked}, "teacher_drop_db": t_clean - t_marked,
             "references": sorted(v.refs), "references_t": {k: np.asarray(t).tolist() for k, t in v.refs.items()},
             "rows": rows, "skipped": skipped,
             "null_random_keys": {"count": len(null_p), "fpr_at_0.01": float(np.mean(np.asarray(null_p) < 0.01)),
                                  "fpr_at_0.05": float(np.mean(np.asarray(null_p) < 0.05)),
                                  "ks_max_gap": ks_uniform(null_p)},
             "seconds": seconds}
    if existing is not None:
        entry.update(profile=existing["profile"], skipped=existing["skipped"] + skipped,
                     seconds=round(existing["seconds"] + seconds, 1),
                     added=existing.get("added", []) + [{"profile": profile, "seconds": seconds, "written": dt.datetime.now(
                         dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}])
    return entry


def ks_uniform(ps) -> float:
    p = np.sort(np.asarray(ps))
    n = len(p)
    if n == 0:
        return math.nan
    return float(max(np.max(np.arange(1, n + 1) / n - p), np.max(p - np.arange(n) / n)))


def auc(pos, neg) -> float:
    """P(statistic of a positive > statistic of a negative), ties count 1/2."""
    if not pos or not neg:
        return math.nan
    pos, neg = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float(np.mean((pos > neg) + 0.5 * (pos == neg)))


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (math.nan, math.nan)
    ph = k / n
    d = 1 + z * z / n
    c = (ph + z * z / (2 * n)) / d
    h = z * math.sqrt(ph * (1 - ph) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def p_quantiles(ps) -> str:
    if not ps:
        return "-"
    q = np.quantile(np.asarray(ps), [0.0, 0.25, 0.5, 0.75, 1.0])
    return " / ".join(f"{x:.2g}" for x in q)


def summarize(r: dict) -> dict:
    """Rates, AUC and the verdict on the targets for one task's entry."""
    rows = r["rows"]
    groups = {lab: [x for x in rows if x["label"] == lab] for lab in ("positive", "negative", "removal")}
    k = {lab: sum(x["flagged"] for x in g) for lab, g in groups.items()}
    # AUC on -log10 p (monotone in c for a fixed key dimension)
    a = auc([x["c"] for x in groups["positive"]], [x["c"] for x in groups["negative"]])
    fpr_hi = wilson(k["negative"], len(groups["negative"]))[1]
    detects = a >= 0.99 and k["negative"] / max(1, len(groups["negative"])) <= 0.01
    budget = max_drop_of(r)
    # the budget is what the owner calibrates to: a mark calibrated to more is not within it, even where the
    # held-out images happen to show a small drop (the cross term with the teacher's error can be negative there)
    return {"groups": groups, "k": k, "auc": a, "fpr_upper": fpr_hi,
            "met": detects and r["teacher_drop_db"] <= TEACHER_DROP_BUDGET and budget <= TEACHER_DROP_BUDGET,
            # the AUC and FPR targets at the entry's own budget (above the 0.05 dB: a trade-off, not the target)
            "met_at_budget": detects and r["teacher_drop_db"] <= budget}


def bias_of(entry: dict) -> int:
    """How many bias students a task entry's (or a results file's) key space avoids; 0 (the default space) for those
    written before --bias-students."""
    return int(entry.get("bias_students", 0))


def max_drop_of(entry: dict) -> float:
    """The teacher budget a task entry's (or a results file's) mark was calibrated to; the default for those written
    before --max-drop."""
    return float(entry.get("max_drop_db", TEACHER_DROP_BUDGET))


def target_cell(sm: dict, budget: float) -> str:
    if sm["met"]:
        return "met"
    if budget > TEACHER_DROP_BUDGET and sm["met_at_budget"]:
        return f"NOT met (AUC and FPR met at {budget:g} dB)"
    return "NOT met"


def budget_cells(positives: list[dict]) -> list[str]:
    """Per attacker budget (BUDGETS' order): "flagged/students (p median)" of those rows, or "-" when none."""
    cells = []
    for b in BUDGETS:
        g = [x for x in positives if x.get("budget") == b]
        cells.append(f"{sum(x['flagged'] for x in g)}/{len(g)} (p {np.median([x['p'] for x in g]):.2g})" if g else "-")
    return cells


def compare_keys(files: list[dict]) -> str:
    """Markdown: the same arms under several evaluation keys or teacher budgets (one results file each), per task.
    Only the models every file evaluated count (by name), so a file with extra arms (--add) is compared on the common
    ones. The budget column appears when the files' budgets differ."""
    tasks = [t for t in files[0]["tasks"] if all(t in f["tasks"] for f in files[1:])]
    budgets = len({max_drop_of(f["tasks"][t]) for f in files for t in tasks}) > 1
    spaces = len({bias_of(f["tasks"][t]) for f in files for t in tasks}) > 1
    out = ["| task | key | " + ("max drop dB | " if budgets else "") + ("bias students | " if spaces else "") +
           "mark vs clean on probes dB | teacher drop dB | TPR | FPR | AUC (c) | " + " | ".join(BUDGETS) + " |",
           "|---" * (7 + budgets + spaces + len(BUDGETS)) + "|"]
    for task in tasks:
        common = set.intersection(*({x["name"] for x in f["tasks"][task]["rows"]} for f in files))
        for f in files:
            e = f["tasks"][task]
            r = summarize({**e, "rows": [x for x in e["rows"] if x["name"] in common]})
            g = r["groups"]
            cells = budget_cells(g["positive"])
            out.append(f"| {task} | `{e.get('key', KEY)}` | " + (f"{max_drop_of(e):g} | " if budgets else "") +
                       (f"{bias_of(e)} | " if spaces else "") +
                       f"{e['mark']['strength_db']} | {e['teacher_drop_db']:+.4f} | "
                       f"{r['k']['positive']}/{len(g['positive'])} | {r['k']['negative']}/{len(g['negative'])} | "
                       f"{r['auc']:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def render(data: dict) -> str:
    out = ["# Keyed distillation fingerprint: measured\n",
           f"Written by `python -m research.fingerprint_eval --task TASK --profile PROFILE` "
           f"({data.get('written', '?')}; CPU, one thread, on a shared 2-core machine). Key `{data.get('key', KEY)}` (public, for the "
           f"evaluation only); alpha {ALPHA}; p-values exact under 'the suspect never saw the marked outputs' "
           f"(the key is uniform and independent of the suspect; the reference subspace removed is key-free). "
           f"Intervals: Wilson 95 %. Targets (issue 14): AUC >= 0.99, FPR <= 1 % at p < 0.01, teacher drop <= "
           f"{TEACHER_DROP_BUDGET} dB on the held-out images. The mark's budget (`--max-drop`): "
           f"{max_drop_of(data):g} dB." + (f" Key space (`--bias-students {bias_of(data)}`): kept away from the "
           f"deviations of {bias_of(data)} quick students of the clean teacher; verify removes no reference span."
           if bias_of(data) else "") + "\n",
           "| task | profile | mark node (key dims) | mark vs clean on probes dB | teacher clean -> marked dB | "
           "teacher drop dB | TPR (distilled) | FPR (innocent) | AUC (c) | removal attempts flagged | "
           "null: random-key FPR at 0.01 (n) | targets |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for task, r in data["tasks"].items():
        sm = summarize(r)
        g, k = sm["groups"], sm["k"]
        lo, hi = wilson(k["positive"], len(g["positive"]))
        flo, fhi = wilson(k["negative"], len(g["negative"]))
        nk = r["null_random_keys"]
        out.append(f"| {task} | {r['profile']} | {r['mark']['node']} ({r['key_dim']}) | {r['mark']['strength_db']} | "
                   f"{r['teacher_psnr']['clean']:.3f} -> {r['teacher_psnr']['marked']:.3f} | {r['teacher_drop_db']:+.4f} | "
                   f"{k['positive']}/{len(g['positive'])} [{lo:.2f}, {hi:.2f}] | "
                   f"{k['negative']}/{len(g['negative'])} [{flo:.2f}, {fhi:.2f}] | {sm['auc']:.3f} | "
                   f"{k['removal']}/{len(g['removal'])} | {nk['fpr_at_0.01']:.4f} ({nk['count']}) | "
                   f"{target_cell(sm, max_drop_of(r))} |")
    out += ["\nA rate's interval is over the few models trained per task: a TPR of 0/n or n/n at n <= 9 is "
            "weak evidence either way. 'targets met' needs AUC >= 0.99, an observed FPR <= 1 % and the teacher drop "
            "<= 0.05 dB, for a mark calibrated within 0.05 dB; with <= 12 innocent models per task the FPR's upper "
            "bound stays far above 1 %, so the calibration claim rests on the exact null (checked by the random-key column), not on these counts.\n",
            "Students of the marked model flagged, by the attacker's budget (queries x steps; quick includes the "
            "feature rungs and the smaller and larger students), with the median p:\n",
            "| task | " + " | ".join(f"{b} ({q} x {st})" for b, (q, st) in BUDGETS.items()) + " |",
            "|---" * (len(BUDGETS) + 1) + "|"]
    for task, r in data["tasks"].items():
        out.append(f"| {task} | " + " | ".join(budget_cells(summarize(r)["groups"]["positive"])) + " |")
    out += ["",
            "p-value quantiles (min / 25 % / median / 75 % / max) per arm:\n",
            "| task | positives | negatives | removal |", "|---|---|---|---|"]
    for task, r in data["tasks"].items():
        g = summarize(r)["groups"]
        out.append(f"| {task} | " + " | ".join(p_quantiles([x["p"] for x in g[lab]])
                                                for lab in ("positive", "negative", "removal")) + " |")
    for task, r in data["tasks"].items():
        cost = r["mark"].get("cost") or {}
        out += [f"\n## {task}\n", f"Mark at `{r['mark']['node']}`, m = {r['mark']['m']} ({r['key_dim']} key "
                f"dimensions, {cost.get('removed_directions', 0)} cost-bearing directions removed), eps "
                f"{r['mark']['eps']:.4g}, drop on the calibration crops {cost.get('calibration_drop_db', '?')} dB "
                f"(target {cost.get('target_db', '?')}); held-out drop {r['teacher_drop_db']:+.4f} dB. References: "
                f"{', '.join(r['references'])}; {r['seconds']:.0f} s.\n",
                "| label | model | c | p | flagged | beta | held-out PSNR dB |", "|---|---|---|---|---|---|---|"]
        for x in r["rows"]:
            out.append(f"| {x['label']} | {x['name']} | {x['c']:+.3f} | {x['p']:.2g} | {'yes' if x['flagged'] else 'no'} "
                       f"| {x['beta']:+.2f} | {x['psnr']:.2f} |")
        for sk in r.get("skipped", []):
            out.append(f"\nSkipped: {sk['arm']}: {sk['why']}")
    return "\n".join(out) + "\n"


def main() -> int:
    global RESULTS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", action="append", default=[], help="task to evaluate (repeat); results are merged")
    ap.add_argument("--add", action="store_true",
                    help="add the profile's arms to the task's recorded entry (same mark) instead of replacing it")
    ap.add_argument("--profile", default="cpu", choices=("cpu", "tiny", "long-seeds", "long-rungs"),
                    help="cpu: every arm (about 5-15 min a task on one core); tiny: two seeds, quick only; long-seeds: "
                         "seeds 1 and 2 of the long budget, marked and clean; long-rungs: the feature rungs (fitnets-1, direct, "
                         "staged) at the long budget, seed 0 (both with --add, added to a cpu entry)")
    ap.add_argument("--render", action="store_true", help="only render the markdown from the JSON")
    ap.add_argument("--smoke", metavar="JSON", help="tiny budgets, results to this file instead (pipeline check)")
    ap.add_argument("--key", default=KEY, help=f"the evaluation key (default {KEY}; public, for evaluations only)")
    ap.add_argument("--compare", nargs="+", metavar="JSON",
                    help="print a markdown table of the same arms under the keys of these results files, and exit")
    ap.add_argument("--max-drop", type=float, default=TEACHER_DROP_BUDGET, metavar="DB",
                    help=f"the teacher budget the mark is calibrated to (default {TEACHER_DROP_BUDGET}, the issue's "
                         "target; another budget measures the trade-off and needs its own --json file)")
    ap.add_argument("--bias-students", type=int, default=0, metavar="N",
                    help="mark in the key space kept away from the deviations of N quick students of the clean "
                         "teacher (fingerprint.key_space; default 0, the default space); its own --json file")
    ap.add_argument("--json", metavar="PATH", help=f"results file (default {RESULTS.relative_to(ROOT)}; the markdown "
                                                   "beside it); one file holds one key")
    a = ap.parse_args()
    if a.compare:
        print(compare_keys([json.loads(Path(f).read_text()) for f in a.compare]), end="")
        return 0
    if a.json:
        RESULTS = Path(a.json)
    if a.smoke:
        RESULTS = Path(a.smoke)
        for k in BUDGETS:
            BUDGETS[k] = (16, 3)
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"tasks": {}}
    try:
        fp.check_max_drop(a.max_drop)
    except AsvpError as e:
        ap.error(f"--max-drop: {e}")
    if a.task and data["tasks"] and data.get("key", KEY) != a.key:
        ap.error(f"{RESULTS} holds results under the key {data.get('key', KEY)!r}; give --json for --key {a.key!r}")
    if a.bias_students < 0:
        ap.error(f"--bias-students must be >= 0, got {a.bias_students}")
    if a.task and data["tasks"] and bias_of(data) != a.bias_students:
        ap.error(f"{RESULTS} holds results with {bias_of(data)} bias students; give --json for --bias-students "
                 f"{a.bias_students}")
    if a.task and data["tasks"] and max_drop_of(data) != a.max_drop:
        ap.error(f"{RESULTS} holds results at a {max_drop_of(data):g} dB budget; give --json for --max-drop "
                 f"{a.max_drop:g}")
    for task in a.task:
        with tempfile.TemporaryDirectory(prefix="asvp-fp-eval-") as d:
            existing = None
            if a.add:
                recorded = json.loads(RESULTS.read_text())["tasks"] if RESULTS.exists() else {}
                if task not in recorded:
                    ap.error(f"--add: {RESULTS} has no entry for {task} to add to")
                existing = recorded[task]
            res = run_task(task, a.profile, Path(d), lambda s: print(s, flush=True), existing, key=a.key,
                           max_drop=a.max_drop, bias_students=a.bias_students)
        data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"tasks": {}}
        data["tasks"][task] = res
        data["key"] = a.key
        data["max_drop_db"] = a.max_drop
        data["bias_students"] = a.bias_students
        data["written"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        write_text_atomic(RESULTS, json.dumps(data, indent=1))
    if data["tasks"]:
        write_text_atomic(RESULTS.with_suffix(".md"), render(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One attack on one task (attack_task): distil students from the clean and the defended model, evaluate all.

Threat model (docs/protection.md has the long form). The attacker
  * can only QUERY the served model: an ONNX Runtime session of the clean or defended file, a black box that
    returns the graph outputs for an input batch (for `feature` attacks also the exposed feature maps);
  * makes its own queries from the training images (TRAIN_IMAGES crops, degraded with the task's public
    degradation); it throws the clean crops away and never sees the held-out images;
  * trains a smaller student (runtime/evaluation/students.py) on the answers, with the same budget, seed and
    queries whether the teacher is clean or defended; the only difference is the answers.
Evaluation is done by the harness, not the attacker: held-out images (never queried), PSNR/SSIM against the
ground truth with asvp.metrics.psnr_ssim, for both teachers and all students. The steps are in distill.py.
"""
from __future__ import annotations

import time
from pathlib import Path

from asvp.runtime.attacks.claims import convergence_summary, noise_margin
from asvp.runtime.attacks.distill import (Students, adaptive_source, collect_answers, evaluate_teachers,
                                          noise_students, paired_students, plan_attack, serve)
from asvp.runtime.attacks.recipes import Preset
from asvp.runtime.evaluation.served import file_digest
from asvp.runtime.evaluation.students import describe_student
from asvp.tasks import get_task


def drop(ref: dict, got: dict) -> dict:
    """PSNR drop in dB and SSIM drop in % from `ref` to `got` (positive: `got` is worse)."""
    return {"db": ref["psnr"] - got["psnr"],
            "ssim_pct": 100.0 * (ref["ssim"] - got["ssim"]) / ref["ssim"] if ref["ssim"] else float("nan")}


def attack_task(task: str, clean_path: Path, defended_path: Path, kind: str, preset: Preset, seed: int,
                workdir: Path | None, progress: bool = True, clean_students=None,
                seeds: int = 1, interval: str = "t", remote=None) -> dict:
    """Distil students from the clean and the defended model of one task and evaluate everything.

    clean_students: optional store {key: (metrics, record)} shared across calls (the sweep, the ladder: a dict or a
    StudentStore), so students of the same teacher with the same answers and recipe are trained once. seeds > 1:
    also students for seeds seed+1 .. seed+seeds-1, a clean and a defended one sharing each seed (same queries),
    and the paired drop with its confidence interval (runtime.evaluation.stats, `interval` "t" or "bootstrap")
    under "paired". preset.val_frac > 0: that share of the queries is held out of training, and every student
    records its validation curve and plateau verdict (stats.plateau). Every student also gets `psnr_to_teacher`:
    its PSNR against the clean teacher's outputs on the held-out images (how close the copy is).
    """
    t0 = time.perf_counter()
    plan = plan_attack(task, clean_path, defended_path, kind, preset, seed, remote)
    models = serve(plan)
    try:  # the models answer only here: the rest trains and scores students on their answers
        answers = collect_answers(plan, models, workdir, progress)
        held = evaluate_teachers(plan, models, answers)
    finally:
        for m in models:
            m.close()
    plan.digests = {"clean": file_digest(clean_path), "defended": file_digest(defended_path)}  # hashed once
    trainer = Students(plan, answers, held, {} if clean_students is None else clean_students, progress)

    students, records, extra = {}, {}, {}
    students["clean"], records["clean"] = trainer.clean(seed)
    students["defended"], records["defended"] = trainer.defended(answers.source("defended"), seed)
    adaptive = None  # what the adaptive student learns from
    if kind == "adaptive":
        adaptive, report = adaptive_source(plan, answers)
        extra.update(report)
        students["adaptive"], records["adaptive"] = trainer.defended(adaptive, seed)
    others, noise = noise_students(trainer, students["clean"])
    if preset.noise_seeds:
        extra["clean_students_other_seeds"] = others
    paired = paired_students(trainer, students, seeds, adaptive, interval) if seeds > 1 else None
    extra["convergence"] = convergence_summary(paired["per_seed"] if paired else [{"seed": seed, **students}],
                                               answers.val_queries is not None)

    drops = {"teacher": drop(held.teacher["clean"], held.teacher["defended"]),
             "student": drop(students["clean"], students["defended"])}
    if "adaptive" in students:
        drops["student_adaptive"] = drop(students["clean"], students["adaptive"])
    q = answers.queries
    return {
        "task": task, "title": get_task(task).title, "kind": kind, "base_kind": plan.base_kind,
        "placement": plan.placement, "config": plan.config.to_dict() if plan.config else None,
        "nodes": [{"tensor": f.key, "read_as": f.output, "channels": f.channels, "depth": round(f.depth, 3)}
                  for f in plan.feats],
        "models": {"clean": str(clean_path), "defended": str(defended_path),
                   "defended_served_at": models[1].path if remote is not None else None,
                   "clean_digest": plan.digests["clean"], "defended_digest": plan.digests["defended"]},
        "queries": {"count": int(len(q)), "train": int(answers.nt), "validation": int(len(q) - answers.nt),
                    "shape": list(q.shape[1:]), "crop": preset.crop, "seed": seed,
                    "images": "TRAIN_IMAGES (held-out images never queried)"},
        "answers_identical": answers.identical,
        "student_model": describe_student(task, plan.budget.size), "budget": plan.budget.to_dict(),
        "hint_layers": records["clean"]["hint_layers"],
        "teacher": held.teacher, "students": students, "drops": drops,
        "seed_noise_db": noise, "noise_margin_db": noise_margin(noise), "paired": paired, **extra,
        "seconds": round(time.perf_counter() - t0, 1),
    }

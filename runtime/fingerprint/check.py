"""The demo's quick check of the fingerprint: mark, distil a student from the marked and one from the clean model,
calibrate on reference students of the clean teacher, and verify both (the first must be flagged, the second not).
"""
from __future__ import annotations

import time
from pathlib import Path

from asvp.fingerprint import DEFAULT_ALPHA, key_id
from asvp.metrics import psnr_ssim
from asvp.runtime.evaluation.served import THREADS, ServedModel, get_answers, make_queries, torch_threads
from asvp.runtime.evaluation.students import TrainBudget, train_student
from asvp.constants import REFERENCE_POOL, REFERENCE_SEEDS, REFERENCE_STEPS
from asvp.runtime.fingerprint.mark import mark_file
from asvp.runtime.fingerprint.references import student_fn, train_reference_students
from asvp.runtime.fingerprint.verifier import Verifier
from asvp.tasks import get_task


def quick_check(clean, served, task: str, workdir, *, key: str, steps: int = REFERENCE_STEPS,
                pool: int = REFERENCE_POOL, strength_db: float | None = None, ref_seeds=REFERENCE_SEEDS, seed: int = 0,
                alpha: float = DEFAULT_ALPHA, progress: bool = False, threads: int = THREADS) -> dict:
    """Mark `served` with `key`, distil one student from the marked model and one from the clean model (same
    queries, seed and budget), calibrate on reference students of the clean teacher, and verify both.
    Expected: the first is flagged, the second is not. Returns a dict (report data)."""
    t0 = time.perf_counter()
    workdir = Path(workdir)
    marked = workdir / f"{task}.fp.onnx"
    mres = mark_file(served, marked, key, strength_db=strength_db, task=task)
    spec = get_task(task)
    h_in, h_tgt = spec.heldout()
    with torch_threads(threads):
        teach = {n: psnr_ssim(ServedModel(p, threads=threads).query(h_in.numpy(), 2)[0], h_tgt.numpy())[0]
                 for n, p in (("clean", clean), ("marked", marked))}
        q = make_queries(task, pool, 64, seed)
        students = {}
        for name, path in (("student of the marked model", marked), ("student of the clean model", clean)):
            y, _ = get_answers(ServedModel(path, threads=threads), q, None, name, progress)
            mdl, _ = train_student(task, q, y, seed=seed, budget=TrainBudget(steps=steps, batch=8),
                                   desc=name, progress=progress)
            students[name] = student_fn(mdl)
    v = Verifier.open(clean, marked, cache=None, task=task)
    refs = train_reference_students(clean, task, ref_seeds, steps, pool, progress=progress, threads=threads)
    for name, fn in refs.items():
        v.refs[name] = v.project(fn, f"reference {name}")
    results = [v.verify(fn, key, alpha=alpha, name=name).to_dict() for name, fn in students.items()]
    ok = results[0]["flagged"] and not results[1]["flagged"]
    return {"task": task, "marked_model": str(marked), "key_id": key_id(key), "mark": mres.mark,
            "teacher_psnr": teach, "teacher_drop_db": teach["clean"] - teach["marked"],
            "budget": {"queries": pool, "steps": steps, "seed": seed, "reference_seeds": list(ref_seeds)},
            "alpha": alpha, "results": results, "passed": bool(ok), "seconds": round(time.perf_counter() - t0, 1)}

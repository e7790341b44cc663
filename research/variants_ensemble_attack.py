"""An attack aimed at keyed-h's label noise: average the teacher's answers over the 8 flips/transposes of each query.

    .venv/bin/python -m research.variants_ensemble_attack --defended WORK/sr/keyed-h_auto-h_max1.6.onnx

WORK: variants_search's cache (--work, default TMPDIR/asvp-variants), which holds the clean and defended models.

keyed-h (docs/variants.md) gives every query a pseudo-random h; a flipped or transposed copy of a query is a different
query to the hash, so it gets an unrelated h. The attacker sends the 8 dihedral copies of each of its queries,
undoes the transform on each answer and trains on the mean: the noise averages over 8 draws, while the teacher's
systematic behaviour (its mean h) stays and is learnt. The clean teacher's student gets the same treatment (same
queries, seeds, batches: paired). Budget as runtime.attacks.recipes' preset (default full), output distillation.
Writes research/results/variants-ensemble.{json,md}. Single-threaded.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from asvp.io import write_text_atomic
from asvp.metrics import psnr_ssim
from asvp.runtime.attacks.recipes import get_preset
from asvp.runtime.evaluation.served import ServedModel, make_queries, torch_threads as single_thread
from asvp.runtime.evaluation.students import predict, train_student
from asvp.runtime.evaluation.stats import paired_drop
from asvp.tasks import get_task

from research.variants_search import WORK

RESULTS = Path(__file__).resolve().parent / "results"


def dihedral(x: np.ndarray, t: int) -> np.ndarray:
    """The t-th of the 8 flips/transposes of NCHW images (t = 0: identity)."""
    if t & 4:
        x = x.transpose(0, 1, 3, 2)
    if t & 2:
        x = x[:, :, ::-1]
    if t & 1:
        x = x[:, :, :, ::-1]
    return np.ascontiguousarray(x)


def undo(y: np.ndarray, t: int) -> np.ndarray:
    if t & 1:
        y = y[:, :, :, ::-1]
    if t & 2:
        y = y[:, :, ::-1]
    if t & 4:
        y = y.transpose(0, 1, 3, 2)
    return np.ascontiguousarray(y)


def ensemble_answers(model: ServedModel, queries: np.ndarray) -> np.ndarray:
    return np.mean([undo(model.query(dihedral(queries, t))[0], t) for t in range(8)], axis=0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="sr")
    ap.add_argument("--clean", default=str(WORK / "sr" / "clean.onnx"))
    ap.add_argument("--defended", required=True)
    ap.add_argument("--preset", default="full")
    ap.add_argument("--seeds", type=int, default=5)
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    preset = get_preset(a.preset)
    spec = get_task(a.task)
    queries = make_queries(a.task, preset.pool, preset.crop, 0)  # attack_task's queries for seed 0
    h_in, h_tgt = spec.heldout()
    with single_thread():
        answers = {name: ensemble_answers(ServedModel(p), queries) for name, p in (("clean", a.clean),
                                                                                     ("defended", a.defended))}
        psnr = {"clean": [], "defended": []}
        for s in range(a.seeds):
            for name in psnr:
                m, _ = train_student(a.task, queries, answers[name], seed=s, budget=preset.train,
                                     desc=f"student<-{name} (8-copy mean)", progress=False)
                psnr[name].append(float(psnr_ssim(predict(m, h_in), h_tgt.numpy())[0]))
    drop = paired_drop(psnr["clean"], psnr["defended"], interval="t").to_dict()
    result = {"command": "python -m research.variants_ensemble_attack " + " ".join(argv or sys.argv[1:]),
              "finished_utc": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC", "task": a.task,
              "clean": a.clean, "defended": a.defended, "preset": preset.to_dict(), "seeds": list(range(a.seeds)),
              "student_psnr": psnr, "paired_drop": drop, "wall_s": round(time.perf_counter() - t0, 1)}
    text = (f"# 8-copy mean attack on {Path(a.defended).name} ({result['finished_utc']})\n\n"
            f"Command: `{result['command']}` ({result['wall_s'] / 60:.1f} min, shared 2-core machine). Preset "
            f"`{preset.name}`, output distillation on the mean of the 8 flipped/transposed answers, paired seeds "
            f"0-{a.seeds - 1}.\n\nClean-teacher students {np.mean(psnr['clean']):.2f} dB, defended-teacher students "
            f"{np.mean(psnr['defended']):.2f} dB (means); paired drop {drop['mean']:+.3f} "
            f"[{drop['ci_low']:+.3f}, {drop['ci_high']:+.3f}] dB, counts: {'yes' if drop['counts'] else 'no'}.\n")
    print(text)
    write_text_atomic(RESULTS / "variants-ensemble.json", json.dumps(result, indent=1))
    write_text_atomic(RESULTS / "variants-ensemble.md", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

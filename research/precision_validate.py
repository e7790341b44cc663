"""`asvp validate --precision fp16|bf16` on the five bundled teachers: each exported (`asvp export`), defended with the
defaults (`asvp defend`), and validated at each reduced precision on its held-out images. Per task and precision:
the teacher's fidelity (converted clean model vs the fp32 clean model on ONNX Runtime), the teacher drop, the ASVP
reference error at the tap (defended model at that precision vs the float64 reference of its feature), inf/NaN
counts and the ops that stayed fp32. Writes research/results/precision-validate.{json,md}.

    python -m research.precision_validate [--task sr ...] [--precision fp16 ...]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
import tempfile
from pathlib import Path

from asvp import api
from asvp.io import write_text_atomic
from asvp.runtime.evaluation.served import torch_threads
from asvp.tasks import TASK_NAMES

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "research" / "results" / "precision-validate.json"


def measure(task: str, precision: str, work: Path) -> dict:
    clean, defended = work / f"{task}.onnx", work / f"{task}.def.onnx"
    if not defended.exists():
        api.export(task, clean)
        api.defend(clean, defended)
    r = api.validate(clean, defended, precision=precision, progress=False)
    p = r.precision_report
    tap = r.tap[0] if r.tap else {}
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in {  # NaN: not measurable, null
            "task": task, "precision": precision, "verdict": r.verdict, "n_images": r.n_images,
            "teacher_fidelity_psnr": p.teacher_fidelity_psnr, "teacher_max_abs_diff": p.teacher_max_abs_diff,
            "teacher_drop_db": r.teacher_psnr_drop, "tap_rel_change": (tap.get("rel_change") or {}).get("mean"),
            "reference_rel_error": tap.get("reference_rel_error"),
            "nonfinite_images": {k: v for k, v in p.nonfinite_images.items() if v}, "fp32_ops": p.fp32_ops}.items()}


def fmt(v, spec=".3g") -> str:
    return "-" if v is None else format(v, spec)


def render(d: dict) -> str:
    out = ["# `asvp validate --precision` on the bundled teachers\n",
           f"Written by `python -m research.precision_validate` ({d['written']}; CPU). Each teacher exported and defended "
           "with the defaults (tap placement, subgraph mode), validated on its held-out images with the models "
           "converted to the precision (runtime/engines/reduced.py: onnx2torch, torch on CPU, every tensor in that "
           "dtype, except the ASVP block's C x C solve, which runs in fp32 as asvp build pins it). Fidelity: converted clean model vs the fp32 clean model (ONNX Runtime), PSNR of the pooled MSE. "
           "Reference error: ||F' - asvp_reference(F)|| / ||asvp_reference(F) - F|| at the tap, F the clean feature "
           "at that precision, the reference in float64; '-' where the tap output is NaN. The verdict's `finite` check "
           "covers every output, taps included. An earlier run, before the subgraph was scaled and with the solve in "
           "the reduced dtype, gave NaN at every teacher's tap in fp16 and reference errors up to 1.5 in bf16.\n",
           "Two runner bugs were fixed after an intermediate run, which gave reference errors of 0.17-0.32 in both "
           "fp16 and bf16 on every teacher but sr: onnx2torch ran the adaptive rank's exclusive CumSum backwards "
           "(so all k directions were kept) and the solve's fp32 outputs were rounded where a tuple item was "
           "picked.\n",
           "| task | precision | teacher fidelity PSNR dB | max abs diff | teacher drop dB | reference error | "
           "inf/NaN (images) | ops left in fp32 | verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for r in d["rows"]:
        bad = ", ".join(f"{k} {v}/{r['n_images']}" for k, v in r["nonfinite_images"].items()) or "none"
        out.append(f"| {r['task']} | {r['precision']} | {fmt(r['teacher_fidelity_psnr'], '.2f')} | "
                   f"{fmt(r['teacher_max_abs_diff'])} | {fmt(r['teacher_drop_db'], '.4f')} | "
                   f"{fmt(r['reference_rel_error'])} | {bad} | {'; '.join(r['fp32_ops']) or 'none'} | {r['verdict']} |")
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", action="append", choices=TASK_NAMES)
    ap.add_argument("--precision", action="append", choices=("fp16", "bf16"))
    ap.add_argument("--json", metavar="PATH", help=f"results file (default {RESULTS.relative_to(ROOT)})")
    a = ap.parse_args()
    out = Path(a.json) if a.json else RESULTS
    # rows already in the file are kept (a stopped run resumes with the missing task/precision pairs)
    rows = json.loads(out.read_text())["rows"] if out.exists() else []
    with tempfile.TemporaryDirectory(prefix="asvp-prec-") as d, torch_threads(1):
        for task in a.task or TASK_NAMES:
            for precision in a.precision or ("fp16", "bf16"):
                if any(r["task"] == task and r["precision"] == precision for r in rows):
                    continue
                rows.append(measure(task, precision, Path(d)))
                print(json.dumps(rows[-1]), flush=True)
                data = {"rows": rows, "written": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
                write_text_atomic(out, json.dumps(data, indent=1))
                write_text_atomic(out.with_suffix(".md"), render(data))
    if out.exists():  # the page follows this script's text even when no row was missing
        write_text_atomic(out.with_suffix(".md"), render(json.loads(out.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())

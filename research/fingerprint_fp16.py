"""Does the fingerprint survive an fp16-served model? Students distilled from the marked sr teacher served in fp32
(ONNX Runtime) and served in fp16 (asvp.runtime.engines.reduced: onnx2torch in half on CPU, every tensor fp16),
same queries and seeds, plus students of the clean teacher (negatives); flag rates with Clopper-Pearson intervals.

    python -m research.fingerprint_fp16                       # sr, long budget (1024 queries x 3000 steps), seeds 0-4
    python -m research.fingerprint_fp16 --profile tiny --json R.json   # pipeline check (tests/research)

Reuses research/fingerprint_eval.py's key, budgets, student build and training loop, and the owner's verifier
(asvp.runtime.fingerprint) in fp32: the mark's basis responses come from the fp32 clean model, as a verifier that
does not know how the suspect's teacher was served would compute them. Also measured: the key check on the
fp16-served marked model itself, and the fp16 noise against the mark on the first seed's queries
(||y16 - y32|| / ||y32 - y_clean||). One torch thread. Writes research/results/fingerprint-fp16.{json,md}.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.stats import beta as beta_dist

from asvp.exporter.export import export_bundled
from asvp.fingerprint import coefficients, key_statistic
from asvp.io import write_text_atomic
from asvp.metrics import psnr_ssim
from asvp.runtime import fingerprint as fp
from asvp.runtime.engines.reduced import reduced_runner
from asvp.runtime.evaluation.served import ServedModel, make_queries, torch_threads
from asvp.tasks import get_task
from research import fingerprint_eval as fe

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "research" / "results" / "fingerprint-fp16.json"
TASK = "sr"
PROFILES = {"long": {"budget": fe.BUDGETS["long"], "seeds": (0, 1, 2, 3, 4), "refs": fe.REF_SEEDS,
                     "ref_budget": fe.BUDGETS["quick"]},
            "tiny": {"budget": (16, 3), "seeds": (0,), "refs": (100,), "ref_budget": (16, 3)}}
ARMS = (("fp32", "positive"), ("fp16", "positive"), ("clean", "negative"))


# Convolutions accumulate in fp32 on fp16 inputs and weights, output rounded to fp16 (as fp16 GPU convolutions on
# tensor cores accumulate): torch's native CPU fp16 convolution is ~36x slower than fp32 on a CPU without
# AVX512-FP16, too slow for 5 x 1024 queries here. Every other op runs in torch's fp16 kernels.
FP32_OPS = frozenset({"Conv2d", "ConvTranspose2d"})


class HalfServed:
    """The marked model served in fp16: the reduced runner, queried in chunks like ServedModel."""

    def __init__(self, path, precision: str = "fp16", fp32_ops=FP32_OPS):
        self.runner = reduced_runner(path, "onnxrt-cpu", precision, name=f"served {precision}", fp32_ops=fp32_ops)
        self.runner.activate()
        self.input = next(iter(self.runner.get_input_metadata().keys()))
        self.output = self.runner.model.outputs[0]

    def __call__(self, x: np.ndarray, chunk: int = 16) -> np.ndarray:
        return np.concatenate([self.runner.infer({self.input: np.ascontiguousarray(x[i:i + chunk], np.float32)})
                               [self.output] for i in range(0, len(x), chunk)])

    def close(self) -> None:
        self.runner.deactivate()


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    if n == 0:
        return (float("nan"), float("nan"))
    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(beta_dist.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta_dist.ppf(1 - a, k + 1, n - k))
    return lo, hi


def run(profile: str, work: Path, log, save=lambda d: None) -> dict:
    cfg, t0 = PROFILES[profile], time.perf_counter()
    (pool, steps), (rpool, rsteps) = cfg["budget"], cfg["ref_budget"]
    clean, marked = work / f"{TASK}.onnx", work / f"{TASK}.fp.onnx"
    export_bundled(TASK, clean)
    mres = fp.mark_file(clean, marked, fe.KEY, task=TASK)
    h_in, h_tgt = (t.numpy() for t in get_task(TASK).heldout())
    v = fp.Verifier.open(clean, marked, task=TASK)
    u, key_check = v.check_key(fe.KEY)
    half = HalfServed(marked)
    rows, served = [], {"fp32": ServedModel(marked), "clean": ServedModel(clean)}
    try:
        with torch_threads(1):
            a16 = coefficients(v.project(half, "fp16-served marked model"), v.gram)
            key_check16 = key_statistic(a16, u)[0]
            teacher = {"clean": psnr_ssim(served["clean"].query(h_in, 2)[0], h_tgt)[0],
                       "marked fp32": psnr_ssim(served["fp32"].query(h_in, 2)[0], h_tgt)[0],
                       "marked fp16": psnr_ssim(half(h_in, 2), h_tgt)[0]}
            log(f"mark {mres.mark['node']} ({mres.key_dim} dims); key check fp32 c={key_check:.3f}, fp16 "
                f"c={key_check16:.3f}; teacher {teacher} ({time.perf_counter() - t0:.0f} s)")
            for name, f in fp.train_reference_students(clean, TASK, cfg["refs"], rsteps, rpool).items():
                v.refs[name] = v.project(f, name)
            noise = None
            for s in cfg["seeds"]:
                q = make_queries(TASK, pool, 64, s)
                ys = {"fp32": served["fp32"].query(q, 16)[0], "fp16": half(q), "clean": served["clean"].query(q, 16)[0]}
                if noise is None:
                    mark_norm = float(np.linalg.norm(ys["fp32"] - ys["clean"]))
                    noise = {"fp16_vs_fp32": float(np.linalg.norm(ys["fp16"] - ys["fp32"])) / mark_norm,
                             "max_abs_fp16_vs_fp32": float(np.abs(ys["fp16"] - ys["fp32"]).max()),
                             "mark_rms": mark_norm / np.sqrt(ys["fp32"].size)}
                for arm, label in ARMS:
                    t1 = time.perf_counter()
                    m = fe.train(fe.build(TASK, "standard", s), q, ys[arm], steps, s)
                    res = v.result(v.query(fe.fn_of(m), arm), f"student of {arm}-served, seed {s}", fe.KEY, u, key_check)
                    rows.append({"arm": arm, "label": label, "seed": s, "c": res.statistic, "p": res.p_value,
                                 "flagged": res.flagged, "beta": res.beta,
                                 "psnr": psnr_ssim(fe.fn_of(m)(h_in), h_tgt)[0],
                                 "train_s": round(time.perf_counter() - t1, 1)})
                    log(f"  {arm:5s} seed {s}: c={res.statistic:+.3f} p={res.p_value:.2g} flagged={res.flagged} "
                        f"({time.perf_counter() - t0:.0f} s)")
                save(summarize(cfg, mres, key_check, key_check16, teacher, noise, rows, t0, profile))
    finally:
        half.close()
    return summarize(cfg, mres, key_check, key_check16, teacher, noise, rows, t0, profile, complete=True)


def summarize(cfg, mres, key_check, key_check16, teacher, noise, rows, t0, profile, complete=False) -> dict:
    (pool, steps) = cfg["budget"]
    rates = {}
    for arm, _ in ARMS:
        g = [r for r in rows if r["arm"] == arm]
        k = sum(r["flagged"] for r in g)
        rates[arm] = {"flagged": k, "n": len(g), "rate": k / len(g) if g else None, "ci95": clopper_pearson(k, len(g))}
    return {"task": TASK, "profile": profile, "key": fe.KEY, "alpha": fe.ALPHA, "queries": pool, "steps": steps,
            "seeds": list(cfg["seeds"]), "reference_seeds": list(cfg["refs"]), "mark": mres.mark,
            "key_dim": mres.key_dim, "key_check": {"fp32": key_check, "fp16": key_check16},
            "teacher_psnr": teacher, "fp16_noise": noise, "rows": rows, "rates": rates, "complete": complete,
            "fp32_ops": sorted(FP32_OPS),
            "seconds": round(time.perf_counter() - t0, 1),
            "written": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def render(d: dict) -> str:
    r, n = d["rates"], d["fp16_noise"]
    out = ["# The fingerprint under fp16 serving (sr)\n",
           f"Written by `python -m research.fingerprint_fp16` ({d['written']}; CPU, one torch thread). Key "
           f"`{d['key']}` (public, evaluation only), alpha {d['alpha']}; students at {d['queries']} queries x "
           f"{d['steps']} steps, seeds {d['seeds']}; references: quick students of the clean teacher, seeds "
           f"{d['reference_seeds']}. fp16 serving: the marked ONNX model through onnx2torch in half on CPU "
           "(asvp.runtime.engines.reduced; every tensor fp16; convolutions accumulate in fp32 on fp16 inputs, output "
           "rounded to fp16: `FP32_OPS` in the script says why). Intervals: Clopper-Pearson 95 %."
           + ("" if d.get("complete", True) else f" **Partial run: seeds {sorted({x['seed'] for x in d['rows']})} of "
              f"{d['seeds']} finished.**") + "\n",
           f"Mark at `{d['mark']['node']}` ({d['key_dim']} key dimensions). Key check on the marked model: "
           f"c = {d['key_check']['fp32']:.3f} served in fp32, {d['key_check']['fp16']:.3f} served in fp16. "
           f"Teacher held-out PSNR: " + ", ".join(f"{k} {v:.3f} dB" for k, v in d["teacher_psnr"].items()) + ".\n",
           f"fp16 noise on the first seed's queries: ||y16 - y32|| / ||y32 - y_clean|| = {n['fp16_vs_fp32']:.3f} "
           f"(max |y16 - y32| {n['max_abs_fp16_vs_fp32']:.2g}; the mark's RMS {n['mark_rms']:.2g}).\n",
           "| students of | flagged | rate [95 % CI] |", "|---|---|---|"]
    for arm, lab in (("fp32", "marked model, served fp32"), ("fp16", "marked model, served fp16"),
                     ("clean", "clean model (negatives)")):
        x = r[arm]
        out.append(f"| {lab} | {x['flagged']}/{x['n']} | {x['rate']:.2f} [{x['ci95'][0]:.2f}, {x['ci95'][1]:.2f}] |")
    out += ["", "| arm | seed | c | p | flagged | beta | held-out PSNR dB |", "|---|---|---|---|---|---|---|"]
    for x in d["rows"]:
        out.append(f"| {x['arm']} | {x['seed']} | {x['c']:+.3f} | {x['p']:.2g} | {'yes' if x['flagged'] else 'no'} | "
                   f"{x['beta']:+.2f} | {x['psnr']:.2f} |")
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", choices=tuple(PROFILES), default="long")
    ap.add_argument("--json", metavar="PATH", help=f"results file (default {RESULTS.relative_to(ROOT)}; .md beside it)")
    a = ap.parse_args()
    out = Path(a.json) if a.json else RESULTS
    with tempfile.TemporaryDirectory(prefix="asvp-fp16-") as d:
        data = run(a.profile, Path(d), lambda s: print(s, flush=True), lambda x: save(out, x))
    save(out, data)
    return 0


def save(out: Path, data: dict) -> None:
    """After every seed (a stopped run keeps what it finished, `complete` false) and at the end."""
    write_text_atomic(out, json.dumps(data, indent=1))
    write_text_atomic(out.with_suffix(".md"), render(data))


if __name__ == "__main__":
    sys.exit(main())

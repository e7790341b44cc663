"""How much does the fingerprint's power depend on the key drawn, and would keeping the strongest of N keys help?

    python -m research.fingerprint_key_strength [--json research/results/fingerprint.json] [--keys 20000]
        [--trials 100] [--best 8] [--seed 0] [--other OTHER.json | --predict KEY]
        [--out research/results/fingerprint-key-strength]

The evaluation (research/fingerprint_eval.py) found that weak copies' verdicts depend on the key: under
`fingerprint-eval-key-1` underwater's mark came out at half the amplitude of key-0's. This script answers two
questions without training a model.

1. **How strong can a key's mark be?** (measured, key-free, about 30 s per task.) It exports the bundled
   teacher and rebuilds the mark's key space exactly as `fingerprint mark` does
   (`runtime.fingerprint.keyspace.key_space`), with the quadratic model of the calibration cost
   (`KeySpace.cost_terms`). For `--keys` random keys it solves the largest scale s (eps = s x basis_eps) whose
   pooled-PSNR drop on the calibration crops stays within the mark's target, outputs unclipped. The key
   directions are equalised on the probes, so the mark's amplitude where the verifier looks is proportional to
   s. The model is checked against the evaluated key: its s against the eps / basis_eps recorded in the JSON
   (which mark_file then corrected on the marked model itself).
2. **What would that do to the test?** (simulated, the linear model of fingerprint_keyspace_sim.py.) A student
   of the marked model is its paired clean student plus beta x amplitude x the key, beta measured from the pair
   along the evaluation key, and a key of scale s has s / s_eval times the evaluated amplitude. Over `--trials`
   draws, at alpha = 0.01, it compares
   * one uniform random key (as shipped): TPR and FPR, and the spread of one key's TPR over keys;
   * the strongest of `--best` keys, tested three ways: the uniform p-value (ignores the selection);
     Bonferroni, min(1, N p) (an exact bound: the chosen key is one of N uniform keys, whatever the suspect);
     and the selection-exact p, P(c' >= c) for c' under the chosen key's own distribution, whose density
     relative to the uniform one is N F(s)^(N-1) (F the distribution function of s over keys). The last is
     estimated on the key pool; it is exact in the limit because nothing in it depends on the suspect's key.

3. **Does the linear model predict real verdicts?** (`--other`: the same arms evaluated under another key.) From
   this file's students it predicts each marked student's verdict under the other key (its scale and direction)
   and counts the agreements with the verdicts measured there. `--predict KEY` records only the predicted
   verdicts under KEY, to be committed before KEY is evaluated (a prospective check).

It writes OUT.json and OUT.md (atomically) and prints the Markdown. A simulation under a linear model for part 2;
the strength distribution of part 1 is computed from the real teachers.
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
import torch

from asvp.exporter.export import export_bundled
from asvp.fingerprint import DEFAULT_ALPHA, key_direction, key_statistic, nuisance_basis
from asvp.io import write_text_atomic
from asvp.runtime import fingerprint as fp

from benchmarks.provenance import commit, shown
from research.fingerprint_eval import KEY, wilson
from research.fingerprint_keyspace_sim import evaluated_models

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "research" / "results"


def key_scales(keys: np.ndarray, terms: dict, target_db: float) -> np.ndarray:
    """For unit keys [K, D'], the largest s with 10 log10(mse(s) / mse0) = target_db, where
    mse(s) = mse0 + (2 s g.u + s^2 u^T H u) / n (KeySpace.cost_terms)."""
    big_a = np.einsum("ki,ij,kj->k", keys, terms["H"], keys)
    b = keys @ terms["g"]
    k = terms["n"] * terms["mse0"] * (10 ** (target_db / 10) - 1)
    return (np.sqrt(b * b + big_a * k) - b) / big_a


def unit_keys(n: int, dim: int, rng) -> np.ndarray:
    g = rng.standard_normal((n, dim))
    return g / np.linalg.norm(g, axis=1, keepdims=True)


def teacher_terms(task: str, entry: dict, work: Path) -> tuple[dict, int]:
    """The key-free cost model of the evaluated mark, rebuilt from the bundled teacher (part 1)."""
    clean = work / f"{task}.onnx"
    export_bundled(task, clean)
    ks = fp.key_space(clean, task=task, node=entry["mark"]["node"], m=entry["mark"]["m"])
    return ks.cost_terms(), ks.r.shape[1]


def tested(pos, neg: np.ndarray, u: np.ndarray, ratio: float, key: np.ndarray, q) -> np.ndarray:
    """The linear model: what verify tests for a student of the teacher marked with `key` (its paired clean student
    `neg` plus the share of the evaluated mark `pos` reproduced, at `ratio` x the evaluated amplitude), or for the
    innocent `neg` (pos None); the references' span q removed."""
    a = neg if pos is None else neg + ((pos - neg) @ u) * ratio * key
    return a if q is None else a - q @ (q.T @ a)


def simulate(entry: dict, scale, pool: np.ndarray, s_pool: np.ndarray, s_eval: float, best: int, trials: int, rng,
             alpha: float = DEFAULT_ALPHA) -> dict:
    """Part 2 for one task: verdict counts per key rule and p-value. scale: keys [K, D'] -> their s; pool: random
    keys, the Monte Carlo sample for the selection-exact p (the tested keys are fresh draws, not from it), and
    s_pool their scales; s_eval: the evaluated key's."""
    dim = entry["key_dim"]
    u, refs, negs, pairs = evaluated_models(entry)
    q = nuisance_basis(refs, dim)  # what verify removes: the references' span
    cdf = (np.argsort(np.argsort(s_pool)) + 0.5) / len(s_pool)
    weight = best * cdf ** (best - 1)  # density of the strongest of `best` keys relative to a uniform key
    counts = {k: [0, 0] for k in ("one key: TPR", "one key: FPR", "uniform p: TPR", "uniform p: FPR",
                                  "Bonferroni: TPR", "Bonferroni: FPR", "selection-exact: TPR",
                                  "selection-exact: FPR")}
    per_key_tpr = []
    for _ in range(trials):
        draw = unit_keys(best, dim, rng)
        s_draw = scale(draw)
        chosen = int(np.argmax(s_draw))
        hits_one = []
        for key, s, rule in ((draw[0], s_draw[0], "one"), (draw[chosen], s_draw[chosen], "best")):
            cases = [(tested(pos, neg, u, s / s_eval, key, q), "TPR") for pos, neg, _ in pairs] + \
                    [(tested(None, neg, u, 1.0, key, q), "FPR") for neg in negs.values()]
            for a, rate in cases:
                c, p = key_statistic(a, key)
                if rule == "one":
                    tally(counts, f"one key: {rate}", p < alpha)
                    if rate == "TPR":
                        hits_one.append(p < alpha)
                    continue
                norm = float(np.linalg.norm(a))
                p_sel = float(np.mean(weight * (pool @ a >= c * norm))) if norm else 1.0
                tally(counts, f"uniform p: {rate}", p < alpha)
                tally(counts, f"Bonferroni: {rate}", min(1.0, best * p) < alpha)
                tally(counts, f"selection-exact: {rate}", p_sel < alpha)
        per_key_tpr.append(float(np.mean(hits_one)) if hits_one else float("nan"))
    return {"counts": counts, "per_key_tpr": [round(float(x), 3) for x in np.nanquantile(per_key_tpr, [0.1, 0.5, 0.9])],
            "pairs": len(pairs), "innocents": len(negs)}


def predict_key(entry: dict, scale, key: str, alpha: float = DEFAULT_ALPHA) -> dict[str, bool]:
    """The linear model's verdict on each marked student (by name) had the teacher been marked with `key`: its
    paired clean student plus the reproduced mark, rescaled to `key`'s scale and turned to `key`'s direction."""
    dim = entry["key_dim"]
    u, refs, negs, pairs = evaluated_models(entry)
    other = key_direction(key, dim)
    ratio = float(scale(other[None])[0] / scale(u[None])[0])
    q = nuisance_basis(refs, dim)
    out = {}
    for pos, neg, name in pairs:
        _, p = key_statistic(tested(pos, neg, u, ratio, other, q), other)
        out[name.replace("student of clean", "student of marked")] = p < alpha
    return out


def cross_check(pred: dict[str, bool], other: dict) -> dict:
    """Predicted (predict_key's verdicts under `other`'s key) against measured (in `other`, the same arms under that
    key) verdicts on the marked students both evaluated."""
    measured = {r["name"]: bool(r["flagged"]) for r in other["rows"] if r["name"] in pred}
    return {"key": other["key"], "students": len(measured), "predicted": sum(pred[n] for n in measured),
            "measured": sum(measured.values()), "agree": sum(pred[n] == v for n, v in measured.items())}


def tally(counts: dict, key: str, hit: bool) -> None:
    counts[key][0] += int(hit)
    counts[key][1] += 1


def scale_of(terms: dict, entry: dict):
    """keys [K, D'] -> their largest scale within `entry`'s mark target (key_scales)."""
    return lambda keys: key_scales(keys, terms, entry["mark"]["cost"]["target_db"])


def run_task(task: str, entry: dict, terms: dict, keys: int, best: int, trials: int, seed: int,
             other: dict | None = None) -> dict:
    rng = np.random.default_rng(seed)
    dim = entry["key_dim"]
    target = entry["mark"]["cost"]["target_db"]
    scale = scale_of(terms, entry)
    pool = unit_keys(keys, dim, rng)
    s_pool = scale(pool)
    u, *_ = evaluated_models(entry)
    s_eval = float(scale(u[None])[0])
    best_of = s_pool[: len(s_pool) // best * best].reshape(-1, best).max(axis=1)
    med = float(np.median(s_pool))
    db = lambda s: round(20 * float(np.log10(s / med)), 2)  # noqa: E731  amplitude against the median key, dB
    return {
        "key": entry.get("key"), "key_dim": dim, "target_db": target,
        "scale_model_check": {"evaluated_key_s": round(s_eval, 4),
                              "recorded_eps_over_basis_eps": round(entry["mark"]["eps"] / entry["mark"]["basis_eps"], 4)},
        "amplitude_db_vs_median_key": {"p5": db(np.quantile(s_pool, 0.05)), "p95": db(np.quantile(s_pool, 0.95)),
                                       "evaluated_key": db(s_eval), f"strongest_of_{best}_median": db(np.median(best_of))},
        "evaluated_key_percentile": round(100 * float(np.mean(s_pool < s_eval)), 1),
        "simulation": simulate(entry, scale, pool, s_pool, s_eval, best, trials, rng),
        **({"cross_check": cross_check(predict_key(entry, scale, other["key"]), other)} if other else {}),
    }


def cell(k_n: list) -> str:
    k, n = k_n
    lo, hi = wilson(k, n)
    return f"{k / n:.2f} [{lo:.2f}, {hi:.2f}]" if n else "-"


def render(data: dict) -> str:
    a = data["args"]
    if a.get("predict"):
        return "\n".join([f"# Predicted verdicts under `{a['predict']}` (`research/fingerprint_key_strength.py --predict`)",
                          "", f"Written {data['written']} at commit {data['commit']}, from the students of `{a['json']}` "
                          "(linear model; before that key's evaluation). Check: `--other` on its results file.", "",
                          "| task | from key | marked students | flagged, predicted |", "|---|---|---|---|"]
                         + [f"| {t} | `{e['key']}` | {e['prediction']['students']} | {e['prediction']['flagged']} |"
                            for t, e in data["tasks"].items()]
                         + checks_markdown(data)) + "\n"
    best = a["best"]
    lines = ["# How much the fingerprint depends on the key (`research/fingerprint_key_strength.py`)", "",
             f"Written {data['written']} at commit {data['commit']}; from `{a['json']}`; {a['keys']} random keys per "
             f"task, {a['trials']} simulated draws, strongest of {best}, seed {a['seed']}. Amplitudes are the mark's "
             "on the probes relative to the median key's (dB); rates at alpha = 0.01 with Wilson 95 % intervals, over "
             "draws x models (not independent: the same models recur in every draw).", "",
             f"| task | D' | key amplitude p5 / p95 dB | evaluated key dB (percentile) | strongest of {best}, median dB | "
             "model check: s (eval key) vs recorded eps/basis_eps |", "|---|---|---|---|---|---|"]
    for t, e in data["tasks"].items():
        amp = e["amplitude_db_vs_median_key"]
        chk = e["scale_model_check"]
        lines.append(f"| {t} | {e['key_dim']} | {amp['p5']:+.2f} / {amp['p95']:+.2f} | {amp['evaluated_key']:+.2f} "
                     f"({e['evaluated_key_percentile']:.0f} %) | {amp[f'strongest_of_{best}_median']:+.2f} | "
                     f"{chk['evaluated_key_s']:.3f} vs {chk['recorded_eps_over_basis_eps']:.3f} |")
    lines += ["", "Simulated verdicts (linear model; students of the marked model = paired clean student + the mark "
              "they reproduced, rescaled to each key's amplitude):", "",
              "| task | one key: TPR (one key's TPR p10 / p50 / p90) | one key: FPR | "
              f"strongest of {best}, uniform p (ignores the choice): TPR / FPR | Bonferroni: TPR / FPR | selection-exact p: TPR / FPR |",
              "|---|---|---|---|---|---|"]
    for t, e in data["tasks"].items():
        c, sim = e["simulation"]["counts"], e["simulation"]
        spread = " / ".join(f"{x:.2f}" for x in sim["per_key_tpr"])
        lines.append(f"| {t} | {cell(c['one key: TPR'])} ({spread}) | {cell(c['one key: FPR'])} | "
                     f"{cell(c['uniform p: TPR'])} / {cell(c['uniform p: FPR'])} | "
                     f"{cell(c['Bonferroni: TPR'])} / {cell(c['Bonferroni: FPR'])} | "
                     f"{cell(c['selection-exact: TPR'])} / {cell(c['selection-exact: FPR'])} |")
    return "\n".join(lines + checks_markdown(data)) + "\n"


def checks_markdown(data: dict) -> list[str]:
    """The cross-check table (--other), if any."""
    lines = []
    checks = {t: e["cross_check"] for t, e in data["tasks"].items() if "cross_check" in e}
    if checks:
        lines += ["", "Cross-check of the linear model: this evaluation's students predict the verdicts under another "
                  "key, against that key's own evaluation (the same arms):", "",
                  "| task | other key | marked students | flagged, predicted | flagged, measured | verdicts agree |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {t} | `{c['key']}` | {c['students']} | {c['predicted']} | {c['measured']} | {c['agree']} |"
                  for t, c in checks.items()]
    return lines


def main(argv=None, terms_of=teacher_terms) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=str(RESULTS / "fingerprint.json"), help="a fingerprint_eval.py results file")
    ap.add_argument("--keys", type=int, default=20000, help="random keys in the pool (default 20000)")
    ap.add_argument("--trials", type=int, default=100, help="simulated key draws per task (default 100)")
    ap.add_argument("--best", type=int, default=8, help="keys drawn when keeping the strongest (default 8)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--task", action="append", help="only this task (repeatable; default every task in --json)")
    ap.add_argument("--other", help="a results file of the same arms under another key: cross-check the linear "
                    "model by predicting its verdicts on the marked students")
    ap.add_argument("--predict", metavar="KEY", help="only predict, from this file's students, each marked student's "
                    "verdict under KEY (to be recorded before that key is evaluated; check it later with --other)")
    ap.add_argument("--out", default=str(RESULTS / "fingerprint-key-strength"), help="writes OUT.json and OUT.md")
    a = ap.parse_args(argv)
    if a.keys < 100 or a.trials < 1 or a.best < 2:
        ap.error("need --keys >= 100, --trials >= 1 and --best >= 2")
    src = json.loads(Path(a.json).read_text())
    other = json.loads(Path(a.other).read_text()) if a.other else None
    if a.predict and other and (other.get("key") or KEY) != a.predict:
        ap.error(f"--other holds results under the key {other.get('key') or KEY!r}, not the --predict key {a.predict!r}")
    torch.set_num_threads(1)
    out = {"written": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": commit(),
           "args": {"json": shown(a.json), "other": a.other and shown(a.other), "predict": a.predict, "keys": a.keys,
                    "trials": a.trials, "best": a.best, "seed": a.seed},
           "tasks": {}}
    with tempfile.TemporaryDirectory() as work:
        for task, entry in src["tasks"].items():
            if a.task and task not in a.task:
                continue
            t0 = time.perf_counter()
            terms, dim = terms_of(task, entry, Path(work))
            if dim != entry["key_dim"]:
                ap.error(f"{task}: the rebuilt key space has {dim} dimensions, the results file {entry['key_dim']}: "
                         "the mark changed since that evaluation")
            entry = {**entry, "key": entry.get("key") or src.get("key") or KEY}
            twin = (other or {}).get("tasks", {}).get(task)
            twin = {**twin, "key": twin.get("key") or other.get("key") or KEY} if twin else None
            if a.predict:
                verdicts = predict_key(entry, scale_of(terms, entry), a.predict)
                out["tasks"][task] = {"key": entry["key"], "prediction": {"key": a.predict, "students": len(verdicts),
                                                                          "flagged": sum(verdicts.values()),
                                                                          "verdicts": verdicts}}
                if twin:  # the prediction checked against the key's own evaluation
                    out["tasks"][task]["cross_check"] = cross_check(verdicts, twin)
                continue
            out["tasks"][task] = run_task(task, entry, terms, a.keys, a.best, a.trials, a.seed, twin)
            out["tasks"][task]["seconds"] = round(time.perf_counter() - t0, 1)
            print(f"{task}: {out['tasks'][task]['seconds']} s", file=sys.stderr)
    md = render(out)
    write_text_atomic(Path(a.out + ".json"), json.dumps(out, indent=1) + "\n")
    write_text_atomic(Path(a.out + ".md"), md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What-if on a committed fingerprint evaluation: would a noise-aware key space have flagged more copies?

    python -m research.fingerprint_keyspace_sim [--json research/results/fingerprint.json] [--trials 100]

No model is trained or run: it reads the projections t of every evaluated model (research/fingerprint_eval.py)
and simulates, per task, a mark whose key lives in a smaller space. Model: a student of the marked teacher is its
paired clean student (same seed, queries, recipe) plus beta times the mark, beta measured from the pair along the
evaluation key; the mark keeps the amplitude the budget gave it. For each of `trials` random keys:

* `as evaluated`: the key spans all D' dimensions, and verify removes the span of the reference students;
* `noise-aware (refs)`: the key space is the complement of that span, so all of the mark lies where the test
  looks;
* `noise-aware (all innocents)`: the same with every other innocent model of the task as a reference (leave one
  out), the most a large, diverse reference set could give.

TPR is over the distilled students, FPR over the innocent models, at alpha = 0.01. The p-values stay exact in all
three (nothing that picks the key space looks at the key). A simulation under a linear model, not a measurement.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from asvp.fingerprint import cosine_tail, key_direction

ROOT = Path(__file__).resolve().parents[1]
KEY = "fingerprint-eval-key-0"


def evaluated_models(task: dict, key: str = KEY) -> tuple[np.ndarray, list, dict, list]:
    """From one task's evaluation entry: the evaluation key u, the reference students' projections, the innocent
    models' {name: t} and the (marked, paired clean, clean name) students: the linear model's inputs."""
    u = key_direction(task.get("key", key), task["key_dim"])
    refs = [np.asarray(v) for v in task["references_t"].values()]
    negs = {r["name"]: np.asarray(r["t"]) for r in task["rows"] if r["label"] == "negative"}
    pairs = [(np.asarray(r["t"]), negs[n], n) for r in task["rows"] if r["label"] == "positive"
             and (n := r["name"].replace("student of marked", "student of clean")) in negs]
    return u, refs, negs, pairs


def simulate(task: dict, mode: str, trials: int, rng) -> tuple[float, float, int]:
    dim = task["key_dim"]
    u, refs, negs, pairs = evaluated_models(task)
    # a positive leaves its paired clean student out of the references, as a negative leaves itself out
    cases = pairs + [(None, neg, name) for name, neg in negs.items()]
    hits = {"pos": [], "neg": []}
    for _ in range(trials):
        for pos, neg, name in cases:
            ref = refs if mode == "as evaluated" or mode == "noise-aware (refs)" else \
                refs + [t for n, t in negs.items() if n != name]
            _, _, vt = np.linalg.svd(np.asarray(ref))
            k = min(len(ref), dim // 2)
            keep = vt[k:].T  # the complement of the references' leading directions
            if mode == "as evaluated":
                w = rng.standard_normal(dim)
                key, tested = w / np.linalg.norm(w), dim
            else:
                w = rng.standard_normal(dim - k)
                key, tested = keep @ (w / np.linalg.norm(w)), dim - k
            a = neg if pos is None else neg + ((pos - neg) @ u) * key  # + beta x amp x the key (measured pair)
            a = keep @ (keep.T @ a)  # verify removes the references' span
            n = float(np.linalg.norm(a))
            p = 1.0 if n == 0 else cosine_tail(float(key @ a) / n, tested)
            hits["pos" if pos is not None else "neg"].append(p < 0.01)
    return float(np.mean(hits["pos"])), float(np.mean(hits["neg"])), len(pairs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=str(ROOT / "research" / "results" / "fingerprint.json"))
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    data = json.loads(Path(a.json).read_text())
    rng = np.random.default_rng(a.seed)
    print("| task | key space | TPR at 0.01 (distilled pairs) | FPR at 0.01 |")
    print("|---|---|---|---|")
    for name, task in data["tasks"].items():
        for mode in ("as evaluated", "noise-aware (refs)", "noise-aware (all innocents)"):
            tpr, fpr, n = simulate(task, mode, a.trials, rng)
            print(f"| {name} | {mode} | {tpr:.2f} ({n}) | {fpr:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

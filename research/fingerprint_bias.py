"""Does a key space kept away from weak copies' own deviations flag more of them? (`mark --bias-students`)

    python -m research.fingerprint_bias [--tasks derain,underwater,lowlight,dehaze,sr] [--keys 0,1,2]
        [--bias-students 16] [--seeds 6] [--steps N --pool N] [--out research/results/fingerprint-bias]
    python -m research.fingerprint_bias --merge A.json B.json [--out ...]   # one report from runs in parallel

At the 0.05 dB budget, weakly trained copies (the quick attacker: 96 queries, 300 steps) are the fingerprint's
gap (research/fingerprint_budget.py). A pilot found what hides the mark in such a copy: its own deviation from
the teacher, which a clean student with the same seed and queries shares, and which lies mostly along a few key
directions. Per task this script marks the bundled teacher under each evaluation key in two key spaces, on the
same teacher budget:

  full   the default key space (equalised, cost-neutral); the verifier removes the span of 4 reference students
         of the clean teacher (seeds 100-103), as the evaluation does;
  bias   the same space kept to the half of its directions along which `--bias-students` quick students of the
         clean teacher (seeds 200, 201, ...) deviate least (`fingerprint.key_space(bias_students=N)`); the
         verifier removes no span there.

It trains the quick attacker's output students (seeds 0 .. `--seeds`-1) of every marked model, and once, on the
same queries and seeds, of the clean teacher (their twins), and tests each. Both key spaces are key-free, so both
p-values are exact. Per task, key and space: marked students flagged at alpha = 0.01, twins flagged, AUC of c
against the twins, median p, the mark's strength and the teacher's held-out drop.

It writes OUT.json and OUT.md atomically after every task. Every model trains on one CPU thread; a task takes
5-15 min at the defaults.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from asvp.errors import AsvpError
from asvp.exporter.export import export_bundled
from asvp.fingerprint import DEFAULT_ALPHA
from asvp.io import write_text_atomic
from asvp.runtime import fingerprint as fp
from asvp.runtime.evaluation.served import ServedModel, make_queries, torch_threads as single_thread
from asvp.tasks import TASK_NAMES, get_task

from benchmarks.provenance import commit, parse_list
from research.fingerprint_budget import run_tasks
from research.fingerprint_eval import BUDGETS, KEY, REF_SEEDS, auc, build, fn_of, teacher_psnr, train

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "research" / "results" / "fingerprint-bias"
ORDER = ("derain", "underwater", "lowlight", "dehaze", "sr")
SPACES = ("full", "bias")
KEY_STEM = KEY[: KEY.rindex("-") + 1]  # fingerprint-eval-key-N: the public evaluation keys


def run_task(task: str, keys: list[str], n_bias: int, seeds: int, pool: int, steps: int, work: Path, log) -> dict:
    t0 = time.perf_counter()
    clean = work / f"{task}.onnx"
    export_bundled(task, clean)
    h_in, h_tgt = (t.numpy() for t in get_task(task).heldout())
    t_clean = teacher_psnr(clean, h_in, h_tgt)
    spaces = {"full": fp.key_space(clean, task=task),
              "bias": fp.key_space(clean, task=task, bias_students=n_bias, bias_budget=(pool, steps))}
    log(f"{task}: key spaces {spaces['full'].r.shape[1]} and {spaces['bias'].r.shape[1]} dimensions "
        f"({time.perf_counter() - t0:.0f} s)")
    x = spaces["full"].x
    with single_thread():
        refs = {n: fp.query_outputs(fn, x, n, spaces["full"].base.shape)
                for n, fn in fp.train_reference_students(clean, task, REF_SEEDS, steps, pool).items()}
        queries = [make_queries(task, pool, 64, s) for s in range(seeds)]

        def students(target) -> list[np.ndarray]:
            out = []
            for s, q in enumerate(queries):
                y, _ = ServedModel(target).query(q, 16)
                out.append(fp.query_outputs(fn_of(train(build(task, "standard", s), q, y, steps, s)), x, f"seed {s}",
                                     spaces["full"].base.shape))
            return out
        twins = students(clean)
        log(f"  references and twins ({time.perf_counter() - t0:.0f} s)")
        rows = []
        for key in keys:
            for space in SPACES:
                path = work / f"{task}.{space}.onnx"
                res = fp.mark_file(clean, path, key, task=task, space=spaces[space])
                drop = t_clean - teacher_psnr(path, h_in, h_tgt)
                v = fp.Verifier.open(clean, path, task=task)
                for name, out in refs.items():
                    v.refs[name] = fp.projections(out, v.base, v.delta)  # used by the full space only
                u, _ = v.check_key(key)
                test = lambda out: v.test(fp.projections(out, v.base, v.delta), u)  # noqa: E731
                marked = [test(out) for out in students(path)]
                clean_c = [test(out) for out in twins]
                rows.append({"key": key, "space": space, "key_dim": v.info.key_dim, "eps": res.mark["eps"],
                             "strength_db": res.mark["strength_db"], "heldout_drop_db": drop,
                             "marked": [{"seed": s, "c": c, "p": p} for s, (c, p) in enumerate(marked)],
                             "twins": [{"seed": s, "c": c, "p": p} for s, (c, p) in enumerate(clean_c)]})
                s = summary(rows[-1])
                log(f"  {key} {space}: {s['flagged']}/{s['n']} flagged, twins {s['twins_flagged']}, AUC "
                    f"{s['auc']:.3f}, mark {res.mark['strength_db']} dB, held-out drop {drop:+.4f} dB "
                    f"({time.perf_counter() - t0:.0f} s)")
    return {"task": task, "teacher_psnr": t_clean, "bias": spaces["bias"].bias, "rows": rows,
            "seconds": round(time.perf_counter() - t0, 1)}


def summary(row: dict) -> dict:
    m, t = row["marked"], row["twins"]
    return {"flagged": sum(r["p"] < DEFAULT_ALPHA for r in m), "n": len(m),
            "twins_flagged": sum(r["p"] < DEFAULT_ALPHA for r in t),
            "auc": auc([r["c"] for r in m], [r["c"] for r in t]), "median_p": float(np.median([r["p"] for r in m]))}


def render(data: dict) -> str:
    a = data["args"]
    out = ["# Weak copies against a key space kept away from their own deviations (`research/fingerprint_bias.py`)\n",
           f"Written {data['written']} at commit {data['commit']}: `{data['command']}`. Teacher budget 0.05 dB. "
           f"Quick output students ({a['pool']} queries of 64 px, {a['steps']} steps, standard width), seeds "
           f"0-{a['seeds'] - 1}, of each marked teacher, and of the clean teacher once (the twins: same queries and "
           f"seeds). `full`: the default key space, the span of 4 reference students (seeds 100-103) removed at "
           f"verification. `bias`: the half of that space along which {a['bias_students']} quick students of the "
           f"clean teacher deviate least; no span removed. alpha {DEFAULT_ALPHA}; AUC of c, marked students against "
           f"the twins. The keys are public evaluation keys. CPU, one thread per model.\n",
           "| task | key | space (dims) | mark vs clean on probes dB | held-out teacher drop dB | flagged | twins flagged "
           "| AUC vs twins | median p |", "|---|---|---|---|---|---|---|---|---|"]
    totals = {sp: [0, 0, 0, 0] for sp in SPACES}
    for task, e in data["tasks"].items():
        for r in e["rows"]:
            s = summary(r)
            t = totals[r["space"]]
            t[0] += s["flagged"]
            t[1] += s["n"]
            t[2] += s["twins_flagged"]
            t[3] += len(r["twins"])
            out.append(f"| {task} | `{r['key']}` | {r['space']} ({r['key_dim']}) | {r['strength_db']} | "
                       f"{r['heldout_drop_db']:+.4f} | {s['flagged']}/{s['n']} | {s['twins_flagged']}/{len(r['twins'])} | "
                       f"{s['auc']:.3f} | {s['median_p']:.2g} |")
    out += ["", "All tasks and keys: " + "; ".join(
        f"{sp}: {t[0]}/{t[1]} marked students flagged, twins {t[2]}/{t[3]}" for sp, t in totals.items()) + ".", ""]
    out += [f"* {task}: {e['seconds']:.0f} s; bias students {e['bias']}." for task, e in data["tasks"].items()]
    return "\n".join(out) + "\n"


def merge(files: list[str], out: Path) -> int:
    """One report from several results files of other tasks with the same settings."""
    try:
        runs = []
        for f in files:
            try:
                runs.append(json.loads(Path(f).read_text()))
            except (OSError, ValueError) as e:
                raise AsvpError(f"cannot read results file {f}: {e}") from None
        if any(r.get("args") != runs[0].get("args") for r in runs):
            raise AsvpError("--merge: the files were run with different settings (args)")
        tasks = [t for r in runs for t in r["tasks"]]
        if len(set(tasks)) < len(tasks):
            raise AsvpError(f"--merge: a task is in more than one file ({', '.join(tasks)})")
        if out.with_suffix(".json").resolve() in {Path(f).resolve() for f in files}:
            raise AsvpError("--merge: the output would overwrite an input; choose another --out")
    except AsvpError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    data = {**runs[0], "tasks": {t: e for r in runs for t, e in r["tasks"].items()},
            "command": " ; ".join(r["command"] for r in runs), "commit": " / ".join(sorted({r["commit"] for r in runs})),
            "written": max(r["written"] for r in runs)}
    write_text_atomic(out.with_suffix(".json"), json.dumps(data, indent=1))
    write_text_atomic(out.with_suffix(".md"), render(data))
    print(render(data), end="")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default=",".join(ORDER), help="comma-separated tasks, in this order (default %(default)s)")
    ap.add_argument("--keys", default="0,1,2", help=f"evaluation keys {KEY_STEM}N, comma-separated N (default %(default)s)")
    ap.add_argument("--bias-students", type=int, default=16, help="students behind the bias space (default %(default)s)")
    ap.add_argument("--seeds", type=int, default=6, help="paired seeds 0..N-1 (default %(default)s)")
    ap.add_argument("--pool", type=int, default=BUDGETS["quick"][0], help="queries per student (default %(default)s)")
    ap.add_argument("--steps", type=int, default=BUDGETS["quick"][1], help="training steps (default %(default)s)")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="output stem: OUT.json and OUT.md (default %(default)s)")
    ap.add_argument("--merge", nargs="+", metavar="JSON", help="write OUT from these results files (runs of other "
                    "tasks with the same settings, e.g. in parallel) instead of running")
    a = ap.parse_args(argv)
    if a.merge:
        return merge(a.merge, Path(a.out))
    try:
        tasks = parse_list(a.tasks, str, "--tasks")
        if any(t not in TASK_NAMES for t in tasks):
            raise AsvpError(f"--tasks: choose from {', '.join(TASK_NAMES)}, got {a.tasks}")
        keys = [KEY_STEM + str(k) for k in parse_list(a.keys, int, "--keys")]
        if len(set(keys)) < len(keys):
            raise AsvpError(f"--keys: give each key once, got {a.keys}")
        if a.seeds < 2 or a.pool < 8 or a.steps < 1 or a.bias_students < 1:
            raise AsvpError("--seeds must be >= 2, --pool >= 8, --steps >= 1 and --bias-students >= 1")
    except AsvpError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(a.out)
    data = {"args": {"keys": keys, "bias_students": a.bias_students, "seeds": a.seeds, "pool": a.pool,
                     "steps": a.steps},
            "command": "python -m research.fingerprint_bias " + " ".join(sys.argv[1:] if argv is None else argv),
            "commit": commit(), "tasks": {}}
    run_tasks(data, tasks, lambda task, work, log: run_task(task, keys, a.bias_students, a.seeds, a.pool, a.steps,
                                                           work, log), render, out, "asvp-fp-bias-")
    return 0


if __name__ == "__main__":
    sys.exit(main())

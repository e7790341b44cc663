"""Protection at the cost-chosen nodes: does defending the node `asvp nodes --cost` picks change what ASVP does to
a distilled copy, compared with `api.defend`'s automatic node?

    python -m research.protection_cost_nodes [--tasks dehaze,derain,sr,lowlight,underwater] [--seeds 5]
        [--kinds fitnets-1] [--inline] [--three] [--preset standard] [--steps N --pool N] [--work DIR]
        [--out research/results/protection-cost-nodes]

    # the committed runs (docs/protection.md, "Protection at the cost-chosen nodes"): ~25 min, then ~15 and ~4
    # min resumed from the cache under --work
    python -m research.protection_cost_nodes --kinds fitnets-1,fitnets-10 --inline --three --seeds 5
    python -m research.protection_cost_nodes --tasks underwater,lowlight,dehaze,derain \\
        --kinds fitnets-1,fitnets-10 --three --seeds 10 --out research/results/protection-cost-nodes-10seeds
    python -m research.protection_cost_nodes --tasks underwater --kinds fitnets-1,fitnets-10 --seeds 20 \\
        --out research/results/protection-cost-nodes-underwater-20seeds

`asvp nodes MODEL --cost --budget 1.10 --count 1` (runtime/evaluation/node_cost.py) chooses the cheapest candidate,
which perturbs a different feature than the automatic node (dehaze: a 16-channel `/Relu` instead of the 64-channel
`/Concat_2`). Per task this script

1. reads the choices from `make bench`'s benchmarks/results/all.json (`node_costs`: every candidate's measured
   cost, ONNX Runtime CPU, 1x3x256x256, one thread; `--all-json`): the automatic node (`auto`), the one node within
   `--budget` (`node_cost.choose(costs, budget, 1)` on the recorded costs, the cheapest candidate) and, with
   `--three`, the set `make bench` measured for three nodes asked (`choice`). Nothing is re-timed;
2. gives the absorbability diagnostic at those nodes (`api.absorbability`, the attacker's 64 query crops, seed 0,
   default config): the held-out share of ASVP's change one global 1x1 map does not explain;
3. runs the distillation attack (`api.attack`, preset `--preset`, paired seeds 0 .. `--seeds`-1, t intervals) at
   each node, tap placement (the shipped default), for each rung in `--kinds` (feature rungs: with tap the served
   outputs are the clean ones, so output rungs lose exactly 0 at any node by construction and are not run); with
   `--inline`, also the output rung with inline placement, where the perturbation is in the outputs;
4. compares the nodes per rung: the paired difference, seed by seed, of the drop at the cost-chosen node minus
   the drop at the automatic node (same seeds and queries; the clean students differ where the hints differ), with
   its 95 % t interval (`runtime.evaluation.stats.paired_drop`).

It writes OUT.json and OUT.md atomically after every task, so a stopped run keeps what it finished; the attack
harness caches every student under `--work`, so a rerun with the same arguments resumes. Students train on one
CPU thread (the harness's rule).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
import time
from pathlib import Path

from asvp import api
from asvp.config import AsvpConfig
from asvp.errors import AsvpError
from asvp.io import write_text_atomic
from asvp.runtime.attacks.claims import drop_counts
from asvp.runtime.attacks.recipes import KINDS, PRESETS
from asvp.runtime.evaluation import node_cost
from asvp.runtime.evaluation.absorbability import ABSORBABLE_BELOW
from asvp.runtime.evaluation.stats import paired_drop
from asvp.tasks import TASK_NAMES

from benchmarks.provenance import commit, shown

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ALL = ROOT / "benchmarks/results/all.json"
DEFAULT_OUT = ROOT / "research/results/protection-cost-nodes"
ORDER = ("dehaze", "derain", "sr", "lowlight", "underwater")  # dehaze first: its choice differs most from auto
BUDGET = 1.10


def choices(all_json: dict, task: str, budget: float = BUDGET) -> dict:
    """The nodes to compare for `task`, from `make bench`'s recorded node costs: the automatic node, the one node
    within `budget` (node_cost.choose on the recorded costs) and the recorded three-node choice (when the recorded
    budget is `budget` and three were asked). Each node with its recorded cost and channels."""
    try:
        rec = all_json["node_costs"][task]
    except KeyError:
        raise AsvpError(f"all.json has no node_costs for task {task!r} (run `make bench`)") from None
    costs = [node_cost.NodeCost(**c) for c in rec["costs"]]
    auto = [c for c in costs if c.auto]
    if len(auto) != 1:
        raise AsvpError(f"all.json node_costs[{task!r}] marks {len(auto)} automatic nodes, expected 1")
    one = node_cost.choose(costs, budget, 1)
    by = {c.name: c for c in costs}
    info = lambda n: {"name": n, "channels": by[n].channels, "op_type": by[n].op_type, "cost": by[n].ratio,  # noqa: E731
                      "cost_p25": by[n].ratio_p25, "cost_p75": by[n].ratio_p75}
    three = rec["choice"] if rec.get("budget") == budget and rec.get("count") == 3 else None
    trial = next((t for t in rec.get("trials", []) if t["fits"]), None)
    return {"auto": info(auto[0].name), "cost": info(one[0]) if one else None,
            "three": {"nodes": list(three), "cost": trial["ratio"] if trial else None} if three else None,
            "source": {"shape": rec["shape"], "threads": rec["threads"], "iters": rec["iters"],
                       "backend": rec["backend"], "budget": budget}}


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip("/")) or "node"


def attack_cell(row: dict) -> dict:
    """What the comparison needs from one task row of api.attack's result."""
    p = row["paired"]["student"] if row.get("paired") else None
    per = row["paired"]["per_seed"] if row.get("paired") else []
    return {"teacher_drop_db": row["drops"]["teacher"]["db"],
            "heldout_output_max_abs_diff": row["teacher"]["heldout_output_max_abs_diff"],
            "answers_identical": row["answers_identical"],
            "clean_student_psnr": sum(s["clean"]["psnr"] for s in per) / len(per) if per else row["students"]["clean"]["psnr"],
            "drop": p, "counts": drop_counts(row), "nodes": row["nodes"], "seconds": row["seconds"],
            "defended_model_digest": row["models"]["defended_digest"]}


def compare(auto: dict, cost: dict) -> dict | None:
    """Paired by seed: drop at the cost-chosen node minus drop at the automatic node, mean and 95 % t interval."""
    a, c = (auto.get("drop") or {}).get("diffs"), (cost.get("drop") or {}).get("diffs")
    if not a or not c or len(a) != len(c) or len(a) < 2:
        return None
    d = paired_drop(c, a)  # c - a per seed
    return {"n": d.n, "mean": d.mean, "ci_low": d.ci_low, "ci_high": d.ci_high, "diffs": list(d.diffs)}


def run_task(task: str, pick: dict, a) -> dict:
    work = Path(a.work) / task
    clean = work / "clean.onnx"
    if not clean.exists():
        api.export(task, clean)
    sets = {"auto": [pick["auto"]["name"]], "cost": [pick["cost"]["name"]]}
    if a.three and pick["three"] and pick["three"]["nodes"] != sets["cost"]:
        sets["three"] = pick["three"]["nodes"]
    t0 = time.perf_counter()
    names = sorted({n for ns in sets.values() for n in ns})
    ab = api.absorbability(clean, task=task, nodes=names, progress=False)
    absorb = {n.name: {"unexplained_heldout": n.unexplained_heldout, "unexplained": n.unexplained,
                       "verdict": n.verdict, "channels": n.channels} for n in ab.nodes}
    out = {"task": task, "choices": pick, "sets": sets, "absorbability": absorb,
           "absorbability_seconds": round(time.perf_counter() - t0, 1), "attacks": []}
    runs = [(k, "tap") for k in a.kinds] + ([("output", "inline")] if a.inline else [])
    for kind, placement in runs:
        cells = {}
        for label, nodes in sets.items():
            t1 = time.perf_counter()
            res = api.attack(task, kind=kind, preset=a.preset, seeds=a.seeds, nodes=nodes, steps=a.steps, pool=a.pool,
                             config=AsvpConfig(placement=placement), out=work / f"{placement}-{slug('+'.join(nodes))}",
                             progress=False, clean=clean)
            cells[label] = {**attack_cell(res.tasks[0]), "wall_s": round(time.perf_counter() - t1, 1)}
            print(f"  {task} {kind} {placement} {label} {nodes}: {fmt_drop(cells[label]['drop'])} "
                  f"({cells[label]['wall_s']} s)", flush=True)
        out["attacks"].append({"kind": kind, "placement": placement, "cells": cells,
                               "cost_minus_auto": compare(cells["auto"], cells["cost"]),
                               **({"three_minus_auto": compare(cells["auto"], cells["three"])} if "three" in cells else {})})
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def fmt_drop(d: dict | None) -> str:
    if not d:
        return "-"
    if d.get("ci_low") is None:
        return f"{d['mean']:+.3f} (n={d['n']})"
    return f"{d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"


def render(res: dict) -> str:
    """Markdown for people: per task the nodes (cost, absorbability) and the drops per rung, then what was not run."""
    lines = [f"# Protection at the cost-chosen nodes ({res['date']})", "",
             f"Command: `{res['command']}` at commit {res['commit']}; preset `{res['preset']}`, paired seeds "
             f"{res['seeds_used']}, t intervals (95 %); {res['wall_s']:.0f} s wall. Node choices read from "
             f"`{res['choices_from']}` (`make bench`, {res['choices_date']}): the automatic node and "
             f"`node_cost.choose(costs, {res['budget']:g}, 1)` on its recorded costs. Drop = PSNR of the student of "
             f"the clean teacher - PSNR of the student of the defended teacher, held-out images; a drop counts when "
             f"its interval excludes 0 and its mean is >= 0.1 dB. cost - auto: per seed, the drop at the "
             f"cost-chosen node minus the drop at the automatic node, mean [95 % t interval].", ""]
    for t in res["tasks"]:
        lines += [f"## {t['task']}", "",
                  "| set | nodes | C | cost (p25-p75) | unexplained % held-out | predicted |", "|---|---|---|---|---|---|"]
        pick = t["choices"]
        for label, nodes in t["sets"].items():
            ab = [t["absorbability"][n] for n in nodes]
            if label == "three":
                cost = f"x{pick['three']['cost']:.3f} together" if pick["three"]["cost"] else "-"
            else:
                c = pick[label]
                cost = f"x{c['cost']:.3f} ({c['cost_p25']:.3f}-{c['cost_p75']:.3f})"
            cells = [", ".join(f"`{n}`" for n in nodes), ", ".join(str(x["channels"]) for x in ab), cost,
                     ", ".join("-" if x["unexplained_heldout"] is None else f"{100 * x['unexplained_heldout']:.2f}"
                               for x in ab), ", ".join(x["verdict"] for x in ab)]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines += ["", "| rung | placement | set | teacher drop dB | clean student PSNR | student drop dB [95% CI] "
                  "| counts | wall s |", "|---|---|---|---|---|---|---|---|"]
        for at in t["attacks"]:
            for label, c in at["cells"].items():
                lines.append(f"| {at['kind']} | {at['placement']} | {label} | {c['teacher_drop_db']:+.3f} "
                             f"| {c['clean_student_psnr']:.2f} | {fmt_drop(c['drop'])} | {'yes' if c['counts'] else 'no'} "
                             f"| {c['wall_s']:.0f} |")
            for key, name in (("cost_minus_auto", "cost - auto"), ("three_minus_auto", "three - auto")):
                if at.get(key):
                    lines.append(f"| {at['kind']} | {at['placement']} | {name} | | | {fmt_drop(at[key])} | | |")
        lines.append("")
    if res["not_run"]:
        lines += ["## Not run", ""] + [f"- {x}" for x in res["not_run"]] + [""]
    return "\n".join(lines)


def write(res: dict, out: Path) -> None:
    write_text_atomic(out.with_suffix(".json"), json.dumps(res, indent=2, default=float) + "\n")
    write_text_atomic(out.with_suffix(".md"), render(res))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default=",".join(ORDER), help="comma-separated tasks, run in this order (default %(default)s)")
    ap.add_argument("--kinds", default="fitnets-1", help="tap rungs to run, comma-separated (default %(default)s)")
    ap.add_argument("--inline", action="store_true", help="also the output rung with inline placement")
    ap.add_argument("--three", action="store_true", help="also the three-node set make bench chose (when it differs)")
    ap.add_argument("--preset", default="standard", help="attack preset (default %(default)s)")
    ap.add_argument("--steps", type=int, default=None, help="override the preset's training steps (smoke runs)")
    ap.add_argument("--pool", type=int, default=None, help="override the preset's number of queries (smoke runs)")
    ap.add_argument("--seeds", type=int, default=5, help="paired seeds 0..N-1 (default %(default)s)")
    ap.add_argument("--budget", type=float, default=BUDGET, help="latency budget for the one-node choice (default %(default)s)")
    ap.add_argument("--all-json", default=str(DEFAULT_ALL), help="make bench's results (default %(default)s)")
    ap.add_argument("--work", default="reports/protection-cost-nodes", help="attack cache directory (default %(default)s)")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="output stem: writes OUT.json and OUT.md (default %(default)s)")
    a = ap.parse_args(argv)
    try:
        tasks = [t.strip() for t in a.tasks.split(",") if t.strip()]
        bad = [t for t in tasks if t not in TASK_NAMES]
        if bad or not tasks:
            raise AsvpError(f"unknown task(s) {bad or a.tasks!r}; choose from {', '.join(TASK_NAMES)}")
        a.kinds = [k.strip() for k in a.kinds.split(",") if k.strip()]
        if not a.kinds or any(k not in KINDS for k in a.kinds):
            raise AsvpError(f"--kinds: choose from {', '.join(KINDS)}, got {','.join(a.kinds) or 'none'}")
        if a.preset not in PRESETS:
            raise AsvpError(f"unknown preset {a.preset!r}; choose one of: {', '.join(PRESETS)}")
        if a.seeds < 2:
            raise AsvpError("--seeds must be >= 2 (paired intervals)")
        path = Path(a.all_json)
        try:
            recorded = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise AsvpError(f"cannot read {path}: {e}") from None
        picks = {t: choices(recorded, t, a.budget) for t in tasks}
        for t, p in picks.items():
            if p["cost"] is None:
                raise AsvpError(f"{t}: no candidate fits x{a.budget:g} in {path}")
    except AsvpError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(a.out)
    t0 = time.perf_counter()
    res = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": commit(),
           "command": "python -m research.protection_cost_nodes " + " ".join(argv if argv is not None else sys.argv[1:]),
           "preset": a.preset, "steps": a.steps, "pool": a.pool, "seeds_used": f"0-{a.seeds - 1}", "budget": a.budget,
           "choices_from": shown(path),
           "choices_date": recorded.get("machine", {}).get("date"), "absorbable_below": ABSORBABLE_BELOW,
           "config": AsvpConfig().to_dict(), "tasks": [], "wall_s": 0.0,
           "not_run": [f"{t}: not in --tasks" for t in ORDER if t not in tasks]
           + ["output rungs with tap placement: the served outputs are the clean ones at any node, drop 0 by "
              "construction (the harness reports 'same answers')"]
           + ([] if a.inline else ["inline placement (--inline not given)"])}
    for t in tasks:
        print(f"[{t}] auto {picks[t]['auto']['name']}, cost-chosen {picks[t]['cost']['name']}", flush=True)
        res["tasks"].append(run_task(t, picks[t], a))
        res["wall_s"] = round(time.perf_counter() - t0, 1)
        write(res, out)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')} in {res['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

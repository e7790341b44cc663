"""`make bench`: measure what BENCHMARKS.md reports, on this machine, and write it (plus JSON) atomically.

    python -m benchmarks.run_all --out BENCHMARKS.md            # full run (~10-15 min on 2 cores)
    python -m benchmarks.run_all --out B.md --smoke             # tiny budgets: checks the pipeline only

Run from the repository root (benchmarks/ is a package).

Figures are never edited by hand: every number in BENCHMARKS.md comes from the run that wrote it.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from asvp import api
from asvp.config import AsvpConfig
from asvp.errors import AsvpError
from asvp.graph_passes import select
from asvp.graph_passes.expose import expose_tensors
from asvp.io import write_text_atomic
from asvp.runtime.engines.sessions import ort_session
from asvp.runtime.evaluation import node_cost
from asvp.tasks import TASK_NAMES
from asvp.tasks.data import heldout_crops

from benchmarks import bench_graph_passes, kernel_compile

TASKS = TASK_NAMES


def machine() -> dict:
    import numpy
    import onnxruntime
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "os": platform.platform(),
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "numpy": numpy.__version__,
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


# What the latency section measures per teacher: the clean model and these variants, in one interleaved loop.
# (label, nodes, placement): nodes 0 = the automatic node's clean feature exposed as a graph output, no ASVP
# (the floor of the tap placement), 1 = the automatic node, 3 = three candidates spread over the network.
# Placement "floor": the same 1 or 3 features exposed plus their Gram matrices and nothing else, the cost no exact
# ASVP can go below on this runtime; "floor+apply": the Gram plus the subgraph's apply step with a fixed U, the
# defence without its eigensolver (bench_graph_passes.gram_floor_model).
# Selection "budget": the nodes `asvp nodes --cost --budget T --count N` chooses, T the row's target (the cheapest
# candidate for one node; up to three spread ones that fit together, measured, for three), tap placement.
VARIANTS = (("tap only", 0, "tap"), ("1 node, tap", 1, "tap"), ("1 node, inline", 1, "inline"),
            ("3 nodes, tap", 3, "tap"), ("3 nodes, inline", 3, "inline"),
            ("floor: 1 node, tap + Gram", 1, "floor"), ("floor: 3 nodes, tap + Gram", 3, "floor"),
            ("floor: 1 node, Gram + apply", 1, "floor+apply"), ("floor: 3 nodes, Gram + apply", 3, "floor+apply"),
            ("1 node within budget, tap", 1, "budget"), ("3 nodes within budget, tap", 3, "budget"))
# issue 11: SR one node <= 1.05 (aim 1.03); every teacher, and three nodes, <= 1.10 (default placement).
TARGETS = {("sr", 1): 1.05}
TARGET_DEFAULT = 1.10


def target(task: str, count: int) -> float:
    return TARGETS.get((task, count), TARGET_DEFAULT)


def _quantile(values, q: float) -> float:
    s = sorted(values)
    return s[round(q * (len(s) - 1))]


def latency_ratios(work: Path, smoke: bool, repeats: int = 40, threads: int = 1,
                   costs: dict | None = None) -> list[dict]:
    """Per teacher: clean and every VARIANTS model on ONNX Runtime CPU (asvp's own sessions, default graph
    optimisation = all), interleaved: after a warm-up, each repeat runs every model once in a rotating order, so a
    shared machine's drifts hit all alike. Each run's thread CPU time (threads = 1: the inference's own compute,
    what a shared machine does not distort by time-slicing) and wall-clock time; ratios of the medians, and the
    median (with p25-p75) of the per-repeat paired ratios defended / clean of the same round. costs: filled with
    each teacher's `api.node_costs` result (the budgeted choice's own measurement), by task."""
    costs = {} if costs is None else costs
    size = 64 if smoke else 256
    repeats, warmup = (3, 1) if smoke else (repeats, 5)
    x = heldout_crops(size, per_image=1)[:1].numpy()  # a real photograph crop (held-out image)
    rows = []
    for task in TASKS[:1] if smoke else TASKS:
        clean = work / f"{task}.onnx"
        api.export(task, clean, force=True)
        listed = [n for n in api.list_nodes(clean) if n.channels > AsvpConfig().k]
        cands = [n.name for n in listed]
        model = onnx.load(clean)
        (auto,) = select.resolve(model, None)  # what defend picks without --nodes
        # The product's budgeted choice (its own interleaved timing, random input, same threads and size).
        cost = api.node_costs(clean, shape=f"1x3x{size}x{size}", threads=threads, budget=target(task, 3), count=3,
                              warmup=1 if smoke else 3, iters=2 if smoke else 20, progress=False)
        costs[task] = cost.to_dict()
        budgeted = {1: node_cost.choose(cost.costs, target(task, 1), 1), 3: cost.choice}
        paths, selectors = {"clean": clean}, {}
        for label, count, placement in VARIANTS:
            path = work / f"{task}.{label.replace(' ', '').replace(',', '.').replace(':', '').replace('+', '')}.onnx"
            names = budgeted[count] if placement == "budget" else [auto.name] if count <= 1 else \
                bench_graph_passes.spread(cands, count)
            if placement == "budget":
                selectors[label] = names
                if not names:  # nothing fits: nothing to time
                    continue
                api.defend(clean, path, nodes=names, config=AsvpConfig(placement="tap"), force=True)
            elif count == 0:
                onnx.save(expose_tensors(model, [auto.output]), path)
                selectors[label] = names
            elif placement.startswith("floor"):
                feats = [(n.output, n.channels) for name in names for n in listed if n.name == name]
                onnx.save(bench_graph_passes.gram_floor_model(model, feats, apply=placement == "floor+apply"), path)
                selectors[label] = names
            else:
                res = api.defend(clean, path, nodes=None if count == 1 else names,
                                 config=AsvpConfig(placement=placement), force=True)
                selectors[label] = [r["node"] for r in res.nodes]
            paths[label] = path
        sessions = {n: ort_session(p, threads=threads, inter_op_threads=1) for n, p in paths.items()}
        feed = {sessions["clean"].get_inputs()[0].name: x}
        cpu: dict = {}
        wall = bench_graph_passes.interleaved({n: (lambda s=s: s.run(None, feed)) for n, s in sessions.items()},
                                               repeats, warmup=warmup, cpu=cpu)
        for label, count, placement in VARIANTS:
            row = {"task": task, "variant": label, "nodes": count, "placement": "tap" if placement == "budget" else placement,
                   "selection": "budget" if placement == "budget" else "auto" if count <= 1 else "spread",
                   "selectors": selectors[label], "shape": "x".join(map(str, x.shape)), "repeats": repeats,
                   "threads": threads, "target": None if count == 0 or placement.startswith("floor") else target(task, count),
                   "cpu": None, "wall": None}
            if label not in paths:
                rows.append(row)
                print(f"  {task}, {label}: no candidate fits", flush=True)
                continue
            for clock, times in (("cpu", cpu), ("wall", wall)):
                c, d = np.array(times["clean"]), np.array(times[label])
                paired = d / c
                row[clock] = {"clean_p50_ms": float(np.median(c)), "defended_p50_ms": float(np.median(d)),
                              "ratio_p50": float(np.median(d) / np.median(c)), "ratio_paired_median": float(np.median(paired)),
                              "ratio_paired_p25": _quantile(paired, 0.25), "ratio_paired_p75": _quantile(paired, 0.75)}
            rows.append(row)
            print(f"  {task}, {label}: CPU-time p50 ratio {row['cpu']['ratio_p50']:.3f} (paired "
                  f"{row['cpu']['ratio_paired_median']:.3f}); wall p50 ratio {row['wall']['ratio_p50']:.3f}", flush=True)
    return rows


def kernel_resources(smoke: bool) -> dict:
    """benchmarks.kernel_compile's report, also written to its own files (--smoke: one architecture and padding,
    no files), or why it was skipped."""
    try:
        archs, channels = ([90], [16]) if smoke else (kernel_compile.ARCHS, kernel_compile.CHANNELS)
        res = kernel_compile.run(archs, channels, progress=False)
    except AsvpError as exc:  # no Triton, or TRITON_INTERPRET=1 in the environment
        return {"skipped": str(exc)}
    if not smoke:
        kernel_compile.write_results(res, kernel_compile.DEFAULT_OUT_DIR)
    return res


def render_only(a) -> int:
    """Rewrite the Markdown from existing raw results (e.g. after committing a GPU result): no figure changes."""
    from benchmarks.render import render_markdown

    json_path = Path(a.json or "benchmarks/results/all.json")
    try:
        results = json.loads(json_path.read_text())
    except (OSError, ValueError) as exc:
        print(f"run_all.py: error: cannot read the raw results {json_path}: {type(exc).__name__}", file=sys.stderr)
        return 2
    write_text_atomic(a.out, render_markdown(results, json_path))
    print(f"wrote {a.out} from {json_path} (nothing measured)")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="BENCHMARKS.md")
    ap.add_argument("--json", default=None, help="raw results (default: benchmarks/results/all.json, or beside --out with --smoke)")
    ap.add_argument("--smoke", action="store_true", help="tiny budgets (pipeline check, figures meaningless)")
    ap.add_argument("--repeats", type=int, default=40, help="interleaved repeats per model in the latency section (default %(default)s)")
    ap.add_argument("--render-only", action="store_true",
                    help="measure nothing: rewrite --out from the raw results (--json) and the committed GPU results")
    ap.add_argument("--threads", type=int, default=1,
                    help="ONNX Runtime intra-op threads for the latency section (default %(default)s: the machine is shared)")
    a = ap.parse_args(argv)
    if a.render_only:
        return render_only(a)
    t0 = time.perf_counter()
    results = {"machine": machine(), "config": AsvpConfig().to_dict(), "smoke": a.smoke, "command": "make bench" if not a.smoke else "python -m benchmarks.run_all --smoke"}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print("[1/5] teacher quality", flush=True)
        results["teachers"] = api.teacher_quality()
        print("[2/5] latency: defended / clean, ONNX Runtime CPU, interleaved", flush=True)
        results["node_costs"] = {}
        results["latency"] = latency_ratios(work, a.smoke, repeats=a.repeats, threads=a.threads,
                                            costs=results["node_costs"])
        print("[3/5] subgraph vs exact SVD, approximation error", flush=True)
        results["graph_passes"] = bench_graph_passes.run(work / "graph_passes.json", repeats=2, size=64, accuracy=False) \
            if a.smoke else bench_graph_passes.run(bench_graph_passes.DEFAULT_OUT, repeats=20)
        print("[4/5] distillation attack headline (quick preset)", flush=True)
        from asvp.runtime.attacks.recipes import kind_for_placement

        att = api.attack(None, kind=kind_for_placement(AsvpConfig().placement), preset="quick",
                         steps=5 if a.smoke else None, pool=16 if a.smoke else None, out=work / "attack", progress=False)
        results["attack"] = att.to_dict()
        print("[5/5] Triton kernels compiled per NVIDIA architecture (no GPU)", flush=True)
        results["kernel_compile"] = kernel_resources(a.smoke)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    json_path = Path(a.json) if a.json else (Path(a.out).with_suffix(".json") if a.smoke else Path("benchmarks/results/all.json"))
    write_text_atomic(json_path, json.dumps(results, indent=2, default=str) + "\n")
    from benchmarks.render import render_markdown

    write_text_atomic(a.out, render_markdown(results, json_path))
    print(f"wrote {a.out} and {json_path} in {results['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

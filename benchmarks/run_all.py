"""`make bench`: measure what BENCHMARKS.md reports, on this machine, and write it (plus JSON) atomically.

    python benchmarks/run_all.py --out BENCHMARKS.md            # full run (~10-15 min on 2 cores)
    python benchmarks/run_all.py --out /tmp/B.md --smoke        # tiny budgets: checks the pipeline only

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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from asvp import api  # noqa: E402
from asvp.config import AsvpConfig  # noqa: E402
from asvp.io import write_text_atomic  # noqa: E402
from asvp.tasks import TASK_NAMES

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


def spread(names: list[str], count: int) -> list[str]:
    """`count` candidate nodes spread evenly through the network (first, middle, last ...)."""
    if count >= len(names):
        return names
    return [names[round(i * (len(names) - 1) / (count - 1))] for i in range(count)] if count > 1 else [names[len(names) // 2]]


def latency_ratios(work: Path, smoke: bool) -> list[dict]:
    rows = []
    shape = "1x3x64x64" if smoke else "1x3x256x256"
    iters, warmup = (3, 1) if smoke else (30, 5)
    for task in TASKS[:1] if smoke else TASKS:
        clean = work / f"{task}.onnx"
        api.export(task, clean, force=True)
        cands = [n.name for n in api.list_nodes(clean) if n.channels > AsvpConfig().k]
        for count in (1, 3):
            defended = work / f"{task}.n{count}.asvp.onnx"
            nodes = None if count == 1 else spread(cands, count)
            api.defend(clean, defended, nodes=nodes, config=AsvpConfig(), force=True)
            res = api.profile(clean, defended, shape=shape, warmup=warmup, iters=iters, memory="off", progress=False)
            d = res.to_dict()
            stats = {m["name"]: m["stats"] for m in d["models"]}
            rows.append({"task": task, "nodes": count, "selectors": nodes or ["auto"],
                         "shape": shape, "iters": iters, "clean_p50_ms": stats["clean"]["p50_ms"],
                         "defended_p50_ms": stats["defended"]["p50_ms"], **{f"ratio_{k}": v for k, v in d["ratio"].items()}})
            print(f"  {task}, {count} node(s): p50 ratio {d['ratio']['p50']:.3f}", flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="BENCHMARKS.md")
    ap.add_argument("--json", default=None, help="raw results (default: benchmarks/results/all.json, or beside --out with --smoke)")
    ap.add_argument("--smoke", action="store_true", help="tiny budgets (pipeline check, figures meaningless)")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    results = {"machine": machine(), "config": AsvpConfig().to_dict(), "smoke": a.smoke, "command": "make bench" if not a.smoke else "benchmarks/run_all.py --smoke"}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print("[1/4] teacher quality", flush=True)
        results["teachers"] = api.teacher_quality()
        print("[2/4] latency: defended / clean, ONNX Runtime CPU, interleaved", flush=True)
        results["latency"] = latency_ratios(work, a.smoke)
        print("[3/4] subgraph vs exact SVD, approximation error", flush=True)
        import bench_graph_passes

        results["graph_passes"] = bench_graph_passes.run(work / "graph_passes.json", repeats=2, size=64, accuracy=False) \
            if a.smoke else bench_graph_passes.run(work / "graph_passes.json", repeats=20)
        print("[4/4] distillation attack headline (quick preset)", flush=True)
        from asvp.runtime.attacks.attack import kind_for_placement

        att = api.attack(None, kind=kind_for_placement(AsvpConfig().placement), preset="quick",
                         steps=5 if a.smoke else None, pool=16 if a.smoke else None, out=work / "attack", progress=False)
        results["attack"] = att.to_dict()
    results["seconds"] = round(time.perf_counter() - t0, 1)
    json_path = Path(a.json) if a.json else (Path(a.out).with_suffix(".json") if a.smoke else Path("benchmarks/results/all.json"))
    write_text_atomic(json_path, json.dumps(results, indent=2, default=str) + "\n")
    from render import render_markdown

    write_text_atomic(a.out, render_markdown(results, json_path))
    print(f"wrote {a.out} and {json_path} in {results['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

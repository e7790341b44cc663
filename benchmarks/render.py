"""Turn the results of benchmarks.run_all into BENCHMARKS.md (every figure comes from the results dict)."""
from __future__ import annotations

import json
from pathlib import Path


def _f(v, spec=".3f"):
    return format(v, spec) if isinstance(v, (int, float)) else str(v)


def floor_markdown(latency: list[dict], placement: str) -> list[str]:
    """Per teacher and node count: the defended ratio at the default placement against the two floors and the
    target. A target below the Gram floor cannot be met by any exact ASVP at those nodes on this runtime."""
    rows = {(x["task"], x["nodes"], x["placement"]): x for x in latency if x.get("selection") != "budget"}
    lines = []
    for (task, n, pl), floor in rows.items():
        d, fa = rows.get((task, n, placement)), rows.get((task, n, "floor+apply"))
        if pl != "floor" or d is None or d.get("target") is None:
            continue
        f, r, t = floor["cpu"]["ratio_p50"], d["cpu"]["ratio_p50"], d["target"]
        a = fa["cpu"]["ratio_p50"] if fa else None
        lines.append(f"| {task} | {n} | {_f(f)} | {_f(a)} | {_f(r)} | {_f(None if a is None else r - a + 1)} | {t:.2f} | "
                     + ("met" if r <= t else "not met; **the floor is above the target**" if f > t else
                        "not met; Gram + apply is above the target" if a is not None and a > t else "not met") + " |")
    if not lines:
        return []
    return ["", f"Against the floors ({placement} placement, CPU ratio p50). `Gram + apply` is the defence without its "
            "eigensolver: the Gram matrices and the subgraph's apply step with a fixed U, written as the tap writes "
            "them; \"eigensolver\" is 1 + defended - that, what the ~115 small ops on the C x C Gram add.", "",
            "| task | nodes | floor: tap + Gram | Gram + apply | defended | eigensolver | target | verdict |",
            "|---|---|---|---|---|---|---|---|"] + lines


def budget_markdown(latency: list[dict], costs: dict) -> list[str]:
    """Per teacher and node count: what `asvp node-cost --budget` chose, its own measurement of the set, and the
    set timed in the benchmark's loop, against the target."""
    lines = []
    for x in latency:
        if x.get("selection") != "budget":
            continue
        n, t, names = x["nodes"], x["target"], x["selectors"]
        trial = next((tr for tr in (costs.get(x["task"]) or {}).get("trials", []) if tr["fits"]), None) if n == 3 else None
        r = x["cpu"]["ratio_p50"] if x.get("cpu") else None
        verdict = ("nothing fits" if not names else f"only {len(names)} of {n} fit" if len(names) < n
                   else "met" if r <= t else "not met")
        lines.append(f"| {x['task']} | {n} | {', '.join(f'`{v}`' for v in names) or '-'} | "
                     f"{_f(trial['ratio']) if trial else '-'} | {_f(r) if r is not None else '-'} | {t:.2f} | {verdict} |")
    if not lines:
        return []
    rounds = "/".join(sorted({str(c.get("iters")) for c in costs.values()})) or "?"
    return ["", "Within the budget (tap placement): the nodes `asvp node-cost --budget TARGET --count N` chooses "
            "(one node: the cheapest candidate; three: the cheapest of three contiguous runs of candidates, dropped "
            "while the set, measured together, does not fit: its paired ratios' p75 above the target). `selection's timing`: the set as the tool measured "
            f"it (random input, its own {rounds} rounds, wall clock of the inference call at the same threads); `benchmark`: "
            "the same set in this section's interleaved loop (CPU time). Per-node costs: `node_costs` in the JSON.", "",
            "| task | nodes asked | chosen | selection's timing | benchmark CPU ratio p50 | target | verdict |",
            "|---|---|---|---|---|---|---|"] + lines


def kernel_compile_markdown(res) -> list[str]:
    """The GPU kernels' per-architecture section (benchmarks/kernel_compile.py), or why it is missing."""
    from benchmarks import kernel_compile

    out = ["## Triton kernels per NVIDIA architecture (compiled, never launched)", ""]
    if not res:
        return out + ["Not run in this benchmark.", ""]
    if "skipped" in res:
        return out + [f"Skipped: {res['skipped']}", ""]
    return out + ["What one block of each Triton ASVP kernel (the plugin path's GPU kernels) needs on each "
                  "architecture, read from Triton's compiler with an explicit target: whether it can launch there "
                  "(shared memory within the per-block limit) and whether ptxas spilled registers. No speed: no GPU "
                  "ran them. Per-kernel detail: `benchmarks/results/kernel-compile.md`.", "",
                  kernel_compile.summary_markdown(res)]


def gpu_markdown(gpu_dir) -> list[str]:
    """BENCHMARKS.md's GPU section: every committed benchmarks/gpu.py result (gpu-<device>.json in gpu_dir) against
    issue 11's targets, or a plain statement that there are none."""
    from benchmarks import gpu_report

    out = ["## GPU (`benchmarks/gpu.py`, measured on a GPU machine)", ""]
    files = sorted(Path(gpu_dir).glob("gpu-*.json"))
    if not files:
        return out + ["**No GPU figures: pending.** No GPU was lent to the sessions that built this project, so "
                      "nothing above or below ran on CUDA or TensorRT. On a GPU machine, `benchmarks/gpu_remote.sh` "
                      "measures the plugin path (the Triton kernels in the torch teacher) and the subgraph path; commit "
                      "its `gpu-<device>.json` and `.md` to `benchmarks/results/`, then "
                      "`python -m benchmarks.run_all --render-only` rewrites this file with them (nothing re-measured).",
                      ""]
    for path in files:
        out += [gpu_report.summary_markdown(json.loads(path.read_text())),
                f"Full tables: `benchmarks/results/{path.with_suffix('.md').name}`.", ""]
    return out


def serve_load_markdown(results_dir) -> list[str]:
    """BENCHMARKS.md's serving section: the committed benchmarks/serve_load.py result, or that it is pending."""
    from benchmarks import serve_load

    path = Path(results_dir) / "serve-load.json"
    if not path.exists():
        return ["## Serving under load (`benchmarks/serve_load.py`)", "",
                "**Pending:** run `python -m benchmarks.serve_load` (it needs `make serve-env`).", ""]
    return [serve_load.markdown(json.loads(path.read_text()), heading="##"),
            "Command: `python -m benchmarks.serve_load` (needs `make serve-env`). Full result: "
            "`benchmarks/results/serve-load.json`; the serving page is [docs/serving.md](docs/serving.md).", ""]


def render_markdown(r: dict, json_path: Path, gpu_dir=None) -> str:
    from asvp.exporter.teachers.train import quality_markdown

    from benchmarks import bench_graph_passes

    m = r["machine"]
    out = ["# Benchmarks", ""]
    if r.get("smoke"):
        out += ["**Smoke run (tiny budgets): these figures only show that the pipeline runs; do not quote them.**", ""]
    out += [f"Written by `{r['command']}` in {r['seconds']} s on {m['date']}. Raw results: `{json_path}`.", "",
            "| machine | |", "|---|---|",
            f"| CPU | {m['cpu']} ({m['cores']} logical cores) |", f"| OS | {m['os']} |",
            f"| Python / torch / onnxruntime / numpy | {m['python']} / {m['torch']} / {m['onnxruntime']} / {m['numpy']} |",
            "", "This machine has no GPU: every figure below comes from its CPU, except the GPU section's, which "
            "come from GPU machines.", "",
            "## Teachers (held-out PSNR/SSIM, `asvp eval-teachers`)", "", quality_markdown(r["teachers"]),
            "## Latency: defended / clean, ONNX Runtime CPU", ""]
    first = r["latency"][0]
    out += [f"Default `AsvpConfig` (subgraph mode, h={r['config']['h']}, k={r['config']['k']} {r['config']['k_mode']}, "
            f"iters={r['config']['iters']}); the default placement is **{r['config']['placement']}**, and each row says "
            f"which placement it measures. Input: a {first['shape']} crop of a held-out photograph. Per teacher the clean "
            f"model and every variant run interleaved in one process (asvp's ONNX Runtime CPU sessions, default graph "
            f"optimisation, {first['threads']} intra-op thread(s); {first['repeats']} repeats after a warm-up, each "
            "repeat runs every model once in a rotating order). **CPU time** is the inference thread's own CPU time "
            "(with one intra-op thread ONNX Runtime computes on the calling thread): the machine is shared, and wall-clock "
            "time also counts the time the scheduler gives to other jobs, so the targets are judged on CPU time; wall-clock "
            "ratios are given beside it. Ratios: of the medians (p50), and the median of the per-repeat paired ratios "
            "with their p25-p75. `tap only` exposes the automatic node's clean feature as an extra output and computes "
            "nothing: the floor of the tap placement. 1 node = the automatic node; 3 nodes = three candidates spread "
            "evenly over the network; `within budget` = the nodes `asvp node-cost --budget` chooses (table below). `floor: ..., tap + Gram` exposes the same features and computes only their Gram "
            "matrices M M^T (no eigensolver, no apply, no perturbed output): the cost below which no exact ASVP can go "
            "on this runtime at these nodes; `floor: ..., Gram + apply` adds the apply step with a fixed U (the "
            "defence without its eigensolver). Targets (issue 11): SR one node <= 1.05, every teacher and three nodes <= "
            "1.10, at the default placement.", "",
            "| task | variant | defended nodes | clean CPU ms | defended CPU ms | CPU ratio p50 | CPU paired median [p25-p75] "
            "| wall ratio p50 | wall paired median | target |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for row in r["latency"]:
        c, w, tgt = row["cpu"], row["wall"], row.get("target")
        if c is None:
            out.append(f"| {row['task']} | {row['variant']} | no candidate fits | | | | | | | |")
            continue
        verdict = "" if tgt is None else (f"<= {tgt:.2f}: " + ("met" if c["ratio_p50"] <= tgt else "**not met**")
                                          if row["placement"] == r["config"]["placement"] else f"(<= {tgt:.2f} at {r['config']['placement']})")
        if row.get("selection") == "budget" and len(row["selectors"]) < row["nodes"]:
            verdict = f"only {len(row['selectors'])} of {row['nodes']} fit"
        out.append(f"| {row['task']} | {row['variant']} | {', '.join(row['selectors'])} | {_f(c['clean_p50_ms'], '.1f')} | "
                   f"{_f(c['defended_p50_ms'], '.1f')} | {_f(c['ratio_p50'])} | {_f(c['ratio_paired_median'])} "
                   f"[{_f(c['ratio_paired_p25'])}-{_f(c['ratio_paired_p75'])}] | {_f(w['ratio_p50'])} | "
                   f"{_f(w['ratio_paired_median'])} | {verdict} |")
    out += floor_markdown(r["latency"], r["config"]["placement"])
    out += budget_markdown(r["latency"], r.get("node_costs", {}))
    out += ["", bench_graph_passes.markdown(r["graph_passes"]), ""]
    out += kernel_compile_markdown(r.get("kernel_compile"))
    out += gpu_markdown(gpu_dir if gpu_dir is not None else Path(__file__).resolve().parent / "results")
    out += serve_load_markdown(gpu_dir if gpu_dir is not None else Path(__file__).resolve().parent / "results")
    att = r["attack"]
    out += [f"## Distillation attack headline (`asvp attack`, preset {att['preset']}, kind {att['kind']}, seed {att['seed']})", "",
            "| task | placement | teacher drop dB | student drop dB | student SSIM drop % | seed spread dB |", "|---|---|---|---|---|---|"]
    for t in att["tasks"]:
        d = t["drops"]
        out.append(f"| {t['task']} | {t['placement']} | {_f(d['teacher']['db'], '+.3f')} | {_f(d['student']['db'], '+.2f')} | "
                   f"{_f(d['student']['ssim_pct'], '+.1f')} | {_f(t['seed_noise_db'], '.2f')} (margin {_f(t['noise_margin_db'], '.2f')}) |")
    out += ["", "Paper's claims on this run:", ""]
    out += [f"- **{'holds' if c['holds'] else 'does not hold'}**: {c['claim']}. {c.get('evidence', '')}" for c in att["claims"]]
    out += ["", "The full five-task table, the adaptive attacker and the configuration sweep are in "
            "[docs/protection.md](docs/protection.md).", ""]
    return "\n".join(out)

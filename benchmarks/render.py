"""Turn the results of benchmarks/run_all.py into BENCHMARKS.md (every figure comes from the results dict)."""
from __future__ import annotations

from pathlib import Path


def _f(v, spec=".3f"):
    return format(v, spec) if isinstance(v, (int, float)) else str(v)


def render_markdown(r: dict, json_path: Path) -> str:
    from asvp.exporter.teachers.train import quality_markdown

    import bench_graph_passes

    m = r["machine"]
    out = ["# Benchmarks", ""]
    if r.get("smoke"):
        out += ["**Smoke run (tiny budgets): these figures only show that the pipeline runs; do not quote them.**", ""]
    out += [f"Written by `{r['command']}` in {r['seconds']} s on {m['date']}. Raw results: `{json_path}`.", "",
            "| machine | |", "|---|---|",
            f"| CPU | {m['cpu']} ({m['cores']} logical cores) |", f"| OS | {m['os']} |",
            f"| Python / torch / onnxruntime / numpy | {m['python']} / {m['torch']} / {m['onnxruntime']} / {m['numpy']} |",
            "", "No GPU: TensorRT and CUDA figures are absent because nothing was run there.", "",
            "## Teachers (held-out PSNR/SSIM, `asvp eval-teachers`)", "", quality_markdown(r["teachers"]),
            "## Latency: defended / clean, ONNX Runtime CPU", "",
            f"Default `AsvpConfig` (subgraph mode, {r['config']['placement']} placement, h={r['config']['h']}, "
            f"k={r['config']['k']} {r['config']['k_mode']}, iters={r['config']['iters']}). Clean and defended are profiled interleaved in one run "
            "(`asvp.api.profile`, alternating order, warm-up first); ratios are of p50, mean, and the median of "
            "per-iteration paired ratios. `auto` = the automatic node; 3 nodes = spread evenly over the candidates.", "",
            "| task | defended nodes | input | clean p50 ms | defended p50 ms | ratio p50 | ratio mean | paired median |",
            "|---|---|---|---|---|---|---|---|"]
    for row in r["latency"]:
        out.append(f"| {row['task']} | {row['nodes']} ({', '.join(row['selectors'])}) | {row['shape']} | "
                   f"{_f(row['clean_p50_ms'], '.1f')} | {_f(row['defended_p50_ms'], '.1f')} | {_f(row['ratio_p50'])} | "
                   f"{_f(row['ratio_mean'])} | {_f(row['ratio_paired_median'])} |")
    sr1 = next((row for row in r["latency"] if row["task"] == "sr" and row["nodes"] == 1), None)
    if sr1:
        ok = sr1["ratio_p50"] <= 1.10
        out += ["", f"Target: defended/clean <= 1.10 with one node on the SR teacher. Measured p50 ratio "
                f"{sr1['ratio_p50']:.3f}: **{'met' if ok else 'not met'}** on this run (2-core CPU; run-to-run spread of "
                "these ratios is several percent, compare the paired median too)."]
    out += ["", bench_graph_passes.markdown(r["graph_passes"]), ""]
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

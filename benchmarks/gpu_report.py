"""The Markdown of benchmarks/gpu.py's results: the full report (gpu-<device>.md) and one device's summary against
issue 11's targets (BENCHMARKS.md's GPU section, through benchmarks/render.py).
"""
from __future__ import annotations

from asvp.runtime.engines.shapes import format_shape

try:
    from benchmarks import gpu_paths, gpu_precision
except ImportError:  # run as a script (benchmarks/gpu_remote.sh): this file's folder is on sys.path
    import gpu_paths
    import gpu_precision

KERNEL_TARGET_US = 50.0
# issue 11's targets, busy time defended / clean at 1x3x256x256 (set for an H100): plugin path, subgraph path
TARGET_SHAPE = "1x3x256x256"
PATH_TARGETS = {"plugin": 1.05, "subgraph": 1.3}


def _f(value, fmt="{:.1f}"):
    return "n/a" if value is None else fmt.format(value)


def header_lines(res: dict) -> list[str]:
    """The report's title and what was measured, how."""
    env, s = res["environment"], res["settings"]
    return [f"# GPU benchmark: {env['device']}", "",
            f"Measured by `python benchmarks/gpu.py` on {env['date']}: {env['device']} (compute capability "
            f"{env.get('capability')}, {env.get('sms')} SMs), driver {env.get('driver') or 'unknown'}; torch "
            f"{env['torch']} (CUDA {env['cuda']}), Triton {env['triton']}, onnxruntime {env.get('onnxruntime')}, "
            f"onnx2torch {env.get('onnx2torch')}. fp32, TF32 off; {s['iters']} timed forwards after {s['warmup']} "
            f"warm-up ones. ASVP config: {s['config']}.", "",
            "Busy = sum of CUDA kernel durations per forward (torch.profiler; launch gaps excluded). Wall = host "
            "time per forward, eager or replayed from a CUDA graph. Ratios are defended / clean.", ""]


def kernel_lines(kernel_rows: list) -> list[str]:
    """The kernel-alone table."""
    lines = ["## The kernel alone", "",
             f"Target: <= {KERNEL_TARGET_US:.0f} us per {format_shape(gpu_paths.KERNEL_FEATURE)} feature.", "",
             "| kernel | launches | busy (us) | eager wall (us) | graph replay (us) | capture | "
             "rel. error vs float64 |",
             "|---|---|---|---|---|---|---|"]
    for r in kernel_rows:
        if "error" in r and "kernels" not in r:
            lines.append(f"| {r['kernel']} | failed: {r['error']} | | | | | |")
            continue
        cap = "yes" if r.get("captured") else f"no ({r.get('error')})"
        lines.append(f"| {r['kernel']} | {_f(r.get('kernels'), '{:.0f}')} | {_f(r.get('busy_us'))} | "
                     f"{_f(r.get('eager_us'))} | {_f(r.get('graph_us'))} | {cap} | {_f(r.get('rel_err'), '{:.1e}')} |")
    return lines


def path_lines(title: str, rows: list) -> list[str]:
    """One path's table (clean against defended per task and shape), and the kernel's worst error seen there."""
    runtimes = sorted({r["runtime"] for r in rows})
    lines = ["", f"## {title}", "", f"Runtime: {', '.join(runtimes)}.", "",
             "| task | node (C) | input | kernels clean -> defended | busy clean (us) | busy ratio | "
             "eager ratio | graph ratio | captured clean / defended |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        head = f"| {r['task']} | {r['node']} ({r.get('channels', '?')}) | {r['shape']} |"
        if "error" in r:
            lines.append(f"{head} failed: {r['error']} | | | | | |")
            continue
        c, d, q = r["clean"], r["defended"], r["ratio"]
        lines.append(f"{head} {c['kernels']:.0f} -> {d['kernels']:.0f} | {c['busy_us']:.1f} | "
                     f"{_f(q['busy'], '{:.3f}x')} | {_f(q['eager'], '{:.3f}x')} | {_f(q['graph'], '{:.3f}x')} | "
                     f"{'yes' if c.get('captured') else 'no'} / {'yes' if d.get('captured') else 'no'} |")
    errs = [r for r in rows if r.get("kernel_rel_err") is not None]
    if errs:
        worst = max(errs, key=lambda r: r["kernel_rel_err"])
        lines += ["", f"Kernel vs float64 reference on the features seen (first sample): max relative error "
                      f"{worst['kernel_rel_err']:.1e} ({worst['task']} {worst['shape']})."]
    return lines


def render_markdown(res: dict) -> str:
    """The full report, gpu-<device>.md."""
    lines = header_lines(res) + kernel_lines(res["kernel"])
    for path, title in (("plugin", "Plugin path: torch teacher, Triton kernel at the node (inline)"),
                        ("subgraph", "Subgraph path: the defended ONNX model (inline)")):
        rows = [r for r in res["rows"] if r["path"] == path]
        if rows:
            lines += path_lines(title, rows)
    if res.get("precision"):
        lines += gpu_precision.markdown(res["precision"])
    if res["errors"]:
        lines += ["", "## Problems during the run", ""] + [f"- {e}" for e in res["errors"]]
    return "\n".join(lines) + "\n"


def summary_markdown(res: dict) -> str:
    """One device's figures against issue 11's targets, for BENCHMARKS.md's GPU section: the three-launch kernel
    alone (busy us per [1, 32, 256, 256] feature), and per teacher the plugin and subgraph paths' busy ratio at
    1x3x256x256; with capture and the run's problems."""
    env = res["environment"]
    lines = [f"**{env['device']}** (compute capability {env.get('capability')}), driver "
             f"{env.get('driver') or 'unknown'}, torch {env['torch']} (CUDA {env['cuda']}), Triton {env['triton']}; "
             f"measured {env['date']} by `benchmarks/gpu.py`. Targets were set for an H100.", "",
             "| what | busy | target | verdict | CUDA graph capture |", "|---|---|---|---|---|"]

    def verdict(value, target):
        return "not measured" if value is None else ("met" if value <= target else "**not met**")

    for r in res["kernel"]:
        if r["kernel"].startswith("asvp_triton ("):
            busy = None if "error" in r and "kernels" not in r else r.get("busy_us")
            cap = "yes" if r.get("captured") else f"no ({r.get('error')})"
            lines.append(f"| kernel alone, {r['feature']} | {_f(busy)} us | <= {KERNEL_TARGET_US:.0f} us | "
                         f"{verdict(busy, KERNEL_TARGET_US)} | {cap} |")
    for path, target in PATH_TARGETS.items():
        for r in res["rows"]:
            if r["path"] != path or r["shape"] != TARGET_SHAPE:
                continue
            busy = None if "error" in r else r["ratio"]["busy"]
            cap = "n/a" if "error" in r else "yes" if r["defended"].get("captured") else "no"
            lines.append(f"| {path} path ({r['runtime']}), {r['task']}, {r['shape']} | {_f(busy, '{:.3f}x')} | "
                         f"<= {target}x | {verdict(busy, target)} | {cap} |")
    if res["errors"]:
        lines += ["", f"Problems during the run: {len(res['errors'])} (listed in the device's Markdown file)."]
    return "\n".join(lines) + "\n"

"""What the Triton ASVP kernels need on each NVIDIA architecture, from Triton's real compiler: no GPU needed.

    python -m benchmarks.kernel_compile                # 7 architectures x 4 paddings (1-3 min; Triton caches kernels)
    python -m benchmarks.kernel_compile --archs 86,87 --channels 96

For each architecture (sm_80 ... sm_120) and padded channel count (CP = 16, 32, 64, 128: every C from 1 to 128
compiles to one of these), compiles the four kernels (gram, eig, apply, fused) with triton.compile and an explicit
target, and reads what one block needs: registers per thread and stack bytes per thread (the cubin's resource
table, `cuobjdump --dump-resource-usage`; ptxas puts spilled registers on the stack) and dynamic shared memory
(Triton's metadata). A kernel launches only where its shared memory is within the architecture's per-block limit
(`triton_launch.SHARED_LIMITS`, from the CUDA programming guide); Triton refuses the launch otherwise.

Static facts only: nothing is launched, so nothing here says how fast the kernels run (benchmarks/gpu.py measures
that on a GPU). The figures move with the Triton version, which the report names.

Writes benchmarks/results/kernel-compile.json and .md (--out-dir to change) and prints the Markdown.
Bad arguments: one line on stderr, exit 2; no Triton: exit 3.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from asvp.errors import AsvpError
from asvp.io import write_text_atomic
from asvp.runtime.engines.kernels import triton_compile, triton_env, triton_launch

from benchmarks import provenance

PROG = "kernel_compile.py"
DEFAULT_OUT_DIR = provenance.ROOT / "benchmarks" / "results"
STEM = "kernel-compile"
ARCHS = tuple(triton_launch.SHARED_LIMITS)  # every architecture with a known shared-memory limit
CHANNELS = (16, 32, 64, 128)


def allowed(values: list, what: str, choices) -> list:
    bad = [v for v in values if v not in choices]
    if bad:
        raise AsvpError(f"{what}: {bad[0]} is not one of {', '.join(map(str, choices))}")
    return values


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default=",".join(map(str, ARCHS)),
                    help="compute capabilities as integers, comma-separated (default %(default)s)")
    ap.add_argument("--channels", default=",".join(map(str, CHANNELS)),
                    help="channel counts C, 1..128, comma-separated (default %(default)s: one per padding CP)")
    ap.add_argument("--out-dir", default=str(DEFAULT_OUT_DIR),
                    help="where the JSON and Markdown go (default %(default)s)")
    a = ap.parse_args(argv)
    a.archs = allowed(provenance.parse_list(a.archs, int, "--archs"), "--archs", ARCHS)
    a.channels = allowed(provenance.parse_list(a.channels, int, "--channels"), "--channels",
                         range(1, triton_launch.MAX_CHANNELS + 1))
    return a


def run(archs, channels, progress: bool = True) -> dict:
    """Compile every kernel for every (arch, C); the results as a JSON-ready dict."""
    triton = triton_env.require_triton()
    env = {key: val for key, val in os.environ.items() if key.startswith("TRITON_")}
    rows = []
    t0 = time.perf_counter()
    for arch in archs:
        for c in channels:
            for kernel in triton_launch.KERNELS:
                r = triton_compile.kernel_resources(kernel, c, arch)
                rows.append(dict(dataclasses.asdict(r), fits=r.fits))
            if progress:
                print(f"[{time.perf_counter() - t0:6.1f} s] sm_{arch} C={c}", file=sys.stderr, flush=True)
    return {"triton": triton.__version__, "commit": provenance.commit(), "archs": list(archs),
            "channels": list(channels), "triton_env": env, "seconds": round(time.perf_counter() - t0, 1),
            "rows": rows}


def summarize(res: dict) -> dict:
    """Per architecture: whether every kernel fits at every C measured, and the most shared memory any needs."""
    out = {}
    for arch in res["archs"]:
        rows = [r for r in res["rows"] if r["arch"] == arch]
        worst = max(rows, key=lambda r: r["shared_bytes"])
        out[str(arch)] = {"all_fit": all(r["fits"] for r in rows), "max_shared_bytes": worst["shared_bytes"],
                          "max_shared_kernel": f"{worst['kernel']} (C={worst['channels']})",
                          "shared_limit": worst["shared_limit"],
                          "spilling": sorted({f"{r['kernel']} (C={r['channels']})" for r in rows if r["stack_bytes"]})}
    return out


def summary_markdown(res: dict, json_path=None) -> str:
    """Provenance line and one row per architecture: its limit, the most shared memory needed, spills."""
    summary = summarize(res)
    lines = [f"Triton {res['triton']}, commit {res['commit']}; compiled with an explicit target, nothing launched "
             f"(no GPU). `{PROG}` ({res['seconds']} s)"
             + (f"; raw: `{provenance.shown(json_path)}`." if json_path else "."), "",
             "| arch | e.g. | shared limit per block | most shared memory needed | every kernel launches | "
             "kernels with spill stack |", "|---|---|---|---|---|---|"]
    for arch in res["archs"]:
        s = summary[str(arch)]
        lines.append(f"| sm_{arch} | {triton_launch.ARCH_EXAMPLES.get(arch, '')} | {s['shared_limit'] // 1024} KB | "
                     f"{s['max_shared_bytes'] // 1024} KB, {s['max_shared_kernel']} | "
                     f"{'yes' if s['all_fit'] else '**no**'} | {', '.join(s['spilling']) or 'none'} |")
    return "\n".join(lines) + "\n"


def detail_markdown(res: dict) -> str:
    """One row per (architecture, C): registers / spill stack / shared memory of each kernel."""
    lines = ["Per kernel: registers per thread / spill stack bytes per thread / shared memory KB per block "
             "(warps); **bold** where the shared memory is over the architecture's limit.", "",
             "| arch | C (CP) | " + " | ".join(triton_launch.KERNELS) + " |",
             "|---|---|" + "---|" * len(triton_launch.KERNELS)]
    for arch in res["archs"]:
        for c in res["channels"]:
            cells = []
            for kernel in triton_launch.KERNELS:
                r = next(r for r in res["rows"] if (r["arch"], r["channels"], r["kernel"]) == (arch, c, kernel))
                shared = f"{r['shared_bytes'] / 1024:g}"
                cells.append(f"{r['registers']} / {r['stack_bytes']} / {shared if r['fits'] else f'**{shared}**'} "
                             f"({r['warps']})")
            lines.append(f"| sm_{arch} | {c} ({triton_launch.padded_channels(c)}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_markdown(res: dict, json_path=None) -> str:
    """The whole report: the summary, then the per-kernel detail."""
    return summary_markdown(res, json_path) + "\n" + detail_markdown(res)


def write_results(res: dict, out_dir) -> tuple:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    js = write_text_atomic(out_dir / f"{STEM}.json", json.dumps(res, indent=2, sort_keys=True) + "\n")
    md = write_text_atomic(out_dir / f"{STEM}.md", "# Triton ASVP kernels per architecture\n\n"
                                                   + render_markdown(res, js))
    return Path(js), Path(md)


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
        res = run(args.archs, args.channels)
        js, md = write_results(res, args.out_dir)
    except AsvpError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(md.read_text())
    print(f"wrote {js} and {md}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

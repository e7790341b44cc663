"""The standard-op ASVP in reduced precision: accuracy of the torch mirror in float32, float16 and bfloat16.

    python -m benchmarks.precision [--size 2160x3840] [--out-dir benchmarks/results]

On the bundled sr teacher's automatic node (its feature computed once with ONNX Runtime in float32 at a
1 x 3 x SIZE input from a bundled image), at activation scales x1, x100 and x1e-3, it runs `asvp_subspace` with
the feature in each dtype (the passes over the feature in that dtype, the C x C solve in float32), and with the
solve in the feature's dtype too (what the solve would do unconstrained). Per run: the relative error of the
perturbation against float64 (asvp_exact, ||out - ref|| / ||ref - x||) and whether anything is inf/NaN. Also the
largest entry of the unscaled Gram M M^T the subgraph formed before (float64; float16's largest is 65,504) and
whether forming it in float16 overflows. torch's CPU kernels round every float16/bfloat16 product to the dtype
(tests/graph_passes/test_reduced_precision.py shows it), so these are reduced-precision runs.

Writes benchmarks/results/precision.json and .md (atomically). The default 4K size needs about 6 GB of memory and
a few minutes on 2 cores; --size 540x960 is quick.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from asvp.config import AsvpConfig
from asvp.errors import AsvpError
from asvp.io import write_text_atomic
from asvp.method import as_matrix, asvp_exact
from asvp.subspace import asvp_subspace
from benchmarks.provenance import ROOT, commit

PROG = "python -m benchmarks.precision"
STEM = "precision"
SCALES = (1.0, 100.0, 1e-3)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def sr_feature(h: int, w: int) -> tuple[str, torch.Tensor]:
    """(node name, feature [1, C, H', W']) of the sr teacher's automatic node at a 1 x 3 x h x w input."""
    import onnx
    import onnxruntime as ort
    import torch.nn.functional as F

    from asvp import api
    from asvp.graph_passes import select
    from asvp.tasks.data import image

    with tempfile.TemporaryDirectory() as tmp:
        model = onnx.load(api.export("sr", Path(tmp) / "sr.onnx").path)
    node = select.automatic(select.candidates(model))
    model.graph.output.append(onnx.helper.make_tensor_value_info(node.output, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    img = F.interpolate(image("motorcycle")[None], size=(h, w), mode="bilinear").clamp(0, 1).numpy()
    return node.name, torch.from_numpy(sess.run([node.output], {sess.get_inputs()[0].name: img})[0])


def perturbation_error(out: torch.Tensor, ref: torch.Tensor, x: torch.Tensor) -> float:
    out, ref, x = (t.double().flatten(1) for t in (out, ref, x))
    return float(((out - ref).norm(dim=1) / (ref - x).norm(dim=1)).max())


def runs(x: torch.Tensor, cfg: AsvpConfig) -> list[dict]:
    """Every (dtype, solve) run of the mirror on x against float64."""
    ref = asvp_exact(x.double(), cfg)
    rows = []
    for name, dtype in DTYPES.items():
        solves = [None] if dtype == torch.float32 else [None, dtype]
        for solve in solves:
            out = asvp_subspace(x.to(dtype), cfg, solve_dtype=solve)
            finite = bool(torch.isfinite(out).all())
            rows.append({"dtype": name, "solve": "fp32" if solve is None and dtype != torch.float32 else name,
                         "finite": finite, "perturbation_error": perturbation_error(out, ref, x) if finite else None})
            del out
    return rows


def run(size: tuple[int, int]) -> dict:
    cfg = AsvpConfig()
    node, feat = sr_feature(*size)
    m = as_matrix(feat).double()
    gram_max = float((m @ m.transpose(1, 2)).abs().max())
    cases = []
    for scale in SCALES:
        x = feat * scale
        half_gram = as_matrix(x.half())
        cases.append({"scale": scale, "old_gram_max": gram_max * scale**2,
                      "old_gram_fp16_finite": bool(torch.isfinite(half_gram @ half_gram.transpose(1, 2)).all()),
                      "runs": runs(x, cfg)})
    return {"commit": commit(), "command": f"{PROG} --size {size[0]}x{size[1]}", "node": node,
            "input": [1, 3, *size], "feature": list(feat.shape), "config": cfg.to_dict(), "cases": cases}


def render_markdown(res: dict) -> str:
    lines = [f"Command: `{res['command']}` (commit {res['commit']}). The sr teacher's automatic node `{res['node']}`, "
             f"feature {res['feature']} at a {res['input']} input. Relative error of the perturbation against float64; "
             "solve: the precision of the C x C solve (the passes over the feature run in the dtype).", "",
             "| scale | old Gram max (fp16 max 65,504) | old Gram in fp16 | dtype | solve | finite | error |",
             "|---|---|---|---|---|---|---|"]
    for case in res["cases"]:
        for r in case["runs"]:
            err = "-" if r["perturbation_error"] is None else f"{r['perturbation_error']:.2e}"
            lines.append(f"| x{case['scale']:g} | {case['old_gram_max']:.3g} | "
                         f"{'finite' if case['old_gram_fp16_finite'] else 'inf'} | {r['dtype']} | {r['solve']} | "
                         f"{'yes' if r['finite'] else '**no**'} | {err} |")
    return "\n".join(lines) + "\n"


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise AsvpError(f"--size: expected HxW, e.g. 2160x3840, got {text!r}") from None
    if h < 8 or w < 8:
        raise AsvpError(f"--size: each side must be at least 8, got {text!r}")
    return h, w


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="2160x3840", help="the teacher's input size HxW (default 2160x3840)")
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    try:
        res = run(parse_size(args.size))
    except AsvpError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js = write_text_atomic(out / f"{STEM}.json", json.dumps(res, indent=2) + "\n")
    md = write_text_atomic(out / f"{STEM}.md", "# ASVP in reduced precision\n\n" + render_markdown(res))
    print(Path(md).read_text())
    print(f"wrote {js} and {md}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`asvp` command line: a thin shell over asvp.api (no logic of its own beyond argument parsing and printing)."""
from __future__ import annotations

import argparse
import json
import sys

from asvp import api
from asvp.errors import AsvpError

TASK_NAMES = ("sr", "lowlight", "underwater", "dehaze", "derain")


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


# ---- subcommands -----------------------------------------------------------------------------------------

def cmd_train_teacher(a):
    rec = api.train_teacher(a.task, steps=a.steps, seed=a.seed, progress=not a.quiet)
    h = rec["heldout"]
    print(f"{rec['teacher']}: held-out PSNR {h['psnr']:.2f} dB (baseline {h['baseline']} {h['baseline_psnr']:.2f} dB), "
          f"SSIM {h['ssim']:.4f} (baseline {h['baseline_ssim']:.4f})")


def cmd_eval_teachers(a):
    from asvp.exporter.teachers.train import quality_markdown

    rows = api.teacher_quality(a.task or None)
    _print_json(rows) if a.json else print(quality_markdown(rows), end="")


def cmd_export(a):
    res = api.export(a.source, a.output, weights=a.weights, kwargs=a.kwargs, task=a.task,
                     size_multiple=a.size_multiple, opset=a.opset)
    if a.json:
        _print_json(res.to_dict())
    else:
        print(f"wrote {res.path} ({res.teacher}, task {res.task}, x{res.scale}, opset {res.opset}, IR {res.ir_version}); "
              f"parity max |ort - torch| = {res.parity_max_abs_diff:.2e} <= {res.parity_tolerance:g}")


def cmd_nodes(a):
    from asvp.graph_passes.candidates import candidates_table

    nodes = api.list_nodes(a.model)
    _print_json([n.to_dict() for n in nodes]) if a.json else print(candidates_table(nodes))


# ---- parser --------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="asvp",
        description="Ship image-restoration models protected against knowledge distillation "
                    "(Adaptive Singular Value Perturbation) as ONNX and TensorRT.",
        epilog="Typical flow: asvp export sr -o sr.onnx; asvp nodes sr.onnx; asvp defend sr.onnx -o sr.asvp.onnx; "
               "asvp validate sr.onnx sr.asvp.onnx --task sr; asvp profile sr.onnx sr.asvp.onnx")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser("train-teacher", help="train a bundled teacher on scikit-image's images (reproducible)",
                       description="Train the task's teacher from a fixed seed and overwrite its bundled weights.")
    s.add_argument("--task", required=True, help=f"one of {', '.join(TASK_NAMES)}")
    s.add_argument("--steps", type=int, default=1200, help="optimizer steps (default 1200)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_train_teacher)

    s = sub.add_parser("eval-teachers", help="held-out PSNR/SSIM of the bundled teachers vs trivial baselines")
    s.add_argument("--task", action="append", help="limit to this task (repeatable)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_eval_teachers)

    s = sub.add_parser("export", help="trace a teacher to ONNX (dynamic N/H/W) and check parity with ONNX Runtime",
                       description="SOURCE is a bundled task name, package.module:Class (with --weights), "
                                   "or a spandrel-supported checkpoint (.pth/.safetensors).")
    s.add_argument("source")
    s.add_argument("-o", "--output", required=True, help="output .onnx path (written atomically)")
    s.add_argument("--weights", help="state dict for module:Class sources")
    s.add_argument("--kwargs", help="JSON constructor arguments for module:Class sources")
    s.add_argument("--task", help="task label recorded in metadata for user models (default: custom)")
    s.add_argument("--size-multiple", type=int, default=1, help="input H and W must be multiples of this (user models)")
    s.add_argument("--opset", type=int, default=None, help="ONNX opset (>= 17, default 17)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("nodes", help="list candidate feature nodes where ASVP can be inserted")
    s.add_argument("model", help="ONNX model")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_nodes)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except AsvpError as exc:
        print(f"asvp: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("asvp: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

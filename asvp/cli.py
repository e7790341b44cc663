"""`asvp` command line: a thin shell over asvp.api (no logic of its own beyond argument parsing and printing)."""
from __future__ import annotations

import argparse
import json
import sys

from asvp import api
from asvp.config import AsvpConfig
from asvp.errors import AsvpError

_D = AsvpConfig()  # help texts show the real defaults

TASK_NAMES = ("sr", "lowlight", "underwater", "dehaze", "derain")


def _progress(a) -> bool:
    """Progress bars on long work, for people: off with -q, and off when stderr is not a terminal (logs, CI)."""
    return not getattr(a, "quiet", False) and sys.stderr.isatty()


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


# ---- subcommands -----------------------------------------------------------------------------------------

def cmd_train_teacher(a):
    rec = api.train_teacher(a.task, steps=a.steps, seed=a.seed, progress=_progress(a))
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


def cmd_defend(a):
    overrides = {f: getattr(a, f) for f in ("h", "k", "k_mode", "tau", "iters", "placement") if getattr(a, f) is not None}
    res = api.defend(a.model, a.output, nodes=a.nodes, config=overrides, mode=a.mode, allow_redefend=a.allow_redefend)
    if a.json:
        _print_json(res.to_dict())
    else:
        where = ", ".join(f"{n['node']} (C={n['channels']}{', tap ' + n['tap_output'] if n['tap_output'] else ''})"
                          for n in res.nodes)
        print(f"wrote {res.path}: ASVP {res.mode} ({res.placement}) at {where}; config {res.digest}")


def cmd_build(a):
    res = api.build_engine(a.model, a.output, min_shape=a.min, opt_shape=a.opt, max_shape=a.max, fp16=a.fp16,
                           int8=a.int8, workspace=a.workspace, plugin=not a.no_plugin)
    if a.json:
        _print_json(res.to_dict())
        return
    p = res.profile
    print(f"wrote {res.engine} ({res.engine_bytes} bytes, TensorRT {res.tensorrt_version}, "
          f"{'fp16' if res.fp16 else 'fp32'}{'+int8' if res.int8 else ''}, profile {p.input} "
          f"min {'x'.join(map(str, p.min))} opt {'x'.join(map(str, p.opt))} max {'x'.join(map(str, p.max))}, "
          f"{res.plugin_nodes} AsvpPerturb plugin node(s)) and {res.sidecar}")
    for note in res.notes:
        print(f"note: {note}")


def cmd_backends(a):
    rows = api.backends()
    if a.json:
        _print_json(rows)
        return
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        print(f"{r['name'].ljust(width)}  {'yes' if r['available'] else 'no '}  {r['detail']}")


EXIT_VERDICT_FAILED = 1  # `asvp validate`: the models ran but the defence costs more than the thresholds allow


def cmd_validate(a):
    res = api.validate(a.clean, a.defended, task=a.task, images=a.images, backend=a.backend, heldout_size=a.size,
                       max_teacher_drop=a.max_teacher_drop, max_ssim_drop=a.max_ssim_drop,
                       min_output_psnr=a.min_output_psnr, max_abs_diff=a.max_abs_diff, out=a.out,
                       progress=_progress(a))
    _print_json(res.to_dict()) if a.json else print("\n".join(res.summary_lines()))
    return 0 if res.passed else EXIT_VERDICT_FAILED


def cmd_profile(a):
    res = api.profile(a.clean, a.defended, backend=a.backend, shape=a.shape, warmup=a.warmup, iters=a.iters,
                      memory=a.memory, out=a.out, progress=_progress(a))
    _print_json(res.to_dict()) if a.json else print("\n".join(res.summary_lines()))



def _asvp_config(a):
    """AsvpConfig() with the --h/--k/--placement given on the command line (None if none given)."""
    from asvp.config import AsvpConfig

    changes = {k: v for k, v in (("h", a.h), ("k", a.k), ("placement", a.placement)) if v is not None}
    return AsvpConfig().with_(**changes) if changes else None


def cmd_attack(a):
    from asvp.runtime.attack import claims_text, markdown_table

    res = api.attack(a.task, clean=a.clean, defended=a.defended, kind=a.kind, preset=a.preset, seed=a.seed,
                     out=a.out, config=_asvp_config(a), nodes=a.nodes, steps=a.steps, pool=a.pool,
                     progress=_progress(a))
    if a.json:
        _print_json(res.to_dict())
        return
    print(markdown_table(res.tasks) + "".join(f"\nskipped {s['task']}: {s['reason']}" for s in res.skipped)
          + "\n\n" + claims_text(res.claims))
    print(f"\n{len(res.tasks)} task(s) in {res.seconds:.0f} s" + (f"; report in {res.out}" if res.out else ""))


def cmd_sweep(a):
    from asvp.runtime.sweep import sweep_markdown

    res = api.sweep(a.task, h=a.h, k=a.k, placement=a.placement, nodes=a.nodes, preset=a.preset, seed=a.seed,
                    out=a.out, steps=a.steps, pool=a.pool, progress=_progress(a))
    if a.json:
        _print_json(res.to_dict())
        return
    print(sweep_markdown(res))
    print(f"{len(res.rows)} configuration(s) in {res.seconds:.0f} s" + (f"; report in {res.out}" if res.out else ""))

def cmd_demo(a):
    res = api.demo(a.task, a.out, config=None if a.h is None else AsvpConfig(h=a.h),
                   attack_steps=a.attack_steps, progress=_progress(a))
    _print_json({k: v for k, v in res.items() if k not in ("attack", "profile")}) if a.json else \
        print(f"demo finished in {res['seconds']} s; validation {'PASS' if res['validation_passed'] else 'FAIL'}; "
              f"report: {res['report']}")


# ---- parser --------------------------------------------------------------------------------------------

BACKEND_HELP = "onnxrt-cpu (default), onnxrt-cuda, onnxrt-trt, tensorrt (`asvp backends` lists what runs here)"


def _json_and_quiet(s) -> None:
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


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

    s = sub.add_parser(
        "defend", help="insert ASVP (singular value perturbation) at feature nodes of an ONNX model",
        description="Write a defended copy of MODEL: at each selected feature F [N,C,H,W], per sample, the top-k "
                    "singular values of F.reshape(C, H*W) are multiplied by h (k adaptive: the smallest k holding "
                    "a share tau of the energy, at most --k). --mode subgraph emits standard ONNX ops (any "
                    "runtime, TensorRT included); --mode plugin emits one AsvpPerturb custom node per feature "
                    "(exact; needs asvp's ONNX Runtime custom op or TensorRT plugin). Unset options keep "
                    "AsvpConfig's defaults.",
        epilog="Node selectors: NAME (exact node or tensor name from `asvp nodes MODEL`), re:PATTERN (every "
               "candidate whose name matches), OP#I (I-th candidate of that op type, 0-based, negative from the "
               "end, e.g. Conv#3, Relu#-1), auto (default: the last candidate with the most channels).")
    s.add_argument("model", help="ONNX image model (e.g. from `asvp export`)")
    s.add_argument("-o", "--output", required=True, help="defended .onnx path (written atomically, only on success)")
    s.add_argument("--nodes", nargs="+", metavar="SEL", help="feature nodes to defend (default: auto)")
    s.add_argument("--k", type=int, help=f"top-k directions amplified (the cap in adaptive mode; default {_D.k}; < channels)")
    s.add_argument("--h", type=float, help=f"amplification of the top-k singular values, > 0 (default {_D.h})")
    s.add_argument("--tau", type=float, help=f"energy share for the adaptive k, in (0, 1] (default {_D.tau})")
    s.add_argument("--k-mode", dest="k_mode", choices=("adaptive", "fixed"), help=f"adaptive k per sample or fixed k (default {_D.k_mode})")
    s.add_argument("--iters", type=int, help=f"subspace-iteration steps of the subgraph (default {_D.iters}; plugin mode is exact)")
    s.add_argument("--placement", choices=("inline", "tap"),
                   help=f"inline: perturbed feature replaces the original; tap: extra output asvp_tap_<i> (default {_D.placement})")
    s.add_argument("--mode", choices=("subgraph", "plugin"), default="subgraph", help="how ASVP is inserted (default subgraph)")
    s.add_argument("--allow-redefend", action="store_true", help="allow perturbing a node that is already defended")
    s.add_argument("--json", action="store_true", help="machine-readable result")
    s.set_defaults(func=cmd_defend)

    s = sub.add_parser("validate", help="quality cost of the defence: PSNR/SSIM of clean vs defended, with a verdict",
                       description="Run CLEAN and DEFENDED on the task's held-out images (or --images DIR with "
                                   "DIR/input/NAME.png and DIR/target/NAME.png) and report PSNR/SSIM against ground "
                                   "truth, the teacher drop, the defended-vs-clean output PSNR and max abs difference "
                                   "(Polygraphy Comparator), tap feature perturbation, and a verdict. Exit status: "
                                   "0 pass, 1 verdict failed, 2 bad input, 3 backend not available.")
    s.add_argument("clean", help="clean ONNX model")
    s.add_argument("defended", help="defended ONNX model (asvp defend)")
    s.add_argument("--task", help=f"one of {', '.join(TASK_NAMES)} (default: the model's asvp.task metadata)")
    s.add_argument("--images", metavar="DIR", help="paired images DIR/input/* and DIR/target/* (default: held-out images)")
    s.add_argument("--size", type=int, default=192, help="held-out crop side in target pixels (default 192)")
    s.add_argument("--backend", default="onnxrt-cpu", help=BACKEND_HELP)
    s.add_argument("--max-teacher-drop", type=float, default=0.1, metavar="DB",
                   help="fail if clean PSNR - defended PSNR exceeds this (default 0.1 dB)")
    s.add_argument("--max-ssim-drop", type=float, default=None, help="fail if clean SSIM - defended SSIM exceeds this")
    s.add_argument("--min-output-psnr", type=float, default=None, metavar="DB",
                   help="fail if the defended-vs-clean output PSNR is below this")
    s.add_argument("--max-abs-diff", type=float, default=None,
                   help="fail if max |defended - clean| output exceeds this (Polygraphy atol)")
    s.add_argument("--out", metavar="DIR", help="write report.json, report.md and PNG plots here")
    _json_and_quiet(s)
    s.set_defaults(func=cmd_validate)

    s = sub.add_parser("profile", help="latency (p50/p90/p99), throughput and memory; defended/clean interleaved",
                       description="Time CLEAN (and DEFENDED) on one backend with a random input of --shape. With two "
                                   "models every iteration runs both, alternating which goes first, so the "
                                   "defended/clean ratio comes from one run under the same conditions.")
    s.add_argument("clean", help="clean ONNX model (or a TensorRT engine with --backend tensorrt)")
    s.add_argument("defended", nargs="?", help="defended model (optional)")
    s.add_argument("--backend", default="onnxrt-cpu", help=BACKEND_HELP)
    s.add_argument("--shape", default="1x3x256x256", metavar="NxCxHxW", help="input shape (default 1x3x256x256)")
    s.add_argument("--warmup", type=int, default=10, help="untimed iterations per model first (default 10)")
    s.add_argument("--iters", type=int, default=50, help="timed iterations per model (default 50)")
    s.add_argument("--memory", choices=("subprocess", "inprocess", "off"), default="subprocess",
                   help="peak memory: per model in a fresh process (default), in this process (order-dependent), or off")
    s.add_argument("--out", metavar="DIR", help="write report.json, report.md and PNG plots here")
    _json_and_quiet(s)
    s.set_defaults(func=cmd_profile)

    s = sub.add_parser("build", help="build a TensorRT engine (dynamic-shape profile, AsvpPerturb plugin registered)",
                       description="Parse MODEL with TensorRT's ONNX parser (registering the AsvpPerturb plugin first "
                                   "when the model has plugin nodes), build one optimisation profile and write the "
                                   "engine plus OUTPUT.json (TensorRT version, profile, source digest) atomically. "
                                   "Needs TensorRT >= 10.8 and an NVIDIA GPU (exit 3 otherwise, nothing written).")
    s.add_argument("model", help="ONNX model (clean, subgraph-defended or plugin-defended)")
    s.add_argument("-o", "--output", required=True, help="engine path (.engine/.plan)")
    s.add_argument("--min", metavar="NxCxHxW", help="smallest input shape (default 1x3x32x32)")
    s.add_argument("--opt", metavar="NxCxHxW", help="shape TensorRT optimises for (default 1x3x256x256)")
    s.add_argument("--max", metavar="NxCxHxW", help="largest input shape (default 4x3x512x512)")
    s.add_argument("--fp16", action="store_true", help="allow FP16 kernels (the ASVP plugin itself stays FP32)")
    s.add_argument("--int8", action="store_true", help="allow INT8 (only for explicitly quantized Q/DQ models)")
    s.add_argument("--workspace", help="workspace memory pool limit, e.g. 2G or 512M (default: TensorRT's)")
    s.add_argument("--no-plugin", action="store_true", help="do not register the AsvpPerturb plugin "
                                                            "(refused for models that contain plugin nodes)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_build)

    s = sub.add_parser("backends", help="list inference backends and whether they run here")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_backends)

    s = sub.add_parser("attack", help="distillation attack: train students on a clean vs a defended model's answers",
                       description="The attacker only queries the served ONNX model (ONNX Runtime) with degraded crops "
                                   "of the training images and trains a smaller student on the answers; students of "
                                   "the clean and the defended teacher get identical budgets, seeds and queries. "
                                   "Reports teacher and student PSNR/SSIM on held-out images and the drops. Without "
                                   "--clean/--defended the bundled teacher is exported and defended into --out.")
    s.add_argument("--task", help=f"one of {', '.join(TASK_NAMES)} (default: the preset's tasks)")
    s.add_argument("--clean", help="clean ONNX model (default: export the bundled teacher)")
    s.add_argument("--defended", help="defended ONNX model (default: asvp defend the clean one)")
    s.add_argument("--kind", default="output", help="output | feature | adaptive (default output)")
    s.add_argument("--preset", default="quick", help="quick (sr, ~1 min) | full (all five tasks)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", help="report directory (resumable: finished tasks are reused)")
    s.add_argument("--h", type=float, help="ASVP h when defending here (default AsvpConfig)")
    s.add_argument("--k", type=int, help="ASVP k when defending here")
    s.add_argument("--placement", help="inline | tap when defending here")
    s.add_argument("--nodes", action="append", help="node to defend when defending here (repeatable)")
    s.add_argument("--steps", type=int, help="override the preset's student training steps")
    s.add_argument("--pool", type=int, help="override the preset's number of queries")
    _json_and_quiet(s)
    s.set_defaults(func=cmd_attack)

    s = sub.add_parser("sweep", help="grid over h, k, placement, nodes: teacher drop vs student drop, best config",
                       description="Defends the bundled teacher with every configuration of the grid and attacks it "
                                   "(output distillation for inline, feature distillation for tap). Best = largest "
                                   "student drop with teacher drop <= 0.1 dB.")
    s.add_argument("--task", action="append", required=True, help="task to sweep (repeatable)")
    s.add_argument("--h", type=float, nargs="+", help="values of h (default 1.1 1.5 3)")
    s.add_argument("--k", type=int, nargs="+", help="values of k (default 2 4)")
    s.add_argument("--placement", nargs="+", help="inline and/or tap (default both)")
    s.add_argument("--nodes", nargs="+", help="node sets: 'default' or comma-separated selectors (default: default)")
    s.add_argument("--preset", default="quick", help="quick | full (training budget per student)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", help="report directory")
    s.add_argument("--steps", type=int, help="override the preset's student training steps")
    s.add_argument("--pool", type=int, help="override the preset's number of queries")
    _json_and_quiet(s)
    s.set_defaults(func=cmd_sweep)
    s = sub.add_parser("demo", help="the main job: export, defend, validate, profile and attack a bundled teacher",
                       description="Runs the whole product on one bundled teacher and writes one report folder "
                                   "(report.json, report.md, PNG plots) whose path it prints.")
    s.add_argument("--task", default="sr", help=f"one of {', '.join(TASK_NAMES)} (default sr)")
    s.add_argument("--out", default="reports/demo", help="report folder (default reports/demo)")
    s.add_argument("--h", type=float, default=None, help="override the default amplification h")
    s.add_argument("--attack-steps", type=int, default=None, help="student training steps (default: quick preset)")
    _json_and_quiet(s)
    s.set_defaults(func=cmd_demo)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc = args.func(args)  # None (0) or a command's own non-error status (validate: 1 = verdict failed)
    except AsvpError as exc:
        print(f"asvp: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("asvp: interrupted", file=sys.stderr)
        return 130
    return rc or 0


if __name__ == "__main__":
    sys.exit(main())

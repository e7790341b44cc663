"""`asvp` command line: a thin shell over asvp.api (and asvp.demo for the main job).

Each subcommand is a parser built from the shared argument groups of asvp.cli.args and a run function that calls
one API function and prints the result: `--json` prints its to_dict(), otherwise its own summary_lines(). The CLI
holds no logic of its own. Exit status: 0 success, 1 a verdict failed (`validate`), 2 bad input (one line on
stderr, no traceback; argparse usage errors too), 3 a missing backend or optional dependency, 70 an unforeseen
internal error (one line; ASVP_TRACEBACK=1 shows the traceback), 130 interrupted.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from asvp import api, demo
from asvp.cli import profile_served, serve as serve_cli, triton_repo as triton_repo_cli, validate_served
from asvp.cli.args import (TASKS_HELP, BackendArgs, BudgetArgs, DefenceArgs, OutputArgs, ShapeProfileArgs,
                           TimingArgs, add_groups)
from asvp.errors import AsvpError, first_line
from asvp.fingerprint import DEFAULT_ALPHA as FP_DEFAULT_ALPHA, DEFAULT_M as FP_DEFAULT_M, KEY_ENV
from asvp.exporter.teachers.train import DEFAULTS as TRAIN_DEFAULTS
from asvp.exporter.teachers.train import quality_markdown, record_summary
from asvp.graph_passes.candidates import candidates_table
from asvp.runtime.engines.backends import backends_table
from asvp.runtime.attacks.fingerprint import DEFAULT_MAX_DROP_DB as FP_DEFAULT_MAX_DROP_DB
from asvp.runtime.evaluation.profile import MEMORY_MODES

EXIT_VERDICT_FAILED = 1  # `asvp validate`: the models ran but the defence costs more than the thresholds allow
EXIT_INTERNAL = 70  # an unforeseen failure (a bug): one line on stderr, EX_SOFTWARE; ASVP_TRACEBACK=1 re-raises it
progress = OutputArgs.progress


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _show(a, res) -> None:
    """--json: the result's to_dict(); otherwise its summary_lines()."""
    _print_json(res.to_dict()) if a.json else print("\n".join(res.summary_lines()))


# ---- subcommands: parser (groups) + run (one API call, then print) ---------------------------------------

def add_train_teacher(sub):
    s = sub.add_parser("train-teacher", help="train a bundled teacher on scikit-image's images (reproducible)",
                       description="Train the task's teacher from a fixed seed and overwrite its bundled weights.")
    s.add_argument("--task", required=True, help=f"one of {TASKS_HELP}")
    s.add_argument("--steps", type=int, default=TRAIN_DEFAULTS["steps"],
                   help=f"optimizer steps (default {TRAIN_DEFAULTS['steps']})")
    s.add_argument("--seed", type=int, default=TRAIN_DEFAULTS["seed"])
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    def run(a):
        print(record_summary(api.train_teacher(a.task, steps=a.steps, seed=a.seed, progress=progress(a))))
    s.set_defaults(func=run)


def add_eval_teachers(sub):
    s = sub.add_parser("eval-teachers", help="held-out PSNR/SSIM of the bundled teachers vs trivial baselines")
    s.add_argument("--task", action="append", help="limit to this task (repeatable)")
    add_groups(s, OutputArgs(quiet=False))

    def run(a):
        rows = api.teacher_quality(a.task or None)
        _print_json(rows) if a.json else print(quality_markdown(rows), end="")
    s.set_defaults(func=run)


def add_export(sub):
    s = sub.add_parser("export", help="trace a teacher to ONNX (dynamic N/H/W) and check parity with ONNX Runtime",
                       description="SOURCE is a bundled task name, package.module:Class (with --weights), "
                                   "or a spandrel-supported checkpoint (.pth/.safetensors). The minimum input side "
                                   "is spandrel's or detected; parity with torch is checked at the trace shape, at "
                                   "batch 2 and at two non-square sizes (odd multiples of the size multiple). A "
                                   "failure names the size or batch and the option that accepts a static one.")
    s.add_argument("source")
    s.add_argument("-o", "--output", required=True, help="output .onnx path (written atomically)")
    s.add_argument("--weights", help="state dict for module:Class sources")
    s.add_argument("--kwargs", help="JSON constructor arguments for module:Class sources")
    s.add_argument("--task", help="task label recorded in metadata for user models (default: custom)")
    s.add_argument("--size-multiple", type=int, default=None,
                   help="input H and W must be multiples of this (user models; default: spandrel's requirement, else 1)")
    s.add_argument("--opset", type=int, default=None, help="ONNX opset (17 to 20, default 17)")
    s.add_argument("--exporter", choices=("auto", "torchscript", "dynamo"), default="auto",
                   help="auto (default): TorchScript, then torch's dynamo exporter (needs onnxscript) when the trace "
                        "bakes a shape; the one used is recorded in the model's asvp.exporter metadata")
    s.add_argument("--static-batch", action="store_true",
                   help="fix the batch to 1 (for models whose export cannot keep the batch dynamic)")
    s.add_argument("--static-size", metavar="HxW",
                   help="fix the input height and width (for models whose export cannot keep them dynamic)")
    s.add_argument("--force", action="store_true", help="overwrite an existing output (never the input)")
    add_groups(s, OutputArgs(quiet=False, json_help="machine-readable result"))

    def run(a):
        _show(a, api.export(a.source, a.output, weights=a.weights, kwargs=a.kwargs, task=a.task,
                            size_multiple=a.size_multiple, opset=a.opset, force=a.force, exporter=a.exporter,
                            static_batch=a.static_batch, static_size=a.static_size))
    s.set_defaults(func=run)


def add_nodes(sub):
    s = sub.add_parser("nodes", help="list candidate feature nodes where ASVP can be inserted",
                       description="List the model's spatial feature maps, where ASVP can go. A candidate is a node "
                                   "output that is (1) computed from the image input (not a weight, a constant, or "
                                   "something computed only from them), (2) a float tensor [N, C, H', W'] whose "
                                   "dim 0 is the input's batch, dim 1 a fixed channel count C >= 4, and dims 2 and 3 "
                                   "follow the input's height and width alone (H, 2*H, H/2, ...), and (3) not a graph "
                                   "output, and (4) not inside an attention block (a node whose name's scope has a part "
                                   "containing 'attn' or 'attention'). Attention tensors (q/k/v, scores, masks: "
                                   "windows, heads and tokens in their dims) and token sequences are never "
                                   "candidates; in a transformer the "
                                   "candidates are the N,C,H,W maps around its convolutions and patch (un)embedding. "
                                   "Dims 0, 2, 3 are checked by running the model (ONNX Runtime, CPU) on three small "
                                   "inputs of different batch, height and width. Grey, RGB and multi-channel images "
                                   "are accepted, and models with extra inputs (noise maps, masks): --input names "
                                   "the image when it cannot be told apart. With --absorbability, also measure at each "
                                   "node how much of ASVP's change one global 1x1 affine map (an attacker's adapter) "
                                   "does not explain, and how much the amplified subspace varies across images "
                                   "(docs/protection.md), on the task's attacker queries or on --images DIR. With "
                                   "--cost, measure what the defence costs at each candidate alone (the model "
                                   "defended there, timed against the clean one, interleaved, on --backend at "
                                   "--shape); with --budget and --count, also choose up to COUNT nodes spread over "
                                   "the network whose cost together, measured, stays within the budget (the method: "
                                   "asvp/runtime/evaluation/node_cost.py). Costs are latency ratios on this machine: "
                                   "measure on the deployment target.")
    s.add_argument("model", help="ONNX model (the clean one, for --absorbability and --cost)")
    s.add_argument("--input", dest="input_name", metavar="NAME",
                   help="the image input, for models with several image-like inputs (default: detected)")
    s.add_argument("--absorbability", action="store_true",
                   help="run the absorbability diagnostic at every candidate node")
    s.add_argument("--task", help=f"queries of this task ({TASKS_HELP}; default: the model's asvp.task metadata)")
    s.add_argument("--images", metavar="DIR", help="images DIR/input/* or DIR/* instead of the task's queries")
    s.add_argument("--queries", type=int, default=64, help="number of attacker query crops (default 64)")
    s.add_argument("--seed", type=int, default=0, help="seed of the query crops (default 0)")
    c = s.add_argument_group("cost (--cost)")
    c.add_argument("--cost", action="store_true", help="measure the defence's latency cost at every candidate node")
    c.add_argument("--budget", type=float, metavar="RATIO",
                   help="with --cost: choose nodes whose cost together, measured, is within this defended/clean "
                        "latency ratio (e.g. 1.10)")
    c.add_argument("--count", type=int, metavar="N", help="with --budget: how many nodes to choose at most (default 1)")
    c.add_argument("--nodes", nargs="+", metavar="SEL", help="with --cost: measure only these (default: every candidate)")
    c.add_argument("--out", metavar="DIR", help="with --cost: write report.json, report.md and a PNG here")
    defence = DefenceArgs(("h", "k", "k_mode", "tau", "placement"), mode=True,
                          suffix=" (--absorbability, --cost)")
    add_groups(s, defence, BackendArgs(), TimingArgs(warmup=3, iters=20, what="per round"), OutputArgs(quiet=True))
    cost_only = ("budget", "count", "nodes", "threads", "out", "placement", "backend", "shape", "warmup", "iters",
                 "mode")

    def run(a):
        if a.absorbability and a.cost:
            raise AsvpError("--absorbability and --cost are separate runs; give one")
        if not a.cost:
            given = [f"--{n}" for n in cost_only if getattr(a, n) != s.get_default(n)]
            if given:
                raise AsvpError(f"{', '.join(given)} apply to --cost only")
        if a.count is not None and a.budget is None:
            raise AsvpError("--count applies with --budget (how many nodes the budget should afford)")
        if a.cost:
            if a.task or a.images or a.input_name:
                raise AsvpError("--task/--images/--input apply to listing and --absorbability, not to --cost")
            _show(a, api.node_costs(a.model, nodes=a.nodes, config=defence.config(a), mode=a.mode,
                                    backend=a.backend, budget=a.budget,
                                    count=1 if a.count is None else a.count, out=a.out, progress=progress(a),
                                    **TimingArgs.kwargs(a)))
            return
        if not a.absorbability:
            if a.task or a.images or defence.overrides(a):
                raise AsvpError("--task/--images/--h/--k/--k-mode/--tau apply to --absorbability or --cost only")
            nodes = api.list_nodes(a.model, input_name=a.input_name)
            _print_json([n.to_dict() for n in nodes]) if a.json else print(candidates_table(nodes))
            return
        if a.input_name:
            raise AsvpError("--absorbability runs models with one RGB image input; --input applies to listing only")
        _show(a, api.absorbability(a.model, task=a.task, images=a.images, config=defence.config(a),
                                   queries=a.queries, seed=a.seed, progress=progress(a)))
    s.set_defaults(func=run)


def add_defend(sub):
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
               "end, e.g. Conv#3, Relu#-1), auto (default: the last candidate with the most channels). Candidates "
               "are the model's spatial feature maps (`asvp nodes --help` states the rule); a NAME that is not one "
               "(a weight, an attention tensor) is refused unless --force-nodes.")
    s.add_argument("model", help="ONNX image model (e.g. from `asvp export`)")
    s.add_argument("-o", "--output", required=True, help="defended .onnx path (written atomically, only on success)")
    defence = DefenceArgs(nodes="list", mode=True)
    add_groups(s, defence)
    s.add_argument("--allow-redefend", action="store_true", help="allow perturbing a node that is already defended")
    s.add_argument("--input", dest="input_name", metavar="NAME",
                   help="the image input, for models with several image-like inputs (default: detected)")
    s.add_argument("--force-nodes", action="store_true",
                   help="experts: take a --nodes NAME that is not a feature map (rank 4, fixed C) instead of refusing it")
    s.add_argument("--force", action="store_true", help="overwrite an existing output (never the input)")
    add_groups(s, OutputArgs(quiet=False, json_help="machine-readable result"))

    def run(a):
        _show(a, api.defend(a.model, a.output, nodes=a.nodes, config=defence.overrides(a), mode=a.mode,
                            allow_redefend=a.allow_redefend, force=a.force, input_name=a.input_name,
                            force_nodes=a.force_nodes))
    s.set_defaults(func=run)


def add_validate(sub):
    s = sub.add_parser("validate", help="quality cost of the defence: PSNR/SSIM of clean vs defended, with a verdict",
                       description="Run CLEAN and DEFENDED on the task's held-out images (or --images DIR with "
                                   "DIR/input/NAME.png and DIR/target/NAME.png) and report PSNR/SSIM against ground "
                                   "truth, the teacher drop, the defended-vs-clean output PSNR and max abs difference "
                                   "(Polygraphy Comparator), tap feature perturbation, and a verdict. Exit status: "
                                   "0 pass, 1 verdict failed, 2 bad input, 3 backend not available.")
    s.add_argument("clean", help="clean ONNX model")
    s.add_argument("defended", nargs="?", help="defended ONNX model (asvp defend); not with --url")
    s.add_argument("--task", help=f"one of {TASKS_HELP} (default: the model's asvp.task metadata)")
    s.add_argument("--images", metavar="DIR", help="paired images DIR/input/* and DIR/target/* (default: held-out images)")
    s.add_argument("--size", type=int, default=192, help="held-out crop side in target pixels (default 192)")
    add_groups(s, BackendArgs(), validate_served.ServedArgs(description=validate_served.VALIDATE_NOTE))
    s.add_argument("--max-teacher-drop", type=float, default=0.1, metavar="DB",
                   help="fail if clean PSNR - defended PSNR exceeds this (default 0.1 dB)")
    s.add_argument("--max-ssim-drop", type=float, default=None, help="fail if clean SSIM - defended SSIM exceeds this")
    s.add_argument("--min-output-psnr", type=float, default=None, metavar="DB",
                   help="fail if the defended-vs-clean output PSNR is below this")
    s.add_argument("--max-abs-diff", type=float, default=None,
                   help="fail if max |defended - clean| output exceeds this (Polygraphy atol)")
    s.add_argument("--out", metavar="DIR", help="write report.json, report.md and PNG plots here")
    add_groups(s, OutputArgs())

    def run(a):
        if a.url or not a.defended:  # a served model vs its ONNX file (asvp/cli/validate_served.py)
            return validate_served.run(a) if a.url else s.error("give DEFENDED, or --url URL --model NAME")
        res = api.validate(a.clean, a.defended, task=a.task, images=a.images, backend=a.backend, heldout_size=a.size,
                           max_teacher_drop=a.max_teacher_drop, max_ssim_drop=a.max_ssim_drop,
                           min_output_psnr=a.min_output_psnr, max_abs_diff=a.max_abs_diff, out=a.out,
                           progress=progress(a))
        _show(a, res)
        return 0 if res.passed else EXIT_VERDICT_FAILED
    s.set_defaults(func=run)


def add_profile(sub):
    s = sub.add_parser("profile", help="latency (p50/p90/p99), throughput and memory; defended/clean interleaved",
                       description="Time CLEAN (and DEFENDED) on one backend with a random input of --shape. With two "
                                   "models every iteration runs both, alternating which goes first, so the "
                                   "defended/clean ratio comes from one run under the same conditions.")
    s.add_argument("clean", nargs="?", help="clean ONNX model (or a TensorRT engine with --backend tensorrt)")
    s.add_argument("defended", nargs="?", help="defended model (optional)")
    add_groups(s, BackendArgs(), TimingArgs(warmup=10, iters=50), validate_served.ServedArgs(shapes=False),
               profile_served.LoadArgs())
    s.add_argument("--memory", choices=MEMORY_MODES, default=MEMORY_MODES[0],
                   help="peak memory: per model in a fresh process (default), in this process (order-dependent), or off")
    s.add_argument("--out", metavar="DIR", help="write report.json, report.md and PNG plots here")
    add_groups(s, OutputArgs())

    def run(a):
        if a.url or not a.clean:  # a served model under load (asvp/cli/profile_served.py)
            return profile_served.run(a) if a.url else s.error("give CLEAN, or --url URL --model NAME")
        _show(a, api.profile(a.clean, a.defended, backend=a.backend, **TimingArgs.kwargs(a), memory=a.memory,
                             out=a.out, progress=progress(a)))
    s.set_defaults(func=run)


def add_build(sub):
    s = sub.add_parser("build", help="build a TensorRT engine (dynamic-shape profile, AsvpPerturb plugin registered)",
                       description="Parse MODEL with TensorRT's ONNX parser (registering the AsvpPerturb plugin first "
                                   "when the model has plugin nodes), build one optimisation profile and write the "
                                   "engine plus OUTPUT.json (TensorRT version, profile, source digest) atomically. "
                                   "Needs TensorRT >= 10.8 and an NVIDIA GPU (exit 3 otherwise, nothing written).")
    s.add_argument("model", help="ONNX model (clean, subgraph-defended or plugin-defended)")
    s.add_argument("-o", "--output", required=True, help="engine path (.engine/.plan)")
    add_groups(s, ShapeProfileArgs())
    s.add_argument("--fp16", action="store_true", help="allow FP16 kernels (the ASVP plugin itself stays FP32)")
    s.add_argument("--int8", action="store_true", help="allow INT8 (only for explicitly quantized Q/DQ models)")
    s.add_argument("--workspace", help="workspace memory pool limit, e.g. 2G or 512M (default: TensorRT's)")
    s.add_argument("--no-plugin", action="store_true", help="do not register the AsvpPerturb plugin "
                                                            "(refused for models that contain plugin nodes)")
    s.add_argument("--aot-plugin", action="store_true",
                   help="UNVERIFIED (never run with a real TensorRT): embed the AsvpPerturb plugin's ahead-of-time "
                        "implementation (the fused Triton kernel as PTX, TensorRT's PREFER_AOT_PYTHON_PLUGINS) instead "
                        "of the Python one, meant for engines loaded without Python (trtexec, Triton Inference Server). "
                        "Needs plugin nodes, TensorRT >= 10.9 and Triton; see docs/plugin.md section 5")
    s.add_argument("--force", action="store_true", help="overwrite an existing engine and sidecar (never the model)")
    add_groups(s, OutputArgs(quiet=False))

    def run(a):
        _show(a, api.build_engine(a.model, a.output, min_shape=a.min, opt_shape=a.opt, max_shape=a.max, fp16=a.fp16,
                                  int8=a.int8, workspace=a.workspace, plugin=not a.no_plugin, force=a.force,
                                  aot_plugin=a.aot_plugin))
    s.set_defaults(func=run)


def add_backends(sub):
    s = sub.add_parser("backends", help="list inference backends and whether they run here")
    add_groups(s, OutputArgs(quiet=False))

    def run(a):
        rows = api.backends()
        _print_json(rows) if a.json else print(backends_table(rows))
    s.set_defaults(func=run)


def add_attack(sub):
    s = sub.add_parser("attack", help="distillation attack: train students on a clean vs a defended model's answers",
                       description="The attacker only queries the served ONNX model (ONNX Runtime) with degraded crops "
                                   "of the training images and trains a smaller student on the answers; students of "
                                   "the clean and the defended teacher get identical budgets, seeds and queries. "
                                   "Reports teacher and student PSNR/SSIM on held-out images and the drops. Without "
                                   "--clean/--defended the bundled teacher is exported and defended into --out.")
    s.add_argument("--task", help=f"one of {TASKS_HELP} (default: the preset's tasks)")
    s.add_argument("--clean", help="clean ONNX model (default: export the bundled teacher)")
    s.add_argument("--defended", help="defended ONNX model (default: asvp defend the clean one)")
    s.add_argument("--kind", default="output",
                   help="output (regress outputs) | feature (plus FitNets hints) | adaptive (undo ASVP first) | "
                        "a rung of the attacker ladder: fitnets-0.1 | fitnets-1 | fitnets-10 (hint weight) | "
                        "direct (no adapter, width-matched student) | staged (hints first, then outputs) | "
                        "larger (the teacher's own architecture and width) | ladder: every rung with paired seeds, "
                        "convergence at two budgets and the absorbability diagnostic, one table (default output)")
    budget = BudgetArgs("quick (sr, 1 seed; single kind ~1 min, ladder: output, fitnets-1, direct, larger, "
                        "~1.5 min) | standard (all five tasks, every rung, 5 paired seeds, validation split, "
                        "2x-budget output rung; sized for <= 45 min on 2 CPU cores) | thorough (all five, 10 "
                        "seeds, 2000 steps x 16, 512 queries; students on CUDA when available; hours on CPU) | "
                        "full (all five, 800 steps, 1 seed: the earlier preset) (default quick; measured times in "
                        "docs/protection.md)",
                        "report directory (resumable: finished tasks, rungs and students are reused)")
    defence = DefenceArgs(("h", "k", "placement"), nodes="repeat", suffix=" (when defending here)", choices=False)
    add_groups(s, budget, defence, OutputArgs())
    s.add_argument("--seeds", type=int, default=None, metavar="N",
                   help="paired seeds: a clean and a defended student share each of seed .. seed+N-1; N > 1 reports "
                        "the mean drop with a 95%% confidence interval and the verdicts use it (a drop counts when "
                        "the interval excludes 0 and the mean >= 0.1 dB); default: the preset's (quick/full 1, "
                        "standard 5, thorough 10)")
    s.add_argument("--interval", default="t", help="confidence interval of the paired drop: t | bootstrap (default t)")

    def run(a):
        _show(a, api.attack(a.task, clean=a.clean, defended=a.defended, kind=a.kind, config=defence.config(a),
                            nodes=a.nodes, progress=progress(a), seeds=a.seeds, interval=a.interval,
                            **budget.kwargs(a)))
    s.set_defaults(func=run)


def add_sweep(sub):
    s = sub.add_parser("sweep", help="grid over h, k, placement, nodes: teacher drop vs student drop, best config",
                       description="Defends the bundled teacher with every configuration of the grid and attacks it "
                                   "(output distillation for inline, feature distillation for tap). Best = largest "
                                   "student drop with teacher drop <= 0.1 dB.")
    s.add_argument("--task", action="append", required=True, help="task to sweep (repeatable)")
    grid = DefenceArgs(("h", "k", "placement"), grid=True, nodes="sets", choices=False)
    budget = BudgetArgs("quick | full (training budget per student)", "report directory")
    add_groups(s, grid, budget, OutputArgs())

    def run(a):
        _show(a, api.sweep(a.task, h=a.h, k=a.k, placement=a.placement, nodes=a.nodes, progress=progress(a),
                           **budget.kwargs(a)))
    s.set_defaults(func=run)


def add_demo(sub):
    s = sub.add_parser("demo", help="the main job: export, defend, validate, profile and attack a bundled teacher",
                       description="Runs the whole product on one bundled teacher and writes one report folder "
                                   "(report.json, report.md, PNG plots) whose path it prints.")
    s.add_argument("--task", default="sr", help=f"one of {TASKS_HELP} (default sr)")
    s.add_argument("--out", default="reports/demo", help="report folder (default reports/demo)")
    defence = DefenceArgs(("h",))
    add_groups(s, defence)
    s.add_argument("--attack-steps", type=int, default=None, help="student training steps (default: quick preset)")
    add_groups(s, OutputArgs())

    def run(a):
        res = demo.run_demo(a.task, a.out, config=defence.config(a), attack_steps=a.attack_steps, progress=progress(a))
        _print_json(demo.to_json(res)) if a.json else print(demo.summary_line(res))
    s.set_defaults(func=run)


SUBCOMMANDS = (add_train_teacher, add_eval_teachers, add_export, add_nodes, add_defend, add_validate, add_profile,
               add_build, add_backends, add_attack, add_sweep, add_demo)


def _fingerprint_key(a, required: bool = True) -> str | None:
    """The secret key: --key, --key-file, or the environment variable ASVP_FINGERPRINT_KEY (keeps it out of `ps`)."""
    if a.key and a.key_file:
        raise AsvpError("give the key once: --key or --key-file, not both")
    if a.key_file:
        try:
            return Path(a.key_file).read_text().strip()
        except OSError as exc:
            raise AsvpError(f"cannot read the key file {a.key_file}: {exc.strerror or exc}") from None
    key = a.key or os.environ.get(KEY_ENV)
    if not key and required:
        raise AsvpError(f"a fingerprint key is required: --key KEY, --key-file FILE or ${KEY_ENV}")
    return key


def add_fingerprint(sub):
    s = sub.add_parser("fingerprint", help="keyed distillation fingerprint: mark a served model, test a suspect",
                       description="Mark the model you serve with a secret key (a small keyed perturbation inside the "
                                   "dominant subspace of one feature; the outputs carry it), then test whether a "
                                   "suspect model was distilled from it. The p-value is exact: under 'the suspect "
                                   "never saw the marked outputs' the key is independent of the suspect. "
                                   "docs/fingerprint.md has the design and the measured power.")
    fs = s.add_subparsers(dest="fingerprint_command", metavar="ACTION", required=True)

    def key_args(p, what="the secret key"):
        p.add_argument("--key", help=what + " (or --key-file, or $" + KEY_ENV + ")")
        p.add_argument("--key-file", help="file holding the secret key")

    k = fs.add_parser("keygen", help="print a new random key (128 bits)")
    k.set_defaults(func=lambda a: print(api.fingerprint_new_key()))

    m = fs.add_parser("mark", help="write a marked copy of a clean or ASVP-defended model")
    m.add_argument("model", help="ONNX model to mark (the one you serve)")
    m.add_argument("-o", "--output", required=True, help="marked ONNX model (written atomically)")
    key_args(m)
    m.add_argument("--node", help="feature node selector (as for `asvp defend --nodes`; `auto` is defend's automatic "
                   "node). Default: the candidate closest to the output with at least 2m channels, whose mark a student "
                   "reproduces more readily than a deep one's (docs/fingerprint.md)")
    m.add_argument("--m", type=int, default=FP_DEFAULT_M, help=f"principal directions the mark acts in "
                   f"(key dimensions m(m+1)/2; default {FP_DEFAULT_M})")
    m.add_argument("--max-drop", type=float, default=FP_DEFAULT_MAX_DROP_DB,
                   help=f"the teacher's budget: held-out PSNR in dB the mark may cost (default {FP_DEFAULT_MAX_DROP_DB:g}); "
                        "the mark is calibrated to 40 %% of it on training-image crops of the task, the rest is the "
                        "margin for other images. A larger budget makes weakly trained copies easier to flag on some "
                        "tasks (docs/fingerprint.md, 'What a larger teacher budget buys')")
    m.add_argument("--strength", type=float, default=None,
                   help="instead of --max-drop: a fixed PSNR in dB between the marked and the unmarked output on the "
                        "probes (higher = weaker mark, cheaper for the teacher; no cost calibration)")
    m.add_argument("--bias-students", type=int, default=0, metavar="N",
                   help="train N quick students of the model (96 queries, 300 steps; seconds each on one CPU core) "
                        "and keep the key in the half of the key directions along which they deviate least from it, "
                        "where a weakly trained copy's own errors hide the mark least. Measured with 16, three keys, "
                        "quick copies: derain 18/18 flagged against 8/18, no innocent twin flagged on any task (0/90 "
                        "against 4/90), but underwater 3/18 against 6/18 (docs/fingerprint.md). Key-free: the p-value "
                        "stays exact. Default 0 (off)")
    m.add_argument("--task", help=f"task of the model ({TASKS_HELP}; default: from its metadata)")
    add_groups(m, OutputArgs(quiet=True))
    m.set_defaults(func=lambda a: _show(a, api.fingerprint_mark(a.model, a.output, _fingerprint_key(a), node=a.node,
                                                                  m=a.m, strength_db=a.strength, max_drop_db=a.max_drop,
                                                                  task=a.task, bias_students=a.bias_students,
                                                                  progress=progress(a))))

    c = fs.add_parser("calibrate", help="train reference students of the clean teacher and store them in --cache")
    c.add_argument("--clean", required=True, help="the clean model (before marking)")
    c.add_argument("--defended", required=True, help="the marked model")
    c.add_argument("--cache", required=True, metavar="DIR", help="where reference projections are stored")
    c.add_argument("--task", help=f"task ({TASKS_HELP}; default: from the models' metadata)")
    c.add_argument("--seeds", type=int, nargs="*", default=[100, 101, 102], help="reference student seeds")
    c.add_argument("--steps", type=int, default=300, help="training steps per reference student (default 300)")
    c.add_argument("--pool", type=int, default=96, help="queries per reference student (default 96)")
    c.add_argument("--reference", action="append", metavar="ONNX", help="another reference model (repeatable)")
    key_args(c, "optional: the key, to test each reference against the others' bias")
    add_groups(c, OutputArgs())
    c.set_defaults(func=lambda a: _show(a, api.fingerprint_calibrate(
        a.clean, a.defended, cache=a.cache, task=a.task, seeds=tuple(a.seeds), steps=a.steps, pool=a.pool,
        references=a.reference, test_key=_fingerprint_key(a, required=False), progress=progress(a))))

    v = fs.add_parser("verify", help="test whether SUSPECT was distilled from the marked model",
                      description="Queries SUSPECT (an ONNX model, black box) on probe images and prints the statistic, "
                                  "the exact p-value and the verdict (flagged when p < --alpha).")
    v.add_argument("suspect", nargs="?", help="suspect ONNX model (or --url URL --model NAME: a served suspect)")
    v.add_argument("--clean", required=True, help="your clean model (before marking)")
    v.add_argument("--defended", required=True, help="your marked model")
    key_args(v)
    v.add_argument("--alpha", type=float, default=FP_DEFAULT_ALPHA, help=f"significance level (default {FP_DEFAULT_ALPHA:g})")
    v.add_argument("--cache", metavar="DIR", help="reuse basis responses and the reference models stored by calibrate")
    v.add_argument("--reference", action="append", metavar="ONNX", help="a reference model that never saw the marked outputs (repeatable)")
    v.add_argument("--task", help=f"task ({TASKS_HELP}; default: from the models' metadata)")
    add_groups(v, OutputArgs(quiet=False), validate_served.ServedArgs(shapes=False))

    def verify(a):
        if bool(a.url) == bool(a.suspect):  # a served suspect: --url/--model (asvp/cli/validate_served.py's group)
            v.error("give SUSPECT (an ONNX file) or --url URL --model NAME (a served suspect), not both")
        kw = dict(clean=a.clean, defended=a.defended, key=_fingerprint_key(a), alpha=a.alpha, cache=a.cache,
                  task=a.task, references=a.reference)
        _show(a, api.fingerprint_verify_served(validate_served.ServedArgs.parse(a), **kw) if a.url
              else api.fingerprint_verify(a.suspect, **kw))
    v.set_defaults(func=verify)


SUBCOMMANDS = SUBCOMMANDS + (add_fingerprint,)
# serving commands, one module each (asvp/cli/triton_repo.py, asvp/cli/serve.py)
SUBCOMMANDS = SUBCOMMANDS + (triton_repo_cli.register, serve_cli.register)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line `asvp: error: ...` (with the subcommand) and exit status 2, like
    every other bad input; `asvp COMMAND --help` still prints the usage."""

    def error(self, message):
        where = self.prog[len("asvp"):].strip()
        hint = f" (see `asvp {where + ' ' if where else ''}--help`)"
        self.exit(2, f"asvp: error: {(where + ': ') if where else ''}{message}{hint}\n")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="asvp",
        description="Ship image-restoration models protected against knowledge distillation "
                    "(Adaptive Singular Value Perturbation) as ONNX and TensorRT.",
        epilog="Typical flow: asvp export sr -o sr.onnx; asvp nodes sr.onnx; asvp defend sr.onnx -o sr.asvp.onnx; "
               "asvp validate sr.onnx sr.asvp.onnx --task sr; asvp profile sr.onnx sr.asvp.onnx")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=OneLineParser)
    for add in SUBCOMMANDS:
        add(sub)
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
    except BrokenPipeError:  # `asvp nodes m.onnx | head`: the reader left; not an error
        sys.stdout = open(os.devnull, "w")
        return 0
    except MemoryError:
        print("asvp: error: out of memory (the input or shape is too large for this machine; try a smaller one)",
              file=sys.stderr)
        return 2
    except OSError as exc:  # a file system refusal the checks up front could not foresee (full disk, /proc, ...)
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"asvp: error: {exc.strerror or first_line(exc)}{where}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug or an unforeseen library failure: one line; ASVP_TRACEBACK=1 shows the traceback
        if os.environ.get("ASVP_TRACEBACK"):
            raise
        print(f"asvp: error: internal error, {type(exc).__name__}: {first_line(exc)} "
              "(set ASVP_TRACEBACK=1 for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL
    return rc or 0


if __name__ == "__main__":
    sys.exit(main())

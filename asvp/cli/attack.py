"""`asvp attack`: distillation attack, students trained on a clean and a defended model's answers."""
from __future__ import annotations

from asvp.cli import validate_served
from asvp.cli.args import BudgetArgs, DefenceArgs, OutputArgs, ReportArgs, TaskArgs, add_groups
from asvp.constants import MIN_STUDENT_DROP_DB

DEFENCE = DefenceArgs(("h", "k", "placement"), nodes="repeat", suffix=" (when defending here)", choices=False)
PRESETS_HELP = ("quick (sr, 1 seed; a single kind, or the ladder's output, fitnets-1, direct and larger rungs) | "
                "standard (all five tasks, every rung, 5 paired seeds, validation split, 2x-budget output rung) | "
                "thorough (all five, 10 seeds, 2000 steps x 16, 512 queries; students on CUDA when available) | "
                "full (all five, 800 steps, 1 seed: the earlier preset) (default quick; how long each runs: "
                "docs/protection.md)")
KINDS_HELP = ("output (regress outputs) | feature (plus FitNets hints) | adaptive (undo ASVP first) | a rung of the "
              "attacker ladder: fitnets-0.1 | fitnets-1 | fitnets-10 (hint weight) | direct (no adapter, "
              "width-matched student) | staged (hints first, then outputs) | larger (the teacher's own architecture "
              "and width) | ladder: every rung with paired seeds, convergence at two budgets and the absorbability "
              "diagnostic, one table (default output)")


def register(sub) -> None:
    s = sub.add_parser("attack", help="distillation attack: train students on a clean vs a defended model's answers",
                       description="The attacker only queries the served ONNX model (ONNX Runtime) with degraded crops "
                                   "of the training images and trains a smaller student on the answers; students of "
                                   "the clean and the defended teacher get identical budgets, seeds and queries. "
                                   "Reports teacher and student PSNR/SSIM on held-out images and the drops. Without "
                                   "--clean/--defended the bundled teacher is exported and defended into --out. "
                                   "With --url/--model the defended model is the one served there (any KServe v2 "
                                   "endpoint, --defended its file): the queries go over the network.")
    TaskArgs(note="default: the preset's tasks").add(s)
    s.add_argument("--clean", help="clean ONNX model (default: export the bundled teacher)")
    s.add_argument("--defended", help="defended ONNX model (default: asvp defend the clean one)")
    s.add_argument("--kind", default="output", help=KINDS_HELP)
    add_groups(s, BudgetArgs(PRESETS_HELP),
               ReportArgs("report directory (resumable: finished tasks, rungs and students are reused)"),
               DEFENCE, OutputArgs(), validate_served.ServedArgs(shapes=False))
    s.add_argument("--seeds", type=int, default=None, metavar="N",
                   help="paired seeds: a clean and a defended student share each of seed .. seed+N-1; N > 1 reports "
                        "the mean drop with a 95%% confidence interval and the verdicts use it (a drop counts when "
                        f"the interval excludes 0 and the mean >= {MIN_STUDENT_DROP_DB:g} dB); default: the preset's "
                        "(quick/full 1, standard 5, thorough 10)")
    s.add_argument("--interval", default="t", help="confidence interval of the paired drop: t | bootstrap (default t)")
    s.set_defaults(func=run)


def run(a) -> None:
    from asvp import api

    task = TaskArgs.parse(a)
    OutputArgs.show(a, api.attack(task, clean=a.clean, defended=a.defended, kind=a.kind, config=DEFENCE.parse(a),
                                  nodes=a.nodes, progress=OutputArgs.progress(a), seeds=a.seeds,
                                  interval=a.interval, out=ReportArgs.parse(a),
                                  remote=validate_served.ServedArgs.parse(a) if a.url else None,
                                  **BudgetArgs.parse(a).to_dict()))

"""`asvp demo`: the main job on one bundled teacher (export, defend, validate, profile, attack, fingerprint)."""
from __future__ import annotations

from asvp.cli.args import DefenceArgs, OutputArgs, ReportArgs, TaskArgs, add_groups

DEFENCE = DefenceArgs(("h",))


def register(sub) -> None:
    s = sub.add_parser("demo", help="the main job: export, defend, validate, profile and attack a bundled teacher",
                       description="Runs the whole product on one bundled teacher and writes one report folder "
                                   "(report.json, report.md, PNG plots) whose path it prints.")
    add_groups(s, TaskArgs(default="sr"), ReportArgs("report folder", default="reports/demo"), DEFENCE)
    s.add_argument("--attack-steps", type=int, default=None, help="student training steps (default: quick preset)")
    add_groups(s, OutputArgs())
    s.set_defaults(func=run)


def run(a) -> None:
    from asvp import demo

    res = demo.run_demo(TaskArgs.parse(a), ReportArgs.parse(a), config=DEFENCE.parse(a), attack_steps=a.attack_steps,
                        progress=OutputArgs.progress(a))
    OutputArgs.print_json(demo.to_json(res)) if a.json else print(demo.summary_line(res))

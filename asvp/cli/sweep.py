"""`asvp sweep`: a grid over h, k, placement and nodes; teacher drop against student drop, and the best one."""
from __future__ import annotations

from asvp.cli.args import BudgetArgs, DefenceArgs, OutputArgs, ReportArgs, TaskArgs, add_groups
from asvp.constants import MAX_TEACHER_DROP_DB

GRID = DefenceArgs(("h", "k", "placement"), grid=True, nodes="sets", choices=False)


def register(sub) -> None:
    s = sub.add_parser("sweep", help="grid over h, k, placement, nodes: teacher drop vs student drop, best config",
                       description="Defends the bundled teacher with every configuration of the grid and attacks it "
                                   "(output distillation for inline, feature distillation for tap). Best = largest "
                                   f"student drop with teacher drop <= {MAX_TEACHER_DROP_DB:g} dB.")
    TaskArgs("sweep", required=True, repeat=True).add(s)
    add_groups(s, GRID, BudgetArgs("quick | full (training budget per student)"), ReportArgs("report directory"),
               OutputArgs())
    s.set_defaults(func=run)


def run(a) -> None:
    from asvp import api

    OutputArgs.show(a, api.sweep(TaskArgs.parse(a), h=a.h, k=a.k, placement=a.placement, nodes=a.nodes,
                                 out=ReportArgs.parse(a), progress=OutputArgs.progress(a),
                                 **BudgetArgs.parse(a).to_dict()))

"""`asvp node-cost MODEL`: the defence's latency cost at each candidate node, and the nodes a budget affords."""
from __future__ import annotations

from asvp.cli.args import BackendArgs, DefenceArgs, OutputArgs, ReportArgs, TimingArgs, add_groups
from asvp.constants import NODE_COST_ITERS, NODE_COST_WARMUP
from asvp.errors import AsvpError

DEFENCE = DefenceArgs(("h", "k", "k_mode", "tau", "placement"), mode=True)


def register(sub) -> None:
    s = sub.add_parser("node-cost", help="measure the defence's latency cost at each candidate node",
                       description="Measure what the defence costs at each candidate node of a clean model alone "
                                   "(the model defended there, timed against the clean one, interleaved, on --backend "
                                   "at --shape); with --budget and --count, also choose up to COUNT nodes spread "
                                   "over the network whose cost together, measured, stays within the budget (the "
                                   "method: asvp/runtime/evaluation/node_cost.py). Costs are latency ratios on this "
                                   "machine: measure on the deployment target. Candidates: `asvp nodes --help`.")
    s.add_argument("model", help="the clean ONNX model")
    c = s.add_argument_group("nodes")
    c.add_argument("--nodes", nargs="+", metavar="SEL", help="measure only these (default: every candidate)")
    c.add_argument("--budget", type=float, metavar="RATIO",
                   help="choose nodes whose cost together, measured, is within this defended/clean latency ratio "
                        "(e.g. 1.10)")
    c.add_argument("--count", type=int, metavar="N", help="with --budget: how many nodes to choose at most (default 1)")
    add_groups(s, DEFENCE, BackendArgs(), TimingArgs(warmup=NODE_COST_WARMUP, iters=NODE_COST_ITERS, what="per round"),
               ReportArgs(), OutputArgs(quiet=True))
    s.set_defaults(func=run)


def run(a) -> None:
    from asvp import api

    if a.count is not None and a.budget is None:
        raise AsvpError("--count applies with --budget (how many nodes the budget should afford)")
    t = TimingArgs.parse(a)
    OutputArgs.show(a, api.node_costs(a.model, nodes=a.nodes, config=DEFENCE.parse(a), mode=a.mode,
                                      backend=BackendArgs.parse(a), budget=a.budget,
                                      count=1 if a.count is None else a.count, out=ReportArgs.parse(a),
                                      progress=OutputArgs.progress(a), **t.to_dict()))

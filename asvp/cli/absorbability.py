"""`asvp absorbability MODEL`: the absorbability diagnostic at each candidate node of a clean model."""
from __future__ import annotations

from asvp.cli.args import DefenceArgs, OutputArgs, TaskArgs, add_groups
from asvp.constants import ABSORBABILITY_QUERIES

DEFENCE = DefenceArgs(("h", "k", "k_mode", "tau"))


def register(sub) -> None:
    s = sub.add_parser("absorbability", help="how much of ASVP's change an attacker's 1x1 adapter cannot absorb, "
                                             "per candidate node",
                       description="At each candidate node (`asvp nodes`), measure how much of ASVP's change one "
                                   "global 1x1 affine map (an attacker's adapter) does not explain, and how much the "
                                   "amplified subspace varies across images, on the task's attacker queries or on "
                                   "--images DIR. What the diagnostic predicts: docs/protection.md.")
    s.add_argument("model", help="the clean ONNX model (one RGB image input)")
    g = s.add_argument_group("images")
    TaskArgs("the attacker queries of").add(g)
    g.add_argument("--images", metavar="DIR", help="images DIR/input/* or DIR/* instead of the task's queries")
    g.add_argument("--queries", type=int, default=ABSORBABILITY_QUERIES,
                   help=f"number of attacker query crops (default {ABSORBABILITY_QUERIES})")
    g.add_argument("--seed", type=int, default=0, help="seed of the query crops (default 0)")
    add_groups(s, DEFENCE, OutputArgs(quiet=True))
    s.set_defaults(func=run)


def run(a) -> None:
    from asvp import api

    OutputArgs.show(a, api.absorbability(a.model, task=TaskArgs.parse(a), images=a.images, config=DEFENCE.parse(a),
                                         queries=a.queries, seed=a.seed, progress=OutputArgs.progress(a)))

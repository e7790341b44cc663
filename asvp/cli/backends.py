"""`asvp backends`: the inference backends and whether they run here."""
from __future__ import annotations

from asvp.cli.args import OutputArgs, add_groups


def register(sub) -> None:
    s = sub.add_parser("backends", help="list inference backends and whether they run here")
    add_groups(s, OutputArgs(quiet=False))
    s.set_defaults(func=run)


def run(a) -> None:
    from asvp import api
    from asvp.runtime.engines.backends import backends_table

    rows = api.backends()
    OutputArgs.print_json(rows) if a.json else print(backends_table(rows))

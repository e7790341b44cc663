"""`asvp profile --url URL --model NAME`: client-side latency (p50/p90/p99) and throughput of a served model at
several concurrencies (--concurrency), with what the server's statistics say about batching."""
from __future__ import annotations

import argparse
import json


DEFAULT_CONCURRENCY = "1,4,16"


class LoadArgs:
    """--concurrency (the rest comes from profile's timing group: --shape, --warmup, --iters per client)."""

    def add(self, parser: argparse.ArgumentParser) -> None:
        p = parser.add_argument_group("served model load (with --url)")
        p.add_argument("--concurrency", default=DEFAULT_CONCURRENCY, metavar="N,N,...",
                       help=f"client threads per level (default {DEFAULT_CONCURRENCY}); --iters requests each")

    @staticmethod
    def parse(a):
        from asvp.errors import AsvpError
        from asvp.runtime.evaluation.served_load import LoadOptions

        try:
            levels = tuple(int(c) for c in str(a.concurrency).split(",") if c.strip())
        except ValueError:
            raise AsvpError(f"--concurrency {a.concurrency!r} is not a list of integers like 1,4,16") from None
        return LoadOptions(concurrency=levels, requests=a.iters, warmup=a.warmup, shapes=(a.shape,))


def run(a) -> int:
    from asvp import api
    from asvp.cli.validate_served import ServedArgs
    from asvp.errors import AsvpError

    if a.clean or a.defended:
        raise AsvpError("with --url, profile takes no model file: asvp profile --url URL --model NAME")
    res = api.profile_served(ServedArgs.parse(a), LoadArgs.parse(a))
    print(json.dumps(res.to_dict(), indent=2) if a.json else "\n".join(res.summary_lines()))
    return 0

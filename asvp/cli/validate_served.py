"""`asvp validate ONNX --url URL --model NAME`: compare a served model (any KServe v2 endpoint) with its ONNX file.

The options are a group (ServedArgs) that `asvp validate` takes; with --url, validate runs this instead of the
clean-vs-defended quality check (exit 0 pass, 1 outputs differ, 2 bad input, 3 server unreachable).
"""
from __future__ import annotations

import argparse
import json

from asvp.runtime.serving.constants import DEFAULT_CHECK_SHAPES, DEFAULT_RETRIES, DEFAULT_TIMEOUT_S, PROTOCOLS

EXIT_DIFFERS = 1
VALIDATE_NOTE = ("With --url, validate compares the served model with the ONNX file given first (the served model's "
                 "own file), output by output on seeded inputs: every output served, same shapes, differences within "
                 "--max-abs-diff (default 0: bit-identical). Exit 0 pass, 1 differs, 2 bad input, 3 unreachable.")


class ServedArgs:
    """--url/--model/--protocol/--timeout/--retries (a served model) and --check-shape -> RemoteOptions."""

    def __init__(self, shapes: bool = True, description: str | None = None):
        self.shapes, self.description = shapes, description

    def add(self, parser: argparse.ArgumentParser) -> None:
        p = parser.add_argument_group("served model (KServe v2: Triton, KServe, MLServer)", self.description)
        p.add_argument("--url", help="host:port of the server (http:// or grpc:// prefix picks the protocol)")
        p.add_argument("--model", help="the model's name on the server")
        p.add_argument("--protocol", choices=PROTOCOLS, help="http or grpc (default: from --url, else http)")
        p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                       help=f"seconds per request (default {DEFAULT_TIMEOUT_S:g})")
        p.add_argument("--retries", type=int, default=DEFAULT_RETRIES,
                       help=f"retries after a connection failure (default {DEFAULT_RETRIES})")
        if self.shapes:
            p.add_argument("--check-shape", action="append", metavar="NxCxHxW",
                           help=f"input shape to compare on (repeatable; default {', '.join(DEFAULT_CHECK_SHAPES)})")

    @staticmethod
    def parse(a):
        from asvp.errors import AsvpError
        from asvp.runtime.serving.client import RemoteOptions

        if not a.model:
            raise AsvpError("--url needs --model NAME (the model's name on the server)")
        if a.timeout <= 0 or a.retries < 0:
            raise AsvpError("--timeout must be > 0 and --retries >= 0")
        return RemoteOptions(a.url, a.model, protocol=a.protocol, timeout=a.timeout, retries=a.retries)


def run(a) -> int:
    """validate with --url: the served model against the ONNX file (the first positional argument)."""
    from asvp import api
    from asvp.errors import AsvpError
    from asvp.runtime.evaluation.served_compare import ServedCheckOptions

    if getattr(a, "defended", None):
        raise AsvpError("with --url, validate takes one ONNX file (the served model's): "
                        "asvp validate MODEL.onnx --url URL --model NAME")
    opts = ServedCheckOptions(max_abs_diff=a.max_abs_diff or 0.0)
    if a.check_shape:
        opts.shapes = tuple(a.check_shape)
    res = api.validate_served(a.clean, ServedArgs.parse(a), opts)
    print(json.dumps(res.to_dict(), indent=2, default=str) if a.json else "\n".join(res.summary_lines()))
    return 0 if res.passed else EXIT_DIFFERS

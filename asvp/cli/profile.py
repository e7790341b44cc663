"""`asvp profile CLEAN [DEFENDED]`: latency, throughput and peak memory; the defended/clean ratio interleaved.
`asvp profile --url URL --model NAME`: a served model under load (asvp/cli/profile_served.py)."""
from __future__ import annotations

from asvp.cli import profile_served, validate_served
from asvp.cli.args import BackendArgs, OutputArgs, PrecisionArgs, ReportArgs, TimingArgs, add_groups
from asvp.constants import MEMORY_MODES, PROFILE_ITERS, PROFILE_WARMUP


def register(sub) -> None:
    s = sub.add_parser("profile", help="latency (p50/p90/p99), throughput and memory; defended/clean interleaved",
                       description="Time CLEAN (and DEFENDED) on one backend with a random input of --shape. With two "
                                   "models every iteration runs both, alternating which goes first, so the "
                                   "defended/clean ratio comes from one run under the same conditions.")
    s.add_argument("clean", nargs="?", help="clean ONNX model (or a TensorRT engine with --backend tensorrt); not with --url")
    s.add_argument("defended", nargs="?", help="defended model (optional)")
    add_groups(s, BackendArgs(), PrecisionArgs(), TimingArgs(warmup=PROFILE_WARMUP, iters=PROFILE_ITERS))
    s.add_argument("--memory", choices=MEMORY_MODES, default=MEMORY_MODES[0],
                   help="peak memory: per model in a fresh process (default), in this process (order-dependent), or off")
    add_groups(s, ReportArgs(), OutputArgs(), validate_served.ServedArgs(shapes=False), profile_served.LoadArgs())
    s.set_defaults(func=run, parser=s)


def run(a) -> int | None:
    PrecisionArgs.refuse_served(a)
    if a.url or not a.clean:  # a served model under load
        return profile_served.run(a) if a.url else a.parser.error("give CLEAN, or --url URL --model NAME")
    from asvp import api

    OutputArgs.show(a, api.profile(a.clean, a.defended, backend=BackendArgs.parse(a), timing=TimingArgs.parse(a),
                                   memory=a.memory, out=ReportArgs.parse(a), progress=OutputArgs.progress(a),
                                   precision=PrecisionArgs.parse(a)))

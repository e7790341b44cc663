"""`asvp profile CLEAN [DEFENDED]`: latency, throughput and peak memory; the defended/clean ratio interleaved."""
from __future__ import annotations

from asvp.cli.args import BackendArgs, OutputArgs, ReportArgs, TimingArgs, add_groups
from asvp.constants import MEMORY_MODES, PROFILE_ITERS, PROFILE_WARMUP


def register(sub) -> None:
    s = sub.add_parser("profile", help="latency (p50/p90/p99), throughput and memory; defended/clean interleaved",
                       description="Time CLEAN (and DEFENDED) on one backend with a random input of --shape. With two "
                                   "models every iteration runs both, alternating which goes first, so the "
                                   "defended/clean ratio comes from one run under the same conditions.")
    s.add_argument("clean", help="clean ONNX model (or a TensorRT engine with --backend tensorrt)")
    s.add_argument("defended", nargs="?", help="defended model (optional)")
    add_groups(s, BackendArgs(), TimingArgs(warmup=PROFILE_WARMUP, iters=PROFILE_ITERS))
    s.add_argument("--memory", choices=MEMORY_MODES, default=MEMORY_MODES[0],
                   help="peak memory: per model in a fresh process (default), in this process (order-dependent), or off")
    add_groups(s, ReportArgs(), OutputArgs())
    s.set_defaults(func=run)


def run(a) -> None:
    from asvp import api

    OutputArgs.show(a, api.profile(a.clean, a.defended, backend=BackendArgs.parse(a), timing=TimingArgs.parse(a),
                                   memory=a.memory, out=ReportArgs.parse(a), progress=OutputArgs.progress(a)))

"""`asvp build MODEL -o ENGINE`: a TensorRT engine with one dynamic-shape profile (AsvpPerturb plugin registered),
in fp32 or a reduced precision (ASVP and mark layers pinned to fp32 by default), optionally portable."""
from __future__ import annotations

from asvp.cli.args import OutputArgs, OutputFileArgs, ShapeProfileArgs, add_groups
from asvp.cli.engine_args import EngineArgs


def register(sub) -> None:
    s = sub.add_parser("build", help="build a TensorRT engine (dynamic-shape profile, AsvpPerturb plugin registered)",
                       description="Parse MODEL with TensorRT's ONNX parser (registering the AsvpPerturb plugin first "
                                   "when the model has plugin nodes), build one optimisation profile and write the "
                                   "engine plus OUTPUT.json (TensorRT version, GPU compute capability, profile, "
                                   "precision and pinned layers, portability flags, source digest) atomically. "
                                   "Needs TensorRT >= 10.8 and an NVIDIA GPU (exit 3 otherwise, nothing written). "
                                   "The precision and portability options are unverified: no real TensorRT has run "
                                   "them yet (docs/deploy.md).")
    s.add_argument("model", help="ONNX model (clean, subgraph-defended or plugin-defended)")
    add_groups(s, OutputFileArgs("engine path (.engine/.plan)",
                                 force_help="overwrite an existing engine and sidecar (never the model)"),
               ShapeProfileArgs(), EngineArgs(), OutputArgs(quiet=False))
    s.set_defaults(func=run)


def run(a) -> None:
    from asvp import api

    out = OutputFileArgs.parse(a)
    OutputArgs.show(a, api.build_engine(a.model, out.path, profile=ShapeProfileArgs.parse(a),
                                        options=EngineArgs.parse(a), force=out.force))

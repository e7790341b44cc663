"""`asvp build MODEL -o ENGINE`: a TensorRT engine with one dynamic-shape profile (AsvpPerturb plugin registered)."""
from __future__ import annotations

from asvp.cli.args import OutputArgs, OutputFileArgs, ShapeProfileArgs, add_groups


def register(sub) -> None:
    s = sub.add_parser("build", help="build a TensorRT engine (dynamic-shape profile, AsvpPerturb plugin registered)",
                       description="Parse MODEL with TensorRT's ONNX parser (registering the AsvpPerturb plugin first "
                                   "when the model has plugin nodes), build one optimisation profile and write the "
                                   "engine plus OUTPUT.json (TensorRT version, profile, source digest) atomically. "
                                   "Needs TensorRT >= 10.8 and an NVIDIA GPU (exit 3 otherwise, nothing written).")
    s.add_argument("model", help="ONNX model (clean, subgraph-defended or plugin-defended)")
    add_groups(s, OutputFileArgs("engine path (.engine/.plan)",
                                 force_help="overwrite an existing engine and sidecar (never the model)"),
               ShapeProfileArgs())
    s.add_argument("--fp16", action="store_true", help="allow FP16 kernels (the ASVP plugin itself stays FP32)")
    s.add_argument("--int8", action="store_true", help="allow INT8 (only for explicitly quantized Q/DQ models)")
    s.add_argument("--workspace", help="workspace memory pool limit, e.g. 2G or 512M (default: TensorRT's)")
    s.add_argument("--no-plugin", action="store_true", help="do not register the AsvpPerturb plugin "
                                                            "(refused for models that contain plugin nodes)")
    s.add_argument("--aot-plugin", action="store_true",
                   help="UNVERIFIED (never run with a real TensorRT): embed the AsvpPerturb plugin's ahead-of-time "
                        "implementation (the fused Triton kernel as PTX, TensorRT's PREFER_AOT_PYTHON_PLUGINS) instead "
                        "of the Python one, meant for engines loaded without Python (trtexec, Triton Inference Server). "
                        "Needs plugin nodes, TensorRT >= 10.9 and Triton; see docs/plugin.md section 5")
    add_groups(s, OutputArgs(quiet=False))
    s.set_defaults(func=run)


def run(a) -> None:
    from asvp import api

    out = OutputFileArgs.parse(a)
    OutputArgs.show(a, api.build_engine(a.model, out.path, profile=ShapeProfileArgs.parse(a), fp16=a.fp16,
                                        int8=a.int8, workspace=a.workspace, plugin=not a.no_plugin, force=out.force,
                                        aot_plugin=a.aot_plugin))

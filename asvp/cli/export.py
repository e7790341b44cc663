"""`asvp export`: trace a teacher to ONNX (dynamic N/H/W) and check parity with ONNX Runtime."""
from __future__ import annotations

from asvp.cli.args import OutputArgs, OutputFileArgs, add_groups, positive_int
from asvp.constants import EXPORTERS, MAX_OPSET, MIN_OPSET
from asvp.options import ExportOptions


def register(sub) -> None:
    s = sub.add_parser("export", help="trace a teacher to ONNX (dynamic N/H/W) and check parity with ONNX Runtime",
                       description="SOURCE is a bundled task name, package.module:Class (with --weights), "
                                   "or a spandrel-supported checkpoint (.pth/.safetensors). The minimum input side "
                                   "is spandrel's or detected; parity with torch is checked at the trace shape, at "
                                   "batch 2 and at two non-square sizes (odd multiples of the size multiple). A "
                                   "failure names the size or batch and the option that accepts a static one. "
                                   "Grey (1-channel) and other C-channel models export too; windowed transformers "
                                   "(SwinIR, HAT, DAT, DRCT, Swin2SR, RGT) keep a dynamic batch through export "
                                   "patches, recorded in the model's asvp.export_patch metadata.")
    s.add_argument("source")
    add_groups(s, OutputFileArgs("output .onnx path"))
    g = s.add_argument_group("source options (ExportOptions)")
    g.add_argument("--weights", help="state dict for module:Class sources")
    g.add_argument("--kwargs", help="JSON constructor arguments for module:Class sources")
    g.add_argument("--task", help="task label recorded in metadata for user models (default: custom)")
    g.add_argument("--size-multiple", type=positive_int, default=None,
                   help="input H and W must be multiples of this (user models; default: spandrel's requirement, "
                        "else 1)")
    g.add_argument("--opset", type=int, default=None, help=f"ONNX opset ({MIN_OPSET} to {MAX_OPSET}, default {MIN_OPSET})")
    g.add_argument("--exporter", choices=EXPORTERS, default=EXPORTERS[0],
                   help="auto (default): TorchScript, then torch's dynamo exporter (needs onnxscript) when the trace "
                        "bakes a shape; the one used is recorded in the model's asvp.exporter metadata")
    g.add_argument("--static-batch", action="store_true",
                   help="fix the batch to 1 (for models whose export cannot keep the batch dynamic)")
    g.add_argument("--static-size", metavar="HxW",
                   help="fix the input height and width (for models whose export cannot keep them dynamic)")
    add_groups(s, OutputArgs(quiet=False, json_help="machine-readable result"))
    s.set_defaults(func=run)


def parse_options(a) -> ExportOptions:
    return ExportOptions(weights=a.weights, kwargs=a.kwargs, task=a.task, size_multiple=a.size_multiple,
                         opset=a.opset, exporter=a.exporter, static_batch=a.static_batch, static_size=a.static_size)


def run(a) -> None:
    from asvp import api

    out = OutputFileArgs.parse(a)
    OutputArgs.show(a, api.export(a.source, out.path, parse_options(a), force=out.force))

"""`build`'s engine argument group (issue 26.2, 26.5), beside the shared groups of asvp.cli.args (kept apart so
that args.py stays small): precisions and where the ASVP/mark layers run, the plugin, and portability (timing
cache, hardware/version compatibility, optimisation level). Standard library and asvp.options only, like args.py.
"""
from __future__ import annotations

import argparse

from asvp.constants import ASVP_PRECISIONS, ENGINE_OPT_LEVELS, HARDWARE_COMPATIBILITY
from asvp.options import EngineOptions


class EngineArgs:
    """--fp16/--bf16/--int8/--asvp-precision/--workspace, --no-plugin/--aot-plugin, --timing-cache/
    --hardware-compatibility/--version-compatible/--opt-level -> EngineOptions. TensorRT parts unverified."""

    def add(self, parser: argparse.ArgumentParser) -> None:
        p = parser.add_argument_group("precision (UNVERIFIED with a real TensorRT)")
        p.add_argument("--fp16", action="store_true", help="allow FP16 kernels")
        p.add_argument("--bf16", action="store_true", help="allow BF16 kernels")
        p.add_argument("--int8", action="store_true",
                       help="allow INT8; only for explicitly quantized models (QuantizeLinear/DequantizeLinear "
                            "nodes), others are refused")
        p.add_argument("--asvp-precision", choices=ASVP_PRECISIONS, default=ASVP_PRECISIONS[0],
                       help="under --fp16/--bf16/--int8, where the ASVP subgraph's and the fingerprint mark's layers "
                            "run: fp32 (default) pins them through TensorRT layer-precision constraints (recorded in "
                            "the sidecar); reduced lets them follow the reduced precision. The AsvpPerturb plugin "
                            "is fp32 either way")
        p.add_argument("--workspace", help="workspace memory pool limit, e.g. 2G or 512M (default: TensorRT's)")
        g = parser.add_argument_group("plugin")
        g.add_argument("--no-plugin", action="store_true", help="do not register the AsvpPerturb plugin "
                                                                "(refused for models that contain plugin nodes)")
        g.add_argument("--aot-plugin", action="store_true",
                       help="UNVERIFIED (never run with a real TensorRT): embed the AsvpPerturb plugin's ahead-of-time "
                            "implementation (the fused Triton kernel as PTX, TensorRT's PREFER_AOT_PYTHON_PLUGINS) "
                            "instead of the Python one, meant for engines loaded without Python (trtexec, Triton "
                            "Inference Server). Needs plugin nodes, TensorRT >= 10.9 and Triton; see docs/plugin.md "
                            "section 5")
        q = parser.add_argument_group("portable engines (UNVERIFIED with a real TensorRT)")
        q.add_argument("--timing-cache", metavar="FILE",
                       help="TensorRT tactic timing cache: read if it exists, updated (atomically) after the build; "
                            "reusing it makes later builds faster")
        q.add_argument("--hardware-compatibility", choices=HARDWARE_COMPATIBILITY, default=HARDWARE_COMPATIBILITY[0],
                       help="none (default): the engine runs on GPUs of the building GPU's compute capability only; "
                            "ampere+: on any GPU of compute capability 8.0 or later (possibly slower)")
        q.add_argument("--version-compatible", action="store_true",
                       help="the engine also loads in later TensorRT versions (it embeds TensorRT's lean runtime; "
                            "possibly slower)")
        q.add_argument("--opt-level", type=int, choices=ENGINE_OPT_LEVELS, metavar="0-5",
                       help="TensorRT builder optimisation level: lower builds faster, higher may run faster "
                            "(default: TensorRT's, 3)")

    @staticmethod
    def parse(a) -> EngineOptions:
        return EngineOptions(fp16=a.fp16, bf16=a.bf16, int8=a.int8, asvp_precision=a.asvp_precision,
                             workspace=a.workspace, plugin=not a.no_plugin, aot_plugin=a.aot_plugin,
                             timing_cache=a.timing_cache, hardware_compatibility=a.hardware_compatibility,
                             version_compatible=a.version_compatible, opt_level=a.opt_level)

"""Typed options shared by the API and the command line: what travels as one object instead of a keyword list.

Each is a frozen dataclass with the defaults of asvp.constants; the CLI's argument groups (asvp/cli/args.py) build
them from the command line, and the API functions take them (asvp.api.validate takes Thresholds, profile takes
Timing, build_engine takes ShapeProfile, export takes ExportOptions; attack and sweep take AttackBudget's
fields). Checking the values is the job of the function that uses them (one-line AsvpErrors), not of these
containers. Standard library only: the CLI imports this
module to build its parsers.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from asvp.constants import (ASVP_PRECISIONS, DEFAULT_PRESET, HARDWARE_COMPATIBILITY, MAX_TEACHER_DROP_DB, PROFILE_ITERS,
                            PROFILE_SHAPE, PROFILE_WARMUP)


@dataclass(frozen=True)
class Timing:
    """How a latency measurement runs: a random input of `shape` ("NxCxHxW" or ints), `warmup` untimed then
    `iters` timed iterations (per model, or per round), ONNX Runtime intra-op `threads` (None: all CPUs)."""

    shape: str | tuple = PROFILE_SHAPE
    warmup: int = PROFILE_WARMUP
    iters: int = PROFILE_ITERS
    threads: int | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Thresholds:
    """The verdict of `validate`: each check that is not None must hold (dB for PSNR, output units otherwise).

    max_teacher_drop: clean PSNR - defended PSNR against the target; max_ssim_drop: the same for SSIM;
    min_output_psnr: defended vs clean output PSNR; max_abs_diff: max |defended - clean| (Polygraphy's atol)."""

    max_teacher_drop: float | None = MAX_TEACHER_DROP_DB
    max_ssim_drop: float | None = None
    min_output_psnr: float | None = None
    max_abs_diff: float | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ShapeProfile:
    """A TensorRT optimisation profile for the image input: "NxCxHxW" strings or int sequences; None takes
    runtime.engines.shapes' default for that end, adapted to the model."""

    min: str | tuple | None = None
    opt: str | tuple | None = None
    max: str | tuple | None = None


@dataclass(frozen=True)
class ExportOptions:
    """How `export` treats a source beyond its path.

    weights / kwargs: state dict and JSON constructor arguments of a `module:Class` source; task: the label
    recorded for a user model (None: "custom"); size_multiple: input H and W must be multiples of this (user
    models; None: spandrel's requirement, else 1); opset: ONNX opset (None: the exporter's default); exporter:
    "auto", "torchscript" or "dynamo"; static_batch / static_size ("HxW" or (H, W)): fix the batch to 1 / the
    input size, for models that cannot be exported with them dynamic."""

    weights: str | None = None
    kwargs: str | dict | None = None
    task: str | None = None
    size_multiple: int | None = None
    opset: int | None = None
    exporter: str = "auto"
    static_batch: bool = False
    static_size: str | tuple | None = None


@dataclass(frozen=True)
class AttackBudget:
    """An attack's budget: the preset ("quick", "standard", "thorough", "full"), the first seed, and overrides of
    the preset's student training steps and number of queries (None: the preset's)."""

    preset: str = DEFAULT_PRESET
    seed: int = 0
    steps: int | None = None
    pool: int | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class EngineOptions:
    """How `build` makes a TensorRT engine beyond its shape profile (issue 26.2, 26.5; TensorRT parts unverified).

    fp16 / bf16 / int8: the reduced precisions TensorRT may use (int8: explicitly quantized Q/DQ models only);
    asvp_precision: "fp32" pins the ASVP subgraph's and the fingerprint mark's layers to fp32 under a reduced
    precision, "reduced" lets them follow it; workspace: bytes or "2G"; plugin / aot_plugin: register the
    AsvpPerturb plugin / embed its AOT implementation; timing_cache: a file read if present and updated after the
    build; hardware_compatibility: "none" or "ampere+"; version_compatible: loadable by later TensorRT versions;
    opt_level: TensorRT's builder optimisation level 0-5 (None: TensorRT's default)."""

    fp16: bool = False
    bf16: bool = False
    int8: bool = False
    asvp_precision: str = ASVP_PRECISIONS[0]
    workspace: str | int | None = None
    plugin: bool = True
    aot_plugin: bool = False
    timing_cache: str | None = None
    hardware_compatibility: str = HARDWARE_COMPATIBILITY[0]
    version_compatible: bool = False
    opt_level: int | None = None

    @property
    def reduced(self) -> bool:
        """Whether any reduced precision is allowed."""
        return self.fp16 or self.bf16 or self.int8

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

"""Argument groups for the `asvp` subcommands (as Polygraphy's tools build theirs from ArgGroups).

A group declares its options once: `add(parser)` puts them on a subcommand's parser, `parse(args)` turns the parsed
namespace into the typed options its API function takes (asvp.options, AsvpConfig, or a plain value). Subcommands
differ only in which groups they take and how (e.g. one value of h for `defend`, a grid of values for `sweep`).
Defaults come from asvp.constants and AsvpConfig, never re-typed here. This module imports no torch, onnx or
onnxruntime: every subcommand's parser is built from it on each `asvp` start.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from asvp.config import DEFAULT_ANGLE_MAX, K_MODES, MAX_H, MAX_ITERS, PLACEMENTS, VARIANTS, AsvpConfig
from asvp.constants import (BACKENDS, DEFAULT_PRESET, DEFEND_MODES, ENGINE_MAX_SHAPE, ENGINE_MIN_SHAPE,
                            ENGINE_OPT_SHAPE, FINGERPRINT_KEY_ENV, MAX_TEACHER_DROP_DB, PROFILE_SHAPE, TASK_NAMES)
from asvp.constants import PRECISIONS  # PrecisionArgs (issue 26.3)
from asvp.errors import AsvpError
from asvp.options import AttackBudget, ShapeProfile, Thresholds, Timing

_D = AsvpConfig()  # help texts show the real defaults
TASKS_HELP = ", ".join(TASK_NAMES)


def shape_text(dims) -> str:
    return "x".join(map(str, dims))


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (anything else is a usage error: one line, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def add_groups(p: argparse.ArgumentParser, *groups) -> argparse.ArgumentParser:
    for g in groups:
        g.add(p)
    return p


class OutputArgs:
    """--json (machine-readable result) and, for long work, -q/--quiet (no progress bars); `show` prints a result."""

    def __init__(self, quiet: bool = True, json_help: str = "machine-readable output"):
        self.quiet, self.json_help = quiet, json_help

    def add(self, parser: argparse.ArgumentParser) -> None:
        p = parser.add_argument_group("output")
        p.add_argument("--json", action="store_true", help=self.json_help)
        if self.quiet:
            p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    @staticmethod
    def progress(a) -> bool:
        """Progress bars on long work, for people: off with -q, and off when stderr is not a terminal (logs, CI)."""
        return not getattr(a, "quiet", False) and sys.stderr.isatty()

    @staticmethod
    def print_json(obj) -> None:
        print(json.dumps(obj, indent=2, default=str))

    @staticmethod
    def show(a, res) -> None:
        """--json: the result's to_dict(); otherwise its summary_lines()."""
        OutputArgs.print_json(res.to_dict()) if a.json else print("\n".join(res.summary_lines()))


class TaskArgs:
    """--task: the bundled task (or a user model's task label) a command works on; its meaning differs by command,
    so each says it: `what` (what the task picks), `note` (the default when none is given: by default the model's
    asvp.task metadata), `required`, `default`, and `repeat` (repeatable: a list)."""

    FROM_MODEL = "default: from the model's asvp.task metadata"

    def __init__(self, what: str = "one of", note: str | None = FROM_MODEL, *, required: bool = False,
                 default: str | None = None, repeat: bool = False):
        self.what, self.note, self.required, self.default, self.repeat = what, note, required, default, repeat
        if default is not None:
            self.note = f"default {default}"

    def add(self, parser) -> None:
        text = f"{self.what} {TASKS_HELP}" + (f" ({self.note})" if self.note and not self.required else "")
        if self.repeat:
            parser.add_argument("--task", action="append", required=self.required, help=text + "; repeatable")
        else:
            parser.add_argument("--task", required=self.required, default=self.default, help=text)

    @staticmethod
    def parse(a):
        """The task (None: not given), or the list of tasks for a repeatable --task."""
        return a.task


@dataclass(frozen=True)
class OutputFile:
    """Where a command writes its one output file, and whether an existing one may be replaced (never the input)."""

    path: str
    force: bool = False


class OutputFileArgs:
    """-o/--output FILE (written atomically, only on success) and, where the command can replace one, --force
    (overwrite an existing output; force_help=None: no --force)."""

    def __init__(self, what: str = "output file",
                 force_help: str | None = "overwrite an existing output (never the input)"):
        self.what, self.force_help = what, force_help

    def add(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("-o", "--output", required=True, help=f"{self.what} (written atomically, only on success)")
        if self.force_help:
            parser.add_argument("--force", action="store_true", help=self.force_help)

    @staticmethod
    def parse(a) -> OutputFile:
        return OutputFile(a.output, getattr(a, "force", False))


class ReportArgs:
    """--out DIR: the report folder (report.json, report.md, PNG plots; an existing asvp report gets sections added)."""

    def __init__(self, help: str = "write report.json, report.md and PNG plots here", default: str | None = None):
        self.help, self.default = help, default

    def add(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--out", metavar="DIR", default=self.default,
                            help=self.help + (f" (default {self.default})" if self.default else ""))

    @staticmethod
    def parse(a) -> str | None:
        return a.out


class BackendArgs:
    """--backend: which inference backend runs the models."""

    HELP = f"{BACKENDS[0]} (default), {', '.join(BACKENDS[1:])} (`asvp backends` lists what runs here)"

    def add(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--backend", default=BACKENDS[0], help=self.HELP)

    @staticmethod
    def parse(a) -> str:
        return a.backend


class PrecisionArgs:
    """--precision (issue 26.3): what the models compute in; fp16/bf16 convert them (onnx2torch, torch in half)."""

    HELP = (f"{PRECISIONS[0]} (default) or {', '.join(PRECISIONS[1:])}: run the ONNX models converted to that precision "
            "through torch (onnxrt-cpu: CPU, onnxrt-cuda: CUDA; needs onnx2torch, pip install 'asvp[precision]'), every "
            "tensor in that dtype, as a reduced-precision engine computes")

    def add(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--precision", choices=PRECISIONS, default=PRECISIONS[0], help=self.HELP)

    @staticmethod
    def parse(a) -> str:
        return a.precision

    @staticmethod
    def refuse_served(a) -> None:
        """A served model (--url) computes in whatever its server runs: --precision is for ONNX models run here."""
        if getattr(a, "url", None) and a.precision != PRECISIONS[0]:
            raise AsvpError("--precision converts ONNX models run here; a served model (--url) computes in what its "
                            "server runs")


class DefenceArgs:
    """The defence settings (h, k, tau, k-mode, iters, placement, variant, nodes, mode), declared once.

    fields: which settings a subcommand takes. grid=True: several values each (a sweep's grid). nodes: "list"
    (--nodes SEL [SEL ...]), "repeat" (--nodes SEL, repeatable) or "sets" (comma-separated node sets, a grid axis).
    choices=False leaves checking placement / k-mode values to the API (its one-line error) instead of argparse.
    Unset options keep AsvpConfig's defaults.
    """

    SETTINGS = {
        "k": dict(type=int, help=f"top-k directions amplified (the cap in adaptive mode; default {_D.k}; < channels)",
                  grid_help="values of k (default 2 4)"),
        "h": dict(type=float, help=f"amplification of the top-k singular values, in (0, {MAX_H:g}] (default {_D.h})",
                  grid_help="values of h (default 1.1 1.5 3)"),
        "tau": dict(type=float, help=f"energy share for the adaptive k, in (0, 1] (default {_D.tau})"),
        "k_mode": dict(flag="--k-mode", choices=K_MODES,
                       help=f"adaptive k per sample or fixed k (default {_D.k_mode})"),
        "iters": dict(type=int, help=f"power-iteration depth of the subgraph: squarings per basis column, at most "
                                     f"{MAX_ITERS} (default {_D.iters}; plugin mode is exact)"),
        "placement": dict(choices=PLACEMENTS,
                          help=f"inline: perturbed feature replaces the original; tap: extra output asvp_tap_<i> "
                               f"(default {_D.placement})",
                          grid_help="inline and/or tap (default both)"),
        "variant": dict(choices=VARIANTS,
                        help="defence variant (subgraph mode only): paper = ASVP as published; keyed-h = per-query h "
                             "in [h, h-max] from a keyed hash of the query's feature; keyed-rotation = also rotate "
                             "the top-k directions by keyed per-query angles. What each protects against: "
                             "docs/variants.md (default paper)"),
        "h_max": dict(flag="--h-max", type=float, help="keyed-h: upper end of the per-query h (> --h)"),
        "angle_max": dict(flag="--angle-max", type=float,
                          help=f"keyed-rotation: largest rotation angle in degrees, in (0, 180] "
                               f"(default {DEFAULT_ANGLE_MAX:g})"),
        "key": dict(help="keyed variants: the secret that seeds the hash (any string). It is not written to the "
                         "model's metadata, but the graph's constants encode it"),
    }
    NODES = {
        "list": dict(nargs="+", metavar="SEL", help="feature nodes to defend (default: auto)"),
        "repeat": dict(action="append", metavar="SEL", help="node to defend (repeatable; default: auto)"),
        "sets": dict(nargs="+", help="node sets: 'default' or comma-separated selectors (default: default)"),
    }
    CONFIG_FIELDS = ("h", "k", "k_mode", "tau", "iters", "placement", "variant", "h_max", "angle_max", "key")

    def __init__(self, fields=CONFIG_FIELDS, *, grid: bool = False, nodes: str | None = None, mode: bool = False,
                 suffix: str = "", choices: bool = True):
        self.fields, self.grid, self.nodes, self.mode, self.suffix = tuple(fields), grid, nodes, mode, suffix
        self.choices = choices

    def add(self, parser: argparse.ArgumentParser) -> None:
        p = parser.add_argument_group("defence settings" + (" (a grid: several values each)" if self.grid else ""))
        for name in self.fields:
            spec = dict(self.SETTINGS[name])
            flag = spec.pop("flag", f"--{name}")
            grid_help = spec.pop("grid_help", None)
            if not self.choices:
                spec.pop("choices", None)
            if self.grid:
                spec["nargs"] = "+"
                spec["help"] = grid_help or spec["help"]
            spec["help"] += self.suffix
            p.add_argument(flag, dest=name, **spec)
        if self.nodes:
            spec = dict(self.NODES[self.nodes])
            spec["help"] += self.suffix
            p.add_argument("--nodes", **spec)
        if self.mode:
            p.add_argument("--mode", choices=DEFEND_MODES, default=DEFEND_MODES[0],
                           help=f"how ASVP is inserted (default {DEFEND_MODES[0]})")

    def overrides(self, a) -> dict:
        """The settings given on the command line, by AsvpConfig field name."""
        return {f: getattr(a, f) for f in self.fields if getattr(a, f, None) is not None}

    def parse(self, a) -> AsvpConfig | None:
        """AsvpConfig() with the settings given on the command line (None when none was given)."""
        changes = self.overrides(a)
        return AsvpConfig().with_(**changes) if changes else None

    config = parse


class BudgetArgs:
    """An attack's budget: --preset, --seed, and overrides of the preset's --steps and --pool."""

    def __init__(self, preset_help: str):
        self.preset_help = preset_help

    def add(self, parser: argparse.ArgumentParser) -> None:
        p = parser.add_argument_group("attack budget")
        p.add_argument("--preset", default=DEFAULT_PRESET, help=self.preset_help)
        p.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
        p.add_argument("--steps", type=int, help="override the preset's student training steps")
        p.add_argument("--pool", type=int, help="override the preset's number of queries")

    @staticmethod
    def parse(a) -> AttackBudget:
        return AttackBudget(a.preset, a.seed, a.steps, a.pool)


class ShapeProfileArgs:
    """--min/--opt/--max: a TensorRT optimisation profile for the image input."""

    def add(self, parser: argparse.ArgumentParser) -> None:
        p = parser.add_argument_group("optimisation profile (TensorRT)")
        p.add_argument("--min", metavar="NxCxHxW",
                       help=f"smallest input shape (default {shape_text(ENGINE_MIN_SHAPE)})")
        p.add_argument("--opt", metavar="NxCxHxW",
                       help=f"shape TensorRT optimises for (default {shape_text(ENGINE_OPT_SHAPE)})")
        p.add_argument("--max", metavar="NxCxHxW", help=f"largest input shape (default {shape_text(ENGINE_MAX_SHAPE)})")

    @staticmethod
    def parse(a) -> ShapeProfile:
        return ShapeProfile(a.min, a.opt, a.max)


class TimingArgs:
    """--shape/--warmup/--iters/--threads: how a latency measurement runs (random input of one shape, interleaved
    rounds, ONNX Runtime's intra-op threads)."""

    def __init__(self, warmup: int, iters: int, what: str = "per model"):
        self.warmup, self.iters, self.what = warmup, iters, what

    def add(self, parser: argparse.ArgumentParser) -> None:
        p = parser.add_argument_group("timing")
        shape = shape_text(PROFILE_SHAPE)
        p.add_argument("--shape", default=shape, metavar="NxCxHxW", help=f"input shape (default {shape})")
        p.add_argument("--warmup", type=int, default=self.warmup,
                       help=f"untimed iterations {self.what} first (default {self.warmup})")
        p.add_argument("--iters", type=int, default=self.iters,
                       help=f"timed iterations {self.what} (default {self.iters})")
        p.add_argument("--threads", type=int, metavar="N",
                       help="ONNX Runtime intra-op threads (default: all CPUs, as a default session runs; 1 gives "
                            "steadier figures on a shared machine; TensorRT ignores it)")

    @staticmethod
    def parse(a) -> Timing:
        return Timing(a.shape, a.warmup, a.iters, a.threads)


class ThresholdArgs:
    """The verdict of `validate`: --max-teacher-drop, --max-ssim-drop, --min-output-psnr, --max-abs-diff."""

    def add(self, parser: argparse.ArgumentParser) -> None:
        p = parser.add_argument_group("verdict (fail when a given threshold is not met)")
        p.add_argument("--max-teacher-drop", type=float, default=MAX_TEACHER_DROP_DB, metavar="DB",
                       help=f"fail if clean PSNR - defended PSNR exceeds this (default {MAX_TEACHER_DROP_DB:g} dB)")
        p.add_argument("--max-ssim-drop", type=float, default=None,
                       help="fail if clean SSIM - defended SSIM exceeds this")
        p.add_argument("--min-output-psnr", type=float, default=None, metavar="DB",
                       help="fail if the defended-vs-clean output PSNR is below this")
        p.add_argument("--max-abs-diff", type=float, default=None,
                       help="fail if max |defended - clean| output exceeds this (Polygraphy atol)")

    @staticmethod
    def parse(a) -> Thresholds:
        return Thresholds(a.max_teacher_drop, a.max_ssim_drop, a.min_output_psnr, a.max_abs_diff)


class KeyArgs:
    """The fingerprint's secret key: --key, --key-file, or the environment variable (keeps it out of `ps`)."""

    def __init__(self, what: str = "the secret key", required: bool = True):
        self.what, self.required = what, required

    def add(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--key", help=f"{self.what} (or --key-file, or ${FINGERPRINT_KEY_ENV})")
        parser.add_argument("--key-file", help="file holding the secret key")

    def parse(self, a) -> str | None:
        if a.key and a.key_file:
            raise AsvpError("give the key once: --key or --key-file, not both")
        if a.key_file:
            try:
                return Path(a.key_file).read_text().strip()
            except OSError as exc:
                raise AsvpError(f"cannot read the key file {a.key_file}: {exc.strerror or exc}") from None
        key = a.key or os.environ.get(FINGERPRINT_KEY_ENV)
        if not key and self.required:
            raise AsvpError(f"a fingerprint key is required: --key KEY, --key-file FILE or ${FINGERPRINT_KEY_ENV}")
        return key

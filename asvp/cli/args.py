"""Shared argument groups for the `asvp` subcommands (as Polygraphy's tools build theirs from ArgGroups).

Each group declares its options once, adds them to a subcommand's parser, and turns the parsed namespace back into
the keyword arguments of an asvp.api call. Subcommands differ only in which groups they take and how (e.g. one value
of h for `defend`, a grid of values for `sweep`).
"""
from __future__ import annotations

import argparse
import sys

from asvp.config import DEFAULT_ANGLE_MAX, K_MODES, PLACEMENTS, VARIANTS, AsvpConfig
from asvp.graph_passes.defend import MODES
from asvp.runtime.engines.backends import BACKENDS
from asvp.tasks import TASK_NAMES

_D = AsvpConfig()  # help texts show the real defaults
TASKS_HELP = ", ".join(TASK_NAMES)


class OutputArgs:
    """--json (machine-readable result) and, for long work, -q/--quiet (no progress bars)."""

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


class BackendArgs:
    """--backend: which inference backend runs the models."""

    HELP = (f"{BACKENDS[0]} (default), {', '.join(BACKENDS[1:])} (`asvp backends` lists what runs here)")

    def add(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--backend", default=BACKENDS[0], help=self.HELP)


class DefenceArgs:
    """The defence settings (h, k, tau, k-mode, iters, placement, nodes, mode), declared once.

    fields: which settings a subcommand takes. grid=True: several values each (a sweep's grid). nodes: "list"
    (--nodes SEL [SEL ...]), "repeat" (--nodes SEL, repeatable) or "sets" (comma-separated node sets, a grid axis).
    choices=False leaves checking placement / k-mode values to the API (its one-line error) instead of argparse.
    Unset options keep AsvpConfig's defaults.
    """

    SETTINGS = {
        "k": dict(type=int, help=f"top-k directions amplified (the cap in adaptive mode; default {_D.k}; < channels)",
                  grid_help="values of k (default 2 4)"),
        "h": dict(type=float, help=f"amplification of the top-k singular values, > 0 (default {_D.h})",
                  grid_help="values of h (default 1.1 1.5 3)"),
        "tau": dict(type=float, help=f"energy share for the adaptive k, in (0, 1] (default {_D.tau})"),
        "k_mode": dict(flag="--k-mode", choices=K_MODES,
                       help=f"adaptive k per sample or fixed k (default {_D.k_mode})"),
        "iters": dict(type=int, help=f"power-iteration depth of the subgraph: squarings per basis column (default {_D.iters}; plugin mode is exact)"),
        "placement": dict(choices=PLACEMENTS,
                          help=f"inline: perturbed feature replaces the original; tap: extra output asvp_tap_<i> "
                               f"(default {_D.placement})",
                          grid_help="inline and/or tap (default both)"),
        "variant": dict(choices=VARIANTS,
                        help="defence variant (docs/variants.md; subgraph mode only): paper = ASVP as published; "
                             "keyed-h = per-query h in [h, h-max] from a keyed hash of the query's feature; "
                             "keyed-rotation = also rotate the top-k directions by keyed per-query angles. "
                             "Measured, neither protects: an attacker averaging the answers to flipped copies of its "
                             "queries defeats keyed-h, and keyed-rotation never hurt students (docs/variants.md) "
                             "(default paper)"),
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
            p.add_argument("--mode", choices=MODES, default=MODES[0], help="how ASVP is inserted (default subgraph)")

    def overrides(self, a) -> dict:
        """The settings given on the command line, by AsvpConfig field name."""
        return {f: getattr(a, f) for f in self.fields if getattr(a, f, None) is not None}

    def config(self, a) -> AsvpConfig | None:
        """AsvpConfig() with the settings given on the command line (None when none was given)."""
        changes = self.overrides(a)
        return AsvpConfig().with_(**changes) if changes else None


class BudgetArgs:
    """An attack's budget: preset, seed, report directory, and overrides of the preset's steps and queries."""

    def __init__(self, preset_help: str, out_help: str):
        self.preset_help, self.out_help = preset_help, out_help

    def add(self, parser: argparse.ArgumentParser) -> None:
        p = parser.add_argument_group("attack budget")
        p.add_argument("--preset", default="quick", help=self.preset_help)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--out", help=self.out_help)
        p.add_argument("--steps", type=int, help="override the preset's student training steps")
        p.add_argument("--pool", type=int, help="override the preset's number of queries")

    @staticmethod
    def kwargs(a) -> dict:
        return {"preset": a.preset, "seed": a.seed, "out": a.out, "steps": a.steps, "pool": a.pool}


class ShapeProfileArgs:
    """--min/--opt/--max: a TensorRT optimisation profile for the image input."""

    def add(self, parser: argparse.ArgumentParser) -> None:
        p = parser.add_argument_group("optimisation profile (TensorRT)")
        p.add_argument("--min", metavar="NxCxHxW", help="smallest input shape (default 1x3x32x32)")
        p.add_argument("--opt", metavar="NxCxHxW", help="shape TensorRT optimises for (default 1x3x256x256)")
        p.add_argument("--max", metavar="NxCxHxW", help="largest input shape (default 4x3x512x512)")


class TimingArgs:
    """--shape/--warmup/--iters/--threads: how a latency measurement runs (random input of one shape, interleaved
    rounds, ONNX Runtime's intra-op threads)."""

    def __init__(self, warmup: int, iters: int, what: str = "per model"):
        self.warmup, self.iters, self.what = warmup, iters, what

    def add(self, parser: argparse.ArgumentParser) -> None:
        p = parser.add_argument_group("timing")
        p.add_argument("--shape", default="1x3x256x256", metavar="NxCxHxW", help="input shape (default 1x3x256x256)")
        p.add_argument("--warmup", type=int, default=self.warmup,
                       help=f"untimed iterations {self.what} first (default {self.warmup})")
        p.add_argument("--iters", type=int, default=self.iters,
                       help=f"timed iterations {self.what} (default {self.iters})")
        p.add_argument("--threads", type=int, metavar="N",
                       help="ONNX Runtime intra-op threads (default: all CPUs, as a default session runs; 1 gives "
                            "steadier figures on a shared machine; TensorRT ignores it)")

    @staticmethod
    def kwargs(a) -> dict:
        return {"shape": a.shape, "warmup": a.warmup, "iters": a.iters, "threads": a.threads}


def add_groups(p: argparse.ArgumentParser, *groups) -> argparse.ArgumentParser:
    for g in groups:
        g.add(p)
    return p

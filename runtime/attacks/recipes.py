"""The attacks' recipes: the rungs (one registry, RUNGS) and the presets that size them.

A rung is one way to distil a student from the served model:
  output       the student regresses the teacher's outputs (L1).
  feature      also FitNets hints: 1x1 adapters align student layers to the teacher's exposed features (the tap
               outputs of a tap-defended model; for an inline-defended model the perturbed tensors the network
               consumes; for the clean model the same tensors, exposed with onnx-graphsurgeon).
  adaptive     knows ASVP is there and tries to undo it before distilling (runtime/attacks/adaptive.py): `feature`
               for tap placement, `output` for inline placement.
  fitnets-0.1, fitnets-1, fitnets-10, direct, staged
               `feature` with a changed recipe: hint weight 0.1 / 1 / 10; alignment without an adapter by a
               width-matched student; a feature stage (hints alone) then an output stage.
  larger       `output` with a larger student: the teacher's own architecture and width.
`asvp attack --kind ladder` runs the rungs that have a ladder position, in that order (runtime/attacks/ladder.py).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from asvp.errors import AsvpError
from asvp.runtime.evaluation.students import STUDENTS, TrainBudget


@dataclass(frozen=True)
class Rung:
    """One attack kind: what it distils from (`base`: output, feature, or adaptive = resolved by the placement),
    its place in the ladder (None: not a ladder rung), and the changes it makes to the preset's TrainBudget
    (runtime/evaluation/students.py) as (field, value) pairs."""

    name: str
    base: str
    ladder: int | None = None
    changes: tuple = ()

    def budget(self, preset_budget: TrainBudget) -> TrainBudget:
        """The preset's budget with this rung's changes."""
        return replace(preset_budget, **dict(self.changes)) if self.changes else preset_budget

    def base_kind(self, placement: str) -> str:
        """The distillation this rung does against a model with this placement (`output` or `feature`)."""
        return kind_for_placement(placement) if self.base == "adaptive" else self.base


RUNGS: dict[str, Rung] = {r.name: r for r in (
    Rung("output", "output", ladder=0),
    Rung("feature", "feature"),
    Rung("adaptive", "adaptive", ladder=6),
    Rung("fitnets-0.1", "feature", 1, (("hint_weight", 0.1),)),  # = `feature`, as a ladder rung
    Rung("fitnets-1", "feature", 2, (("hint_weight", 1.0),)),
    Rung("fitnets-10", "feature", 3, (("hint_weight", 10.0),)),
    Rung("direct", "feature", 4, (("hint_weight", 1.0), ("adapter", False))),  # a width-matched student, no adapter
    Rung("staged", "feature", 5, (("hint_weight", 1.0), ("feature_stage", 0.5))),  # hints alone, then outputs alone
    Rung("larger", "output", 7, (("student", "larger"),)),  # the teacher's own architecture and width
)}
KINDS = tuple(RUNGS)  # every attack kind, for argument checks and --help
LADDER_RUNGS = tuple(sorted((r.name for r in RUNGS.values() if r.ladder is not None), key=lambda n: RUNGS[n].ladder))
# The ladder's feature rungs and their budget changes (a view of RUNGS, for scripts that vary them).
FEATURE_RUNGS = {r.name: dict(r.changes) for r in RUNGS.values() if r.base == "feature" and r.changes}


def get_rung(kind: str) -> Rung:
    """The rung named `kind`; a one-line error naming the choices otherwise."""
    if kind not in RUNGS:
        raise AsvpError(f"unknown attack kind {kind!r}; choose one of: {', '.join(KINDS)}, ladder")
    return RUNGS[kind]


def kind_for_placement(placement: str) -> str:
    """The distillation that reaches what a placement perturbs: tap -> the exposed features, inline -> outputs."""
    return "feature" if placement == "tap" else "output"


@dataclass(frozen=True)
class Preset:
    name: str
    tasks: tuple
    pool: int  # number of queries (crops) the attacker sends
    crop: int  # side of the clean crop a query is made from (the query is its degraded version)
    train: TrainBudget
    noise_seeds: int = 2  # extra clean students (seeds + 1, + 2, ...) that measure seed-to-seed noise
    seeds: int = 1  # paired seeds when the caller does not say (--seeds)
    rungs: tuple = ()  # the ladder's rungs for this preset (empty: every rung, LADDER_RUNGS)
    val_frac: float = 0.0  # share of the queries held out of training: the validation split (convergence)
    convergence: int = 0  # > 1: the ladder also runs the output rung at this multiple of the steps
    device: str = "cpu"  # where students train: cpu | cuda | auto (CUDA when available)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tasks"] = list(self.tasks)
        d["rungs"] = list(self.rungs)
        d["train"] = self.train.to_dict()
        return d

    def with_(self, **changes) -> "Preset":
        return Preset(**{**{f: getattr(self, f) for f in self.__dataclass_fields__}, **changes})


# Wall times are measured in research/results/ladder-*.md (docs/protection.md "Presets").
PRESETS = {
    # one task, one seed: a smoke test of a single attack (~1 min), or of the ladder's cheap rungs
    "quick": Preset("quick", ("sr",), pool=96, crop=64, train=TrainBudget(steps=300, batch=8),
                    rungs=("output", "fitnets-1", "direct", "larger")),
    # every task and rung with 5 paired seeds, a validation split and a 2x-budget output rung, sized to <= 45 min
    # on 2 CPU cores
    "standard": Preset("standard", tuple(STUDENTS), pool=128, crop=48, train=TrainBudget(steps=240, batch=8),
                       noise_seeds=0, seeds=5, val_frac=0.125, convergence=2),
    # the long run: more queries, steps and seeds; students on CUDA when torch sees a GPU
    "thorough": Preset("thorough", tuple(STUDENTS), pool=512, crop=64, train=TrainBudget(steps=2000, batch=16),
                       noise_seeds=0, seeds=10, val_frac=0.125, convergence=2, device="auto"),
    # the earlier single-kind preset (kept: results in docs/protection.md were made with it)
    "full": Preset("full", tuple(STUDENTS), pool=256, crop=64, train=TrainBudget(steps=800, batch=8)),
}


def get_preset(name: str, steps: int | None = None, pool: int | None = None) -> Preset:
    """The named preset, with `steps` and `pool` replaced when given (checked)."""
    if name not in PRESETS:
        raise AsvpError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    p = PRESETS[name]
    if steps is not None:
        if not isinstance(steps, int) or steps < 1:
            raise AsvpError(f"steps must be >= 1, got {steps}")
        p = p.with_(train=TrainBudget(**{**asdict(p.train), "steps": steps}))
    if pool is not None:
        if not isinstance(pool, int) or pool < 2:
            raise AsvpError(f"pool must be >= 2 queries, got {pool}")
        p = p.with_(pool=pool)
    return p


def split_queries(queries: np.ndarray, val_frac: float) -> tuple[np.ndarray, np.ndarray | None]:
    """(training queries, validation queries or None): the last round(val_frac x P) queries are held out
    (at least 1 and leaving at least 2 to train on when val_frac > 0)."""
    if val_frac <= 0:
        return queries, None
    nv = min(max(1, int(round(val_frac * len(queries)))), len(queries) - 2)
    if nv < 1:
        return queries, None
    return queries[:-nv], queries[-nv:]

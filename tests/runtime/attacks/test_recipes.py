"""The attacks' recipes (runtime/attacks/recipes.py): one registry of rungs, from which the rest is derived."""
from __future__ import annotations

import pytest

from asvp.errors import AsvpError
from asvp.runtime.attacks.recipes import (FEATURE_RUNGS, KINDS, LADDER_RUNGS, PRESETS, RUNGS, get_preset, get_rung,
                                          kind_for_placement)
from asvp.runtime.evaluation.students import TrainBudget


def test_the_views_are_derived_from_the_registry():
    assert KINDS == tuple(RUNGS)
    assert LADDER_RUNGS == ("output", "fitnets-0.1", "fitnets-1", "fitnets-10", "direct", "staged", "adaptive",
                            "larger")
    assert set(FEATURE_RUNGS) == {"fitnets-0.1", "fitnets-1", "fitnets-10", "direct", "staged"}
    assert all(r in KINDS for p in PRESETS.values() for r in p.rungs)


def test_a_rung_changes_only_its_own_budget_fields():
    base = TrainBudget(steps=7, batch=3)
    assert RUNGS["output"].budget(base) is base
    staged = RUNGS["staged"].budget(base)
    assert (staged.steps, staged.batch, staged.hint_weight, staged.feature_stage) == (7, 3, 1.0, 0.5)
    assert RUNGS["larger"].budget(base).size == "larger" and RUNGS["direct"].budget(base).size == "wide"


@pytest.mark.parametrize("placement", ["tap", "inline"])
def test_the_adaptive_rung_follows_the_placement(placement):
    assert RUNGS["adaptive"].base_kind(placement) == kind_for_placement(placement)
    assert RUNGS["fitnets-1"].base_kind(placement) == "feature" and RUNGS["larger"].base_kind(placement) == "output"


def test_unknown_names_are_one_line_errors():
    with pytest.raises(AsvpError, match="unknown attack kind 'x'; choose one of: output, feature"):
        get_rung("x")
    with pytest.raises(AsvpError, match="unknown preset"):
        get_preset("nope")
    assert get_preset("quick", steps=9, pool=5).train.steps == 9

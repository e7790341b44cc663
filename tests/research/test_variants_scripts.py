"""research/variants_search.py and research/variants_ensemble_attack.py: the pieces that decide a verdict."""
from __future__ import annotations

import numpy as np
import pytest

from research import variants_ensemble_attack as ensemble
from research import variants_search as search


@pytest.mark.parametrize("t", range(8))
def test_dihedral_copies_are_undone_exactly(t):
    x = np.random.default_rng(t).random((2, 3, 4, 6))
    assert np.array_equal(ensemble.undo(ensemble.dihedral(x, t), t), x)
    assert t == 0 or not np.array_equal(ensemble.dihedral(x[:, :, :4, :4], t), x[:, :, :4, :4])


def test_configs_are_valid_and_keyed():
    for variant, (_, grid) in search.GRIDS.items():
        for s in grid:
            cfg = search.config_for(variant, s).validate()
            assert cfg.placement == "inline" and (cfg.key == search.KEY) == (variant != "paper")


def _row(defence, attacker, mean, lo, counts, td=0.05):
    return {"task": "sr", "defence": defence, "attacker": attacker, "teacher_drop_db": td, "mean": mean,
            "ci_low": lo, "ci_high": mean + 0.02, "counts": counts}


def test_a_configuration_protects_only_if_every_attacker_counts_at_low_teacher_cost():
    rows = [_row("a", "output", 0.3, 0.2, True), _row("a", "adaptive", 0.05, 0.01, False),
            _row("b", "output", 0.3, 0.2, True), _row("b", "direct", 0.2, 0.15, True),
            _row("c", "output", 0.3, 0.2, True, td=0.2)]
    v = {x["defence"]: x for x in search.verdicts(rows)}
    assert not v["a"]["protects"] and v["a"]["best_attacker"] == "adaptive"
    assert v["b"]["protects"] and v["b"]["best_mean"] == 0.2
    assert not v["c"]["protects"]  # the teacher pays more than 0.1 dB

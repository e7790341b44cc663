"""The attacker ladder's feature rungs (`asvp attack --kind fitnets-0.1|fitnets-1|fitnets-10|direct|staged`), on
quick budgets: each rung runs and records the recipe it used, the staged recipe really trains in two stages, and
direct alignment really has no adapter. Whether any rung breaks ASVP needs real budgets (docs/protection.md)."""
from __future__ import annotations

import json
import math

import pytest

from asvp import api
from asvp.cli import main
from asvp.config import AsvpConfig
from asvp.errors import AsvpError
from asvp.runtime.attacks.recipes import FEATURE_RUNGS, PRESETS, RUNGS, Preset
from asvp.runtime.evaluation.students import TrainBudget, build_student, n_params

QUICK = {"steps": 5, "pool": 16, "progress": False}


@pytest.fixture(scope="module")
def tap_models(exported, tmp_path_factory):
    clean = exported("sr")
    defended = tmp_path_factory.mktemp("ladder") / "sr.tap.onnx"
    api.defend(clean, defended, config=AsvpConfig(placement="tap"))
    return clean, str(defended)


@pytest.mark.parametrize("kind", list(FEATURE_RUNGS))
def test_every_rung_runs_and_records_its_recipe(tap_models, kind):
    clean, defended = tap_models
    (row,) = api.attack("sr", clean=clean, defended=defended, kind=kind, seed=0, **QUICK).tasks
    assert row["kind"] == kind and row["base_kind"] == "feature" and row["hint_layers"]
    for key, value in dict(RUNGS[kind].changes).items():
        assert row["budget"][key] == value
    assert math.isfinite(row["drops"]["student"]["db"])
    assert row["teacher"]["query_output_max_abs_diff"] == 0.0  # tap: same outputs, only the features differ
    wide = dict(RUNGS[kind].changes).get("adapter") is False
    assert row["student_model"]["params"] == n_params(build_student("sr", 0, wide=wide))


def test_unknown_kind_lists_the_ladder(capsys):
    assert main(["attack", "--task", "sr", "--kind", "fitnets-100"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(k in err for k in FEATURE_RUNGS)


# ---- the whole ladder (`--kind ladder`) ------------------------------------------------------------------------

TINY = Preset("tiny", ("sr",), pool=12, crop=32, train=TrainBudget(steps=4, batch=2), noise_seeds=0, seeds=2,
              rungs=("output", "fitnets-1", "larger"), val_frac=0.25, convergence=2)


def test_ladder_runs_every_rung_writes_one_table_and_resumes(tap_models, tmp_path, monkeypatch):
    from asvp.runtime.attacks import distill as distill_mod

    monkeypatch.setitem(PRESETS, "tiny", TINY)
    clean, defended = tap_models
    out = tmp_path / "ladder"
    res = api.attack("sr", clean=clean, defended=defended, kind="ladder", preset="tiny", out=out, progress=False)
    assert [r["rung"] for r in res.rows] == ["output", "fitnets-1", "larger"]
    by = {r["rung"]: r for r in res.rows}
    assert all(r["n"] == 2 and r["verdict"] in ("counts", "no") for r in res.rows)
    assert by["output"]["answers_identical"] and by["output"]["mean_drop_db"] == 0.0  # tap: same outputs
    assert by["larger"]["student_params"] == by["larger"]["teacher_params"] > by["output"]["student_params"]
    (best,) = res.best
    assert best["best_rung_clean"] in by and math.isfinite(best["best_attacker_drop_db"])
    (conv,) = res.convergence
    assert [b["steps"] for b in conv["budgets"]] == [4, 8] and conv["budgets"][0]["judged"] == 2
    (diag,) = res.diagnostic
    assert diag["predicted"] in ("absorbable", "not absorbable") and diag["agrees"] in (True, False)
    md = (out / "report.md").read_text()
    assert "| sr | fitnets-1 |" in md and "Convergence" in md and "Absorbability diagnostic" in md
    assert (out / "ladder-drops.png").stat().st_size > 0
    data = json.loads((out / "report.json").read_text())["sections"]["ladder"]
    assert len(data["rows"]) == 3

    def no_training(*a, **k):
        raise AssertionError("a finished ladder must not train again")
    monkeypatch.setattr(distill_mod, "train_student", no_training)
    again = api.attack("sr", clean=clean, defended=defended, kind="ladder", preset="tiny", out=out, progress=False)
    assert again.rows == res.rows

    # a rung that cannot apply to a model (dehaze's direct rung: no width-matched layer) is a row, not a crash
    from asvp.runtime.attacks import ladder as ladder_mod
    real = ladder_mod.attack_one

    def refuse_fitnets(plan, task, kind, *a, **k):
        if kind == "fitnets-1":
            raise AsvpError("no student layer fits")
        return real(plan, task, kind, *a, **k)
    monkeypatch.setattr(ladder_mod, "attack_one", refuse_fitnets)
    na = api.attack("sr", clean=clean, defended=defended, kind="ladder", preset="tiny", out=out, progress=False)
    assert [r["verdict"] for r in na.rows][1] == "n/a" and na.rows[0] == res.rows[0]
    assert "n/a: no student layer fits" in (out / "report.md").read_text()


def test_ladder_verdict_comes_from_the_interval():
    from asvp.runtime.attacks.ladder import verdict
    from asvp.runtime.evaluation.stats import paired_drop

    def row(clean, defended):
        return {"paired": {"student": paired_drop(clean, defended).to_dict()}}

    assert verdict(row([20.3, 20.31, 20.29, 20.3, 20.32], [20.0] * 5)) == "counts"  # CI excludes 0, mean 0.3
    assert verdict(row([20.3, 19.8, 20.5, 19.9, 20.1], [20.0] * 5)) == "no"  # same mean size, CI straddles 0
    assert verdict(row([20.05, 20.06, 20.05, 20.04, 20.05], [20.0] * 5)) == "no"  # real but below 0.1 dB
    assert verdict({"paired": None, "seed_noise_db": None}) == "inconclusive"  # one seed, no noise estimate
    one = {"paired": None, "seed_noise_db": 0.2, "noise_margin_db": 0.3,
           "drops": {"student": {"db": 0.5, "ssim_pct": 1.0}}}
    assert verdict(one) == "counts (margin)"  # one seed with measured noise: the margin rule, marked
    assert verdict({**one, "drops": {"student": {"db": 0.2, "ssim_pct": 0.4}}}) == "no (margin)"


def test_single_seed_without_a_noise_estimate_is_inconclusive():
    from asvp.runtime.attacks.claims import claims, drop_counts

    row = {"task": "a", "drops": {"teacher": {"db": 0.0, "ssim_pct": 0.0}, "student": {"db": 0.5, "ssim_pct": 1.0}},
           "seed_noise_db": None, "noise_margin_db": 0.1, "paired": None}
    assert not drop_counts(row)
    assert "inconclusive" in claims([row])[1]["evidence"]
    assert drop_counts({**row, "seed_noise_db": 0.2, "noise_margin_db": 0.3})  # measured noise: margin rule

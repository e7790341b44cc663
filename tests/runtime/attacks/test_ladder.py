"""The attacker ladder's feature rungs (`asvp attack --kind fitnets-0.1|fitnets-1|fitnets-10|direct|staged`), on
quick budgets: each rung runs and records the recipe it used, the staged recipe really trains in two stages, and
direct alignment really has no adapter. Whether any rung breaks ASVP needs real budgets (docs/protection.md)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from asvp import api
from asvp.cli import main
from asvp.config import AsvpConfig
from asvp.errors import AsvpError
from asvp.runtime.attacks.attack import LADDER, PRESETS, Preset, make_queries
from asvp.runtime.attacks.students import (STUDENTS, WIDE_STUDENTS, TrainBudget, build_student, n_params,
                                           train_student)

QUICK = {"steps": 5, "pool": 16, "progress": False}


@pytest.fixture(scope="module")
def tap_models(exported, tmp_path_factory):
    clean = exported("sr")
    defended = tmp_path_factory.mktemp("ladder") / "sr.tap.onnx"
    api.defend(clean, defended, config=AsvpConfig(placement="tap"))
    return clean, str(defended)


@pytest.mark.parametrize("kind", list(LADDER))
def test_every_rung_runs_and_records_its_recipe(tap_models, kind):
    clean, defended = tap_models
    (row,) = api.attack("sr", clean=clean, defended=defended, kind=kind, seed=0, **QUICK).tasks
    assert row["kind"] == kind and row["base_kind"] == "feature" and row["hint_layers"]
    for key, value in LADDER[kind].items():
        assert row["budget"][key] == value
    assert math.isfinite(row["drops"]["student"]["db"])
    assert row["teacher"]["query_output_max_abs_diff"] == 0.0  # tap: same outputs, only the features differ
    wide = LADDER[kind].get("adapter") is False
    assert row["student_model"]["params"] == n_params(build_student("sr", 0, wide=wide))


def test_the_original_recipe_keeps_its_budget_record():
    """The recipe variants are recorded only when used, so earlier results and cache keys stay valid."""
    assert TrainBudget().to_dict() == {"steps": 300, "batch": 8, "lr": 2e-3, "hint_weight": 0.1}
    assert TrainBudget(adapter=False, feature_stage=0.5).to_dict()["feature_stage"] == 0.5


def _features(task: str, n: int, channels: int, hw: tuple) -> tuple[np.ndarray, list[dict]]:
    g = torch.Generator().manual_seed(0)
    f = torch.randn(n, channels, *hw, generator=g).numpy()
    return f, [{"name": "t", "hw": hw, "depth": 0.5}]


def test_staged_recipe_trains_only_on_hints_during_the_feature_stage():
    """feature_stage=1: every step is a hint step, so the layers after the hint point keep their initial weights."""
    q = make_queries("sr", 8, 32, 0)
    y = np.zeros((8, 3, 32, 32), np.float32)
    f, meta = _features("sr", 8, 32, tuple(q.shape[-2:]))
    model, rec = train_student("sr", q, y, seed=0, budget=TrainBudget(steps=3, batch=2, feature_stage=1.0),
                               feats=[f], feat_meta=meta, progress=False)
    hinted = rec["hint_layers"][0]["student"]
    fresh = dict(build_student("sr", 0).named_parameters())
    trained = dict(model.named_parameters())
    assert not torch.equal(trained["head.weight"], fresh["head.weight"])  # before the hint point: trained
    tail = [n for n in trained if n.startswith("upsample")]
    assert tail and all(torch.equal(trained[n], fresh[n]) for n in tail), hinted  # after it: untouched
    assert rec["final_loss"]["l1"] > 0 and rec["budget"]["feature_stage"] == 1.0


def test_direct_alignment_has_no_adapter_and_needs_a_width_matched_layer():
    q = make_queries("sr", 4, 32, 0)
    y = np.zeros((4, 3, 32, 32), np.float32)
    budget = TrainBudget(steps=2, batch=2, adapter=False)
    f, meta = _features("sr", 4, WIDE_STUDENTS["sr"][1]["ch"], tuple(q.shape[-2:]))
    model, rec = train_student("sr", q, y, seed=0, budget=budget, feats=[f], feat_meta=meta, progress=False)
    assert n_params(model) == n_params(build_student("sr", 0, wide=True)) > n_params(build_student("sr", 0))
    assert rec["student"]["kwargs"]["ch"] == WIDE_STUDENTS["sr"][1]["ch"] != STUDENTS["sr"][1]["ch"]
    f7, meta7 = _features("sr", 4, 7, tuple(q.shape[-2:]))  # no student layer has 7 channels
    with pytest.raises(AsvpError, match="without an adapter needs a student layer with 7 channels"):
        train_student("sr", q, y, seed=0, budget=budget, feats=[f7], feat_meta=meta7, progress=False)


def test_unknown_kind_lists_the_ladder(capsys):
    assert main(["attack", "--task", "sr", "--kind", "fitnets-100"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(k in err for k in LADDER)


# ---- the larger rung and the whole ladder (`--kind ladder`) --------------------------------------------------

def test_larger_rung_is_the_teachers_architecture_and_trains():
    from asvp.tasks import get_task

    budget = TrainBudget(steps=3, batch=2, student="larger")
    assert budget.size == "larger" and budget.to_dict()["student"] == "larger"
    big, small = build_student("sr", 0, "larger"), build_student("sr", 0)
    assert n_params(big) == n_params(get_task("sr").build()) > n_params(small)
    q = make_queries("sr", 6, 32, 0)
    y = np.zeros((6, 3, 32, 32), np.float32)
    model, rec = train_student("sr", q[:4], y[:4], seed=0, budget=budget, progress=False, val=(q[4:], y[4:]))
    assert rec["student"]["params"] == n_params(big) and rec["final_loss"]["l1"] > 0
    assert [s for s, _ in rec["val_curve"]] == [1, 2, 3] and all(v > 0 for _, v in rec["val_curve"])


TINY = Preset("tiny", ("sr",), pool=12, crop=32, train=TrainBudget(steps=4, batch=2), noise_seeds=0, seeds=2,
              rungs=("output", "fitnets-1", "larger"), val_frac=0.25, convergence=2)


def test_ladder_runs_every_rung_writes_one_table_and_resumes(tap_models, tmp_path, monkeypatch):
    from asvp.runtime.attacks import attack as attack_mod

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
    monkeypatch.setattr(attack_mod, "train_student", no_training)
    again = api.attack("sr", clean=clean, defended=defended, kind="ladder", preset="tiny", out=out, progress=False)
    assert again.rows == res.rows

    # a rung that cannot apply to a model (dehaze's direct rung: no width-matched layer) is a row, not a crash
    from asvp.runtime.attacks import ladder as ladder_mod
    real = ladder_mod._attack_one

    def refuse_fitnets(*a, **k):
        if a[7] == "fitnets-1":
            raise AsvpError("no student layer fits")
        return real(*a, **k)
    monkeypatch.setattr(ladder_mod, "_attack_one", refuse_fitnets)
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
    from asvp.runtime.attacks.attack import claims, drop_counts

    row = {"task": "a", "drops": {"teacher": {"db": 0.0, "ssim_pct": 0.0}, "student": {"db": 0.5, "ssim_pct": 1.0}},
           "seed_noise_db": None, "noise_margin_db": 0.1, "paired": None}
    assert not drop_counts(row)
    assert "inconclusive" in claims([row])[1]["evidence"]
    assert drop_counts({**row, "seed_noise_db": 0.2, "noise_margin_db": 0.3})  # measured noise: margin rule


def test_device_selection():
    from asvp.runtime.attacks.students import resolve_device

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(AsvpError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(AsvpError, match="no CUDA device"):
            resolve_device("cuda")

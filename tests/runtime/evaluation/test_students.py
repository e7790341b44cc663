"""Distilled students (runtime/evaluation/students.py): the recipe variants the attacker ladder uses (staged,
direct, larger), the budget record, and the device choice."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from asvp.errors import AsvpError
from asvp.runtime.evaluation.served import make_queries
from asvp.runtime.evaluation.students import (STUDENTS, WIDE_STUDENTS, TrainBudget, build_student, n_params,
                                              resolve_device, train_student)
from asvp.tasks import get_task


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


def test_larger_rung_is_the_teachers_architecture_and_trains():
    budget = TrainBudget(steps=3, batch=2, student="larger")
    assert budget.size == "larger" and budget.to_dict()["student"] == "larger"
    big, small = build_student("sr", 0, "larger"), build_student("sr", 0)
    assert n_params(big) == n_params(get_task("sr").build()) > n_params(small)
    q = make_queries("sr", 6, 32, 0)
    y = np.zeros((6, 3, 32, 32), np.float32)
    model, rec = train_student("sr", q[:4], y[:4], seed=0, budget=budget, progress=False, val=(q[4:], y[4:]))
    assert rec["student"]["params"] == n_params(big) and rec["final_loss"]["l1"] > 0
    assert [s for s, _ in rec["val_curve"]] == [1, 2, 3] and all(v > 0 for _, v in rec["val_curve"])



def test_device_selection():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(AsvpError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(AsvpError, match="no CUDA device"):
            resolve_device("cuda")

"""Distillation attacks (`asvp attack`, runtime/attack.py) and the sweep, on tiny budgets.

What a tiny run can show: the pipeline finishes, the numbers are finite, the report files exist, the same seed
gives the same student, and tap placement leaves the served output exactly unchanged. Whether ASVP protects
anything needs the real presets (docs/protection.md), not these tests.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from asvp import api
from asvp.cli import main
from asvp.config import AsvpConfig

TINY = {"steps": 12, "pool": 12, "progress": False}


@pytest.fixture(scope="module")
def tap_models(exported, tmp_path_factory):
    if not hasattr(api, "defend"):
        pytest.skip("api.defend is not available in this build")
    clean = exported("sr")
    defended = tmp_path_factory.mktemp("attack") / "sr.tap.onnx"
    api.defend(clean, defended, config=AsvpConfig(placement="tap"))
    return clean, str(defended)


@pytest.fixture(scope="module")
def tiny_run(tap_models, tmp_path_factory):
    clean, defended = tap_models
    out = tmp_path_factory.mktemp("attack-report")
    res = api.attack("sr", clean=clean, defended=defended, kind="feature", seed=3, out=out, **TINY)
    return res, out


def test_tiny_attack_finishes_with_finite_metrics_and_report(tiny_run):
    res, out = tiny_run
    (row,) = res.tasks
    for who in ("clean", "defended"):
        for m in (row["teacher"][who], row["students"][who]):
            assert math.isfinite(m["psnr"]) and 0 < m["ssim"] <= 1
    assert math.isfinite(row["drops"]["student"]["db"])
    assert row["nodes"] and row["hint_layers"]  # the feature attack did align hint layers
    assert (out / "report.json").exists() and (out / "report.md").exists()
    assert (out / "attack-feature-drops.png").stat().st_size > 0
    data = json.loads((out / "report.json").read_text())["sections"]["attack-feature"]
    assert data["tasks"][0]["task"] == "sr" and data["claims"]
    assert "| sr |" in (out / "report.md").read_text()


def test_same_seed_same_clean_student(tiny_run, tap_models):
    res, _ = tiny_run
    clean, defended = tap_models
    again = api.attack("sr", clean=clean, defended=defended, kind="feature", seed=3, **TINY)
    assert again.tasks[0]["students"]["clean"] == res.tasks[0]["students"]["clean"]


def test_tap_placement_leaves_the_output_exactly_unchanged(tiny_run):
    row = tiny_run[0].tasks[0]
    assert row["placement"] == "tap"
    assert row["teacher"]["query_output_max_abs_diff"] == 0.0
    assert row["teacher"]["heldout_output_max_abs_diff"] == 0.0
    assert row["drops"]["teacher"]["db"] == 0.0 <= 0.1


def test_rerun_with_same_out_reuses_the_result(tiny_run, tap_models):
    res, out = tiny_run
    clean, defended = tap_models
    saved = out / "sr" / "result-feature.json"
    before = saved.stat().st_mtime_ns
    again = api.attack("sr", clean=clean, defended=defended, kind="feature", seed=3, out=out, **TINY)
    assert again.tasks[0]["students"] == res.tasks[0]["students"]
    assert saved.stat().st_mtime_ns == before  # reused, not recomputed


def test_adaptive_inversion_undoes_asvp_with_known_config():
    from asvp.method import asvp_exact
    from asvp.runtime.attacks.attack import invert_asvp, rel_err

    g = torch.Generator().manual_seed(0)
    clean = torch.randn(3, 16, 8, 8, generator=g) * torch.linspace(3, 0.1, 16).reshape(1, 16, 1, 1)
    for cfg in (AsvpConfig(h=1.5, k=4, tau=0.9), AsvpConfig(h=3.0, k=3, k_mode="fixed")):
        received = asvp_exact(clean, cfg).numpy()
        inverted, ks = invert_asvp(received, cfg)
        assert rel_err(received, clean.numpy()) > 0.05
        assert rel_err(inverted, clean.numpy()) < 1e-5
        assert ((1 <= ks) & (ks <= cfg.k)).all()


@pytest.mark.parametrize("argv, needle", [
    (["attack", "--task", "nope"], "unknown task"),
    (["attack", "--task", "sr", "--clean", "/nonexistent/model.onnx"], "not found"),
    (["attack", "--task", "sr", "--kind", "telepathy"], "unknown attack kind"),
    (["sweep", "--task", "sr", "--placement", "sideways"], "unknown placement"),
])
def test_bad_inputs_exit_nonzero_with_one_line(argv, needle, capsys):
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert len(err.splitlines()) == 1 and needle in err


def test_claims_are_computed_from_the_numbers():
    from asvp.runtime.attacks.attack import claims

    def row(task, t_db, s_db, noise):
        return {"task": task, "drops": {"teacher": {"db": t_db, "ssim_pct": 0.0},
                                        "student": {"db": s_db, "ssim_pct": 10.0 * s_db}},
                "noise_margin_db": noise}

    good = claims([row("a", 0.0, 3.0, 0.2)])
    assert all(c["holds"] for c in good[:4])
    bad = claims([row("a", 0.5, 0.05, 0.2)])
    assert not any(c["holds"] for c in bad)
    assert np.isfinite([len(c["evidence"]) for c in bad]).all()


def test_tiny_sweep_reports_and_names_the_best_configuration(tmp_path):
    if not hasattr(api, "defend"):
        pytest.skip("api.defend is not available in this build")
    out = tmp_path / "sweep"
    res = api.sweep(["sr"], h=[1.5], k=[4], placement=["tap"], steps=6, pool=8, out=out, progress=False)
    (row,) = res.rows
    assert row["placement"] == "tap" and row["kind"] == "feature"
    assert row["teacher_drop_db"] == 0.0 and math.isfinite(row["student_drop_db"])
    ab = row["absorbability"]  # the diagnostic at the defended node, on the attacker's queries
    assert 0.0 <= ab["unexplained"] <= ab["unexplained_heldout"] + 0.05 and 0.0 <= ab["subspace_variation"] <= 1.0
    assert ab["predicted"] in ("absorbable", "not absorbable")
    assert res.best_per_task["sr"]["h"] == 1.5  # the only configuration, and it keeps the teacher unchanged
    assert res.best is not None and res.best["placement"] == "tap"
    assert (out / "sweep-scatter.png").stat().st_size > 0 and "| sr |" in (out / "report.md").read_text()

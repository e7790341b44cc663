"""Distillation attacks (`asvp attack`, runtime/attacks/run.py and task.py) and the sweep, on tiny budgets.

What a tiny run can show: the pipeline finishes, the numbers are finite, the report files exist, the same seed
gives the same student, and tap placement leaves the served output exactly unchanged. Whether ASVP protects
anything needs the real presets (docs/protection.md), not these tests.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from asvp import api
from asvp.cli import main
from asvp.config import AsvpConfig

TINY = {"steps": 12, "pool": 12, "progress": False}


@pytest.fixture(scope="module")
def tap_models(exported, tmp_path_factory):
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
    assert row["drops"]["teacher"]["db"] == 0.0
    assert tiny_run[0].claims[0]["holds"]  # so the "negligible teacher drop" claim holds


def test_rerun_with_same_out_reuses_the_result(tiny_run, tap_models):
    res, out = tiny_run
    clean, defended = tap_models
    saved = out / "sr" / "result-feature.json"
    before = saved.stat().st_mtime_ns
    again = api.attack("sr", clean=clean, defended=defended, kind="feature", seed=3, out=out, **TINY)
    assert again.tasks[0]["students"] == res.tasks[0]["students"]
    assert saved.stat().st_mtime_ns == before  # reused, not recomputed


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


def test_tiny_sweep_reports_and_names_the_best_configuration(tmp_path):
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


PAIRED = {"steps": 5, "pool": 16, "progress": False}


def test_paired_seeds_share_seeds_and_report_an_interval(tap_models):
    clean, defended = tap_models
    res = api.attack("sr", clean=clean, defended=defended, kind="feature", seed=1, seeds=3, **PAIRED)
    (row,) = res.tasks
    p = row["paired"]
    assert p["seeds"] == [1, 2, 3] and res.seeds == 3
    assert p["per_seed"][0]["clean"] == row["students"]["clean"]  # the first pair is the single-seed result
    assert p["per_seed"][0]["defended"] == row["students"]["defended"]
    diffs = [q["clean"]["psnr"] - q["defended"]["psnr"] for q in p["per_seed"]]
    s = p["student"]
    assert s["n"] == 3 and s["diffs"] == pytest.approx(diffs) and s["mean"] == pytest.approx(np.mean(diffs))
    assert s["ci_low"] <= s["mean"] <= s["ci_high"]
    # the noise students (seeds 2, 3) are the clean students of the pairs: trained once, same numbers
    assert [o["psnr"] for o in row["clean_students_other_seeds"]] == [q["clean"]["psnr"] for q in p["per_seed"][1:]]
    claim = next(c for c in res.claims if c["claim"].startswith("students distilled"))
    assert "CI" in claim["evidence"] and "n=3" in claim["evidence"]
    assert "paired student drop" in "\n".join(res.summary_lines())


def test_paired_output_students_of_a_tap_model_are_identical_so_nothing_counts(tap_models):
    """Tap placement leaves the outputs unchanged: every paired difference of output students is exactly 0."""
    clean, defended = tap_models
    res = api.attack("sr", clean=clean, defended=defended, kind="output", seed=0, seeds=2, **PAIRED)
    s = res.tasks[0]["paired"]["student"]
    assert s["diffs"] == [0.0, 0.0] and s["ci_low"] == s["ci_high"] == 0.0 and not s["counts"]
    assert not next(c for c in res.claims if c["claim"].startswith("students distilled"))["holds"]


@pytest.mark.parametrize("argv, needle", [
    (["attack", "--task", "sr", "--seeds", "0"], "seeds must be"),
    (["attack", "--task", "sr", "--interval", "jackknife"], "unknown interval"),
])
def test_bad_paired_options_exit_2_with_one_line(argv, needle, capsys):
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and needle in err

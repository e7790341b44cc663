"""research/fingerprint_budget.py: the paired beta, the per-budget summary and the Markdown are computed from the
students' rows; bad arguments are one-line errors; a tiny run goes through the whole pipeline."""
from __future__ import annotations

import json

import numpy as np
import pytest

from research import fingerprint_budget as fb


def test_paired_beta_is_the_share_of_the_served_change():
    rng = np.random.default_rng(0)
    d = rng.standard_normal((2, 3, 8, 8))
    clean = rng.standard_normal((2, 3, 8, 8))
    assert fb.paired_beta(clean + 0.4 * d, clean, d) == pytest.approx(0.4)
    other = rng.standard_normal((2, 3, 8, 8))
    other -= d * np.sum(other * d) / np.sum(d * d)  # orthogonal to the mark: adds nothing
    assert fb.paired_beta(clean + other, clean, d) == pytest.approx(0.0, abs=1e-12)


def _entry():
    twins = [{"seed": s, "c": c, "p": 0.3, "flagged": False} for s, c in enumerate((0.1, -0.2, 0.0))]
    budgets = [{"max_drop_db": d, "strength_db": 50.0 - 10 * d, "eps": d, "heldout_drop_db": d / 2,
                "students": [{"seed": s, "c": c, "p": p, "flagged": p < 0.01, "beta": b}
                             for s, (c, p, b) in enumerate(rows)]}
               for d, rows in ((0.05, ((0.05, 0.4, 0.3), (0.3, 0.05, 0.9), (-0.1, 0.7, 0.1))),
                               (0.5, ((0.6, 1e-4, 0.5), (0.7, 1e-5, 0.6), (0.5, 0.002, 0.55))))]
    return {"task": "sr", "key_dim": 27, "node": "/Add", "teacher_psnr": 29.0, "twins": twins, "budgets": budgets,
            "seconds": 10.0}


def test_summary_counts_flags_auc_against_the_twins_and_beta():
    e = _entry()
    weak, strong = (fb.summary(e, b) for b in e["budgets"])
    assert (weak["flagged"], weak["n"]) == (0, 3) and (strong["flagged"], strong["n"]) == (3, 3)
    assert weak["auc"] == pytest.approx(6 / 9) and strong["auc"] == 1.0  # 0.05 beats the twins 0.0 and -0.2 only
    assert strong["beta_median"] == pytest.approx(0.55) and weak["beta"] == [0.3, 0.9, 0.1]


def test_render_has_one_row_per_task_and_budget():
    data = {"args": {"key": "k", "seeds": 3, "pool": 96, "steps": 300, "budgets": [0.05, 0.5]}, "written": "now",
            "commit": "abc", "command": "python x", "tasks": {"sr": _entry()}}
    md = fb.render(data)
    rows = [x for x in md.splitlines() if x.startswith("| sr |")]
    assert len(rows) == 2 and "| 0.05 | +0.0250 | 49.5 | 0/3 | 0.667 |" in rows[0] and "| 3/3 | 1.000 |" in rows[1]
    assert rows[0].endswith("| 0/3 |") and "`/Add` (27 key dimensions)" in md


@pytest.mark.parametrize("args, message", [
    (["--tasks", "nope"], "--tasks: choose from"),
    (["--budgets", "0.05,x"], "not a comma-separated list"),
    (["--budgets", "0,0.5"], "max drop must be in (0, 1] dB"),
    (["--budgets", "0.5,2"], "max drop must be in (0, 1] dB"),
    (["--budgets", "0.2,0.2"], "each teacher budget once"),
    (["--seeds", "1"], "--seeds must be >= 2"),
    (["--key", "short"], "key"),
])
def test_bad_arguments_are_one_line_errors(args, message, tmp_path, capsys):
    assert fb.main(args + ["--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not list(tmp_path.iterdir())


@pytest.mark.slow
def test_a_tiny_run_writes_json_and_markdown(tmp_path):
    out = tmp_path / "r"
    assert fb.main(["--tasks", "sr", "--budgets", "0.05,0.5", "--seeds", "2", "--pool", "8", "--steps", "2",
                    "--out", str(out)]) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    e = data["tasks"]["sr"]
    assert [b["max_drop_db"] for b in e["budgets"]] == [0.05, 0.5] and len(e["twins"]) == 2
    weak, strong = e["budgets"]
    assert strong["eps"] > weak["eps"] and strong["strength_db"] < weak["strength_db"]  # a stronger mark, same key
    assert all(np.isfinite(r["beta"]) and 0 <= r["p"] <= 1 for b in e["budgets"] for r in b["students"])
    assert out.with_suffix(".md").read_text().count("| sr |") == 2

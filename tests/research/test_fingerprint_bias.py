"""research/fingerprint_bias.py: the summary and the Markdown come from the students' rows; bad arguments are
one-line errors; a tiny run goes through the whole pipeline (both key spaces, one key)."""
from __future__ import annotations

import json

import pytest

from research import fingerprint_bias as fbias


def _row(space, marked, twins):
    return {"key": "fingerprint-eval-key-0", "space": space, "key_dim": 27 if space == "full" else 13, "eps": 0.1,
            "strength_db": 50.0, "heldout_drop_db": 0.02,
            "marked": [{"seed": s, "c": c, "p": p} for s, (c, p) in enumerate(marked)],
            "twins": [{"seed": s, "c": c, "p": p} for s, (c, p) in enumerate(twins)]}


def test_summary_and_render_count_flags_and_auc_per_space():
    twins = ((0.1, 0.3), (-0.2, 0.8), (0.0, 0.5))
    full = _row("full", ((0.05, 0.4), (0.3, 0.05), (-0.1, 0.7)), twins)
    bias = _row("bias", ((0.6, 1e-4), (0.7, 1e-5), (0.2, 0.2)), twins)
    s = fbias.summary(full)
    assert (s["flagged"], s["n"], s["twins_flagged"]) == (0, 3, 0) and s["auc"] == pytest.approx(6 / 9)
    assert fbias.summary(bias)["flagged"] == 2 and fbias.summary(bias)["auc"] == 1.0
    data = {"args": {"keys": ["fingerprint-eval-key-0"], "bias_students": 16, "seeds": 3, "pool": 96, "steps": 300},
            "written": "now", "commit": "abc", "command": "python x",
            "tasks": {"derain": {"task": "derain", "teacher_psnr": 33.4, "bias": {"students": 16}, "rows": [full, bias],
                                 "seconds": 5.0}}}
    md = fbias.render(data)
    rows = [x for x in md.splitlines() if x.startswith("| derain |")]
    assert len(rows) == 2 and "| full (27) |" in rows[0] and "| 2/3 | 0/3 | 1.000 |" in rows[1]
    assert "full: 0/3 marked students flagged, twins 0/3; bias: 2/3 marked students flagged, twins 0/3" in md


@pytest.mark.parametrize("args, message", [
    (["--tasks", "nope"], "--tasks: choose from"),
    (["--keys", "0,x"], "not a comma-separated list"),
    (["--keys", "1,1"], "each key once"),
    (["--bias-students", "0"], "--bias-students >= 1"),
    (["--seeds", "1"], "--seeds must be >= 2"),
])
def test_bad_arguments_are_one_line_errors(args, message, tmp_path, capsys):
    assert fbias.main(args + ["--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not list(tmp_path.iterdir())


@pytest.mark.slow
def test_a_tiny_run_writes_json_and_markdown(tmp_path):
    out = tmp_path / "r"
    assert fbias.main(["--tasks", "sr", "--keys", "0", "--bias-students", "2", "--seeds", "2", "--pool", "8",
                       "--steps", "2", "--out", str(out)]) == 0
    e = json.loads(out.with_suffix(".json").read_text())["tasks"]["sr"]
    assert [r["space"] for r in e["rows"]] == ["full", "bias"] and e["bias"]["students"] == 2
    full, bias = e["rows"]
    assert bias["key_dim"] == full["key_dim"] - round(full["key_dim"] / 2)
    assert all(0 <= r["p"] <= 1 for row in e["rows"] for r in row["marked"] + row["twins"])
    assert full["twins"] != bias["twins"]  # the same twins, tested in two key spaces
    assert out.with_suffix(".md").read_text().count("| sr |") == 2
    # one report from two runs: the tasks are joined; the same task twice or other settings are refused
    other = json.loads(out.with_suffix(".json").read_text())
    other["tasks"] = {"derain": {**e, "task": "derain"}}
    (tmp_path / "o.json").write_text(json.dumps(other))
    assert fbias.main(["--merge", str(out.with_suffix(".json")), str(tmp_path / "o.json"), "--out", str(tmp_path / "m")]) == 0
    merged = json.loads((tmp_path / "m.json").read_text())
    assert list(merged["tasks"]) == ["sr", "derain"] and " ; " in merged["command"]
    assert fbias.main(["--merge", str(out.with_suffix(".json")), str(out.with_suffix(".json")), "--out",
                       str(tmp_path / "m2")]) == 2
    other["args"]["seeds"] = 3
    (tmp_path / "o.json").write_text(json.dumps(other))
    assert fbias.main(["--merge", str(out.with_suffix(".json")), str(tmp_path / "o.json"), "--out", str(tmp_path / "m2")]) == 2
    assert not list(tmp_path.glob("m2*"))

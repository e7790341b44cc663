"""research/fingerprint_eval.py: the verdict on the targets and the rendering are computed, not written in."""
import math
import subprocess
import sys
from pathlib import Path

import pytest

from research import fingerprint_eval as fe

ROOT = Path(__file__).resolve().parents[2]


def script(*args: str) -> subprocess.CompletedProcess:
    """`python -m research.fingerprint_eval ARGS` from the repository root."""
    return subprocess.run([sys.executable, "-m", "research.fingerprint_eval", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def _entry(pos_c, neg_c, drop, flagged_neg=0):
    rows = [{"name": f"p{i}", "label": "positive", "c": c, "p": 1e-5, "flagged": True, "beta": 1.0, "psnr": 28.0}
            for i, c in enumerate(pos_c)]
    rows += [{"name": f"n{i}", "label": "negative", "c": c, "p": 0.001 if i < flagged_neg else 0.5,
              "flagged": i < flagged_neg, "beta": 0.0, "psnr": 28.0} for i, c in enumerate(neg_c)]
    return {"profile": "cpu", "key_dim": 27, "rows": rows, "skipped": [], "references": ["r"], "seconds": 1.0,
            "mark": {"node": "/Add", "m": 8, "eps": 0.1, "strength_db": 50.0, "cost": None},
            "teacher_psnr": {"clean": 29.0, "marked": 29.0 - drop}, "teacher_drop_db": drop,
            "null_random_keys": {"count": 10, "fpr_at_0.01": 0.0, "fpr_at_0.05": 0.0, "ks_max_gap": 0.1}}


def test_targets_need_auc_fpr_and_the_teacher_budget():
    good = _entry([0.8, 0.7], [0.1, -0.2, 0.0], 0.03)
    assert fe.summarize(good)["met"] and fe.summarize(good)["auc"] == 1.0
    assert not fe.summarize(_entry([0.8, 0.7], [0.1, -0.2, 0.0], 0.06))["met"]  # over the teacher's budget
    assert not fe.summarize(_entry([0.8, 0.05], [0.1, -0.2, 0.0], 0.03))["met"]  # AUC 0.83
    assert not fe.summarize(_entry([0.8, 0.7], [0.1, -0.2, 0.0], 0.03, flagged_neg=1))["met"]  # a false positive
    md = fe.render({"tasks": {"sr": good, "dehaze": _entry([0.1], [0.2], 0.03)}, "written": "now"})
    assert "| sr |" in md and "| met |" in md and "NOT met" in md


def test_rates_and_auc():
    lo, hi = fe.wilson(0, 10)
    assert lo == 0.0 and 0.25 < hi < 0.32
    assert fe.auc([1.0], [1.0]) == 0.5 and math.isnan(fe.auc([], [1.0]))


def test_flags_by_budget_are_counted_per_budget():
    e = _entry([0.8, 0.7, 0.6], [0.1], 0.03)
    for row, (budget, flagged) in zip(e["rows"], [("quick", False), ("quick", True), ("long", True)]):
        row.update(budget=budget, flagged=flagged)
    md = fe.render({"tasks": {"sr": e}, "written": "now"})
    line = next(x for x in md.splitlines() if x.startswith("| sr | 1/2"))
    assert line.split(" | ")[2] == "-" and line.rstrip(" |").endswith("1/1 (p 1e-05)")  # no full-budget arm: "-"


def test_add_refuses_a_task_without_a_recorded_entry(tmp_path):
    out = tmp_path / "fp.json"
    out.write_text('{"tasks": {}}')
    proc = script("--smoke", str(out), "--add", "--profile", "long-seeds", "--task", "sr")
    assert proc.returncode == 2 and "no entry for sr" in proc.stderr and "Traceback" not in proc.stderr
    assert out.read_text() == '{"tasks": {}}'  # nothing written


def test_one_results_file_holds_one_key(tmp_path):
    out = tmp_path / "fp.json"
    out.write_text('{"key": "another-key", "tasks": {"sr": {}}}')
    proc = script("--json", str(out), "--task", "sr")
    assert proc.returncode == 2 and "under the key 'another-key'" in proc.stderr and "Traceback" not in proc.stderr
    assert out.read_text() == '{"key": "another-key", "tasks": {"sr": {}}}'  # nothing written


def test_compare_keys_counts_only_the_models_both_files_evaluated():
    a = _entry([0.8, 0.7, 0.6], [0.1, 0.0], 0.03)
    b = _entry([0.8, 0.1], [0.1, 0.0], 0.02, flagged_neg=1)  # no p2: an arm only the first file ran
    for e, key in ((a, "k0"), (b, "k1")):
        e["key"] = key
        for row in e["rows"]:
            row["budget"] = "quick"
    md = fe.compare_keys([{"tasks": {"sr": a}}, {"tasks": {"sr": b, "derain": b}}])
    lines = [x for x in md.splitlines() if x.startswith("| sr |")]
    assert len(lines) == 2 and "derain" not in md  # only the tasks both files hold
    assert "| `k0` |" in lines[0] and "| 2/2 | 0/2 |" in lines[0] and "2/2 (p 1e-05)" in lines[0]
    assert "| `k1` |" in lines[1] and "| 2/2 | 1/2 |" in lines[1]


def test_a_larger_budget_is_a_trade_off_not_the_target():
    wide = _entry([0.8, 0.7], [0.1, -0.2, 0.0], 0.3)
    wide["max_drop_db"] = 0.5
    sm = fe.summarize(wide)
    assert not sm["met"] and sm["met_at_budget"]  # AUC and FPR met, but at 0.3 dB, over the 0.05
    assert fe.target_cell(sm, 0.5) == "NOT met (AUC and FPR met at 0.5 dB)"
    over = _entry([0.8, 0.7], [0.1, -0.2, 0.0], 0.6)
    over["max_drop_db"] = 0.5
    assert not fe.summarize(over)["met_at_budget"]  # over its own budget too
    md = fe.render({"tasks": {"sr": wide}, "written": "now", "max_drop_db": 0.5})
    assert "The mark's budget (`--max-drop`): 0.5 dB" in md and "AUC and FPR met at 0.5 dB" in md
    assert fe.max_drop_of(_entry([0.8], [0.1], 0.0)) == fe.TEACHER_DROP_BUDGET  # entries written before the option
    lucky = _entry([0.8, 0.7], [0.1, -0.2, 0.0], -0.01)  # calibrated to 0.5 dB; the held-out images show a gain
    lucky["max_drop_db"] = 0.5
    assert not fe.summarize(lucky)["met"] and fe.summarize(lucky)["met_at_budget"]


def test_compare_shows_the_budget_only_when_the_files_differ():
    a, b = _entry([0.8], [0.1], 0.03), _entry([0.9], [0.1], 0.2)
    b["max_drop_db"] = 0.5
    same = fe.compare_keys([{"tasks": {"sr": a}}, {"tasks": {"sr": a}}])
    assert "max drop dB" not in same
    md = fe.compare_keys([{"tasks": {"sr": a}}, {"tasks": {"sr": b}}])
    head, rule, first, second = md.splitlines()[:4]
    assert "| max drop dB |" in head and head.count("|") == rule.count("|") == first.count("|")
    assert "| 0.05 |" in first and "| 0.5 |" in second


@pytest.mark.slow
def test_one_results_file_holds_one_budget(tmp_path):
    out = tmp_path / "fp.json"
    out.write_text('{"key": "fingerprint-eval-key-0", "tasks": {"sr": {}}}')
    proc = script("--json", str(out), "--max-drop", "0.2", "--task", "sr")
    assert proc.returncode == 2 and "at a 0.05 dB budget" in proc.stderr and "Traceback" not in proc.stderr
    assert out.read_text() == '{"key": "fingerprint-eval-key-0", "tasks": {"sr": {}}}'  # nothing written
    proc = script("--json", str(out), "--max-drop", "0", "--task", "sr")
    assert proc.returncode == 2 and "max drop must be in (0, 1] dB" in proc.stderr and "Traceback" not in proc.stderr


def test_compare_shows_the_key_space_only_when_the_files_differ():
    a, b = _entry([0.8], [0.1], 0.03), _entry([0.9], [0.1], 0.03)
    b["bias_students"] = 16
    assert "bias students" not in fe.compare_keys([{"tasks": {"sr": a}}, {"tasks": {"sr": a}}])
    head, rule, first, second = fe.compare_keys([{"tasks": {"sr": a}}, {"tasks": {"sr": b}}]).splitlines()[:4]
    assert "| bias students |" in head and head.count("|") == rule.count("|") == first.count("|")
    assert "| 0 |" in first and "| 16 |" in second


@pytest.mark.slow
def test_one_results_file_holds_one_key_space(tmp_path):
    out = tmp_path / "fp.json"
    out.write_text('{"key": "fingerprint-eval-key-0", "tasks": {"sr": {}}}')
    for args, needle in ((["--bias-students", "16"], "with 0 bias students"), (["--bias-students", "-1"], ">= 0")):
        proc = script("--json", str(out), "--task", "sr", *args)
        assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr
    assert out.read_text() == '{"key": "fingerprint-eval-key-0", "tasks": {"sr": {}}}'  # nothing written

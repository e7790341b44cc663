"""research/protection_cost_nodes.py: the node choices read from make bench's JSON, the node comparison and the
Markdown, without training anything."""
from __future__ import annotations

import json

import pytest

from asvp.errors import AsvpError

from research import protection_cost_nodes as pcn


def _cost(index, name, ratio, channels=16, auto=False):
    return {"index": index, "name": name, "op_type": "Relu", "shape": ["N", channels, "H", "W"], "channels": channels,
            "ratio": ratio, "ratio_p25": ratio - 0.01, "ratio_p75": ratio + 0.01, "defended_ms": 1.0, "auto": auto}


def _all(budget=1.10, count=3):
    costs = [_cost(0, "/a", 1.04), _cost(1, "/b", 1.02), _cost(2, "/c", 1.05), _cost(3, "/d", 1.20, 64, auto=True)]
    return {"machine": {"date": "2026-01-01 00:00 UTC"},
            "node_costs": {"toy": {"costs": costs, "budget": budget, "count": count, "choice": ["/b", "/c"],
                                   "trials": [{"nodes": ["/b", "/c"], "ratio": 1.06, "ratio_p25": 1.05,
                                               "ratio_p75": 1.07, "fits": True}],
                                   "shape": [1, 3, 256, 256], "threads": 1, "iters": 20, "backend": "onnxrt-cpu"}}}


def test_choices_reads_auto_cheapest_and_recorded_set():
    p = pcn.choices(_all(), "toy", 1.10)
    assert p["auto"]["name"] == "/d" and p["auto"]["channels"] == 64
    assert p["cost"]["name"] == "/b" and p["cost"]["cost"] == pytest.approx(1.02)  # the cheapest candidate
    assert p["three"] == {"nodes": ["/b", "/c"], "cost": 1.06}
    assert pcn.choices(_all(budget=1.05), "toy", 1.10)["three"] is None  # recorded for another budget
    assert pcn.choices(_all(), "toy", 1.01)["cost"] is None  # nothing fits


def test_choices_rejects_missing_task_and_ambiguous_auto():
    with pytest.raises(AsvpError, match="no node_costs"):
        pcn.choices(_all(), "sr")
    bad = _all()
    bad["node_costs"]["toy"]["costs"][0]["auto"] = True
    with pytest.raises(AsvpError, match="2 automatic"):
        pcn.choices(bad, "toy")


def test_compare_is_cost_minus_auto_per_seed():
    auto = {"drop": {"diffs": [0.1, 0.2, 0.3]}}
    cost = {"drop": {"diffs": [0.3, 0.2, 0.4]}}
    d = pcn.compare(auto, cost)
    assert d["n"] == 3 and d["diffs"] == pytest.approx([0.2, 0.0, 0.1]) and d["mean"] == pytest.approx(0.1)
    assert d["ci_low"] < 0.1 < d["ci_high"]
    assert pcn.compare(auto, {"drop": None}) is None and pcn.compare(auto, {"drop": {"diffs": [0.1]}}) is None


def _cell(mean, lo, hi, counts=False):
    return {"teacher_drop_db": 0.0, "clean_student_psnr": 20.0, "drop": {"n": 3, "mean": mean, "ci_low": lo, "ci_high": hi},
            "counts": counts, "wall_s": 12.0}


def test_render_lists_nodes_drops_and_what_was_not_run():
    pick = pcn.choices(_all(), "toy")
    res = {"date": "d", "command": "c", "commit": "abc", "preset": "standard", "seeds_used": "0-2", "wall_s": 60.0,
           "choices_from": "all.json", "choices_date": "x", "budget": 1.1, "not_run": ["sr: not in --tasks"],
           "tasks": [{"task": "toy", "choices": pick, "sets": {"auto": ["/d"], "cost": ["/b"], "three": ["/b", "/c"]},
                      "absorbability": {n: {"unexplained_heldout": v, "verdict": "absorbable", "channels": c}
                                        for n, v, c in (("/d", 0.0106, 64), ("/b", 0.0053, 16), ("/c", 0.002, 16))},
                      "attacks": [{"kind": "fitnets-1", "placement": "tap",
                                   "cells": {"auto": _cell(0.05, -0.1, 0.2), "cost": _cell(0.15, 0.11, 0.19, True)},
                                   "cost_minus_auto": {"n": 3, "mean": 0.1, "ci_low": -0.05, "ci_high": 0.25}}]}]}
    md = pcn.render(res)
    assert "| auto | `/d` | 64 | x1.200 (1.190-1.210) | 1.06 | absorbable |" in md
    assert "| three | `/b`, `/c` | 16, 16 | x1.060 together | 0.53, 0.20 |" in md
    assert "| fitnets-1 | tap | cost | +0.000 | 20.00 | +0.150 [+0.110, +0.190] | yes | 12 |" in md
    assert "| fitnets-1 | tap | cost - auto | | | +0.100 [-0.050, +0.250] | | |" in md
    assert md.rstrip().endswith("- sr: not in --tasks")


def test_main_bad_input_exits_2_and_writes_nothing(tmp_path, capsys):
    path = tmp_path / "all.json"
    path.write_text(json.dumps(_all()))
    out = tmp_path / "res"
    assert pcn.main(["--tasks", "nope", "--all-json", str(path), "--out", str(out)]) == 2
    assert pcn.main(["--tasks", "sr", "--all-json", str(tmp_path / "missing.json"), "--out", str(out)]) == 2
    assert pcn.main(["--tasks", "sr", "--all-json", str(path), "--out", str(out)]) == 2  # no node_costs for sr
    assert pcn.main(["--tasks", "sr", "--kinds", "fitnets-2", "--all-json", str(path), "--out", str(out)]) == 2
    assert pcn.main(["--tasks", "sr", "--seeds", "1", "--all-json", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 5 and all(e.startswith("error: ") for e in err)
    assert "--kinds" in err[3] and "--seeds" in err[4]
    assert not list(tmp_path.glob("res*"))

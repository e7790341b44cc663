"""The main job end to end (tiny budgets): one report folder with every section."""
import json

import pytest

from asvp.demo import run_demo
from asvp.config import AsvpConfig


@pytest.mark.slow
def test_demo_writes_one_report_with_every_section(tmp_path):
    out = tmp_path / "demo"
    res = run_demo("dehaze", out, attack_steps=5, profile_iters=3, progress=False)
    assert res["validation_passed"] is True  # the shipped default (tap) leaves the teacher's output unchanged
    assert res["config"] == AsvpConfig().to_dict()
    report = json.loads((out / "report.json").read_text())
    for key in ("validate", "profile", "demo", "absorbability", "fingerprint"):
        assert key in report["sections"], sorted(report["sections"])
    assert any(k.startswith("attack-") for k in report["sections"])
    md = (out / "report.md").read_text()
    assert "Verdict: PASS" in md and "Distillation attack" in md
    (node,) = res["absorbability"]["defended"]  # the diagnostic at the defended node, with its verdict
    assert node["name"] == res["defended_nodes"][0]["node"] and node["verdict"] in ("absorbable", "not absorbable")
    assert f"Absorbability at {node['name']}" in md
    assert list(out.glob("*.png")), "no plots written"
    assert (out / "dehaze.onnx").exists() and (out / "dehaze.asvp.onnx").exists()
    # the fingerprint check ran (5 training steps are too few to judge its verdict) and the key stays out of the model
    assert "Fingerprint check" in md and (out / "dehaze.fp.onnx").exists()
    fpc = report["sections"]["fingerprint"]
    fpc = fpc.get("data", fpc)
    assert len(fpc["results"]) == 2 and all(0.0 <= r["p_value"] <= 1.0 for r in fpc["results"])
    assert "flagged in 1 % of runs" in md  # a FAIL is explained as the sample it is
    key = (out / "fingerprint.key").read_text().strip()
    assert key not in (out / "dehaze.fp.onnx").read_bytes().decode("latin-1")

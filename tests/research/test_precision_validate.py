"""research/precision_validate.py: the table shows each task and precision, the inf/NaN counts and the fp32 ops."""
from research import precision_validate as pv


def test_render_rows():
    row = {"task": "sr", "precision": "fp16", "verdict": "FAIL", "n_images": 6, "teacher_fidelity_psnr": 75.3,
           "teacher_max_abs_diff": 1.2e-3, "teacher_drop_db": 0.0, "tap_rel_change": None,
           "reference_rel_error": None, "nonfinite_images": {"defended:asvp_tap_0": 6}, "fp32_ops": []}
    md = pv.render({"written": "now", "rows": [row, {**row, "precision": "bf16", "verdict": "PASS",
                                                     "nonfinite_images": {}, "reference_rel_error": 0.02}]})
    lines = [x for x in md.splitlines() if x.startswith("| sr |")]
    assert "| defended:asvp_tap_0 6/6 | none | FAIL |" in lines[0] and "| 75.30 |" in lines[0]
    assert "| 0.02 | none | none | PASS |" in lines[1]

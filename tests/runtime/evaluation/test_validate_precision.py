"""validate/profile --precision (issue 26.3): the models run converted (runtime/engines/reduced.py) and the result
says the precision, the teacher's fidelity against fp32, the inf/NaN counts and the ops left in fp32."""
from __future__ import annotations

import importlib.util
import json

import pytest

from asvp import api
from asvp.options import Timing

if importlib.util.find_spec("onnx2torch") is None:  # the `precision` extra (in dev: CI runs these)
    pytest.skip("onnx2torch is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def sr_defended(exported, tmp_path_factory):
    out = tmp_path_factory.mktemp("prec") / "sr.def.onnx"
    api.defend(exported("sr"), out)
    return exported("sr"), out


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_validate_at_reduced_precision_reports_fidelity_and_nonfinite(sr_defended, precision):
    clean, defended = sr_defended
    r = api.validate(clean, defended, precision=precision, heldout_size=48, spectrum=False, progress=False)
    p = r.precision_report
    assert r.precision == precision and p.precision == precision and "onnx2torch" in r.provider
    # the converted teacher is close to fp32 but not equal to it (it computes in reduced precision)
    assert 30 < p.teacher_fidelity_psnr < 120 and 0 < p.teacher_max_abs_diff < 0.05
    assert set(p.nonfinite_images) >= {"clean:output", "defended:output", "defended:asvp_tap_0"}
    assert any(c.what.startswith(f"every output of both models finite in {precision}") for c in r.checks)
    assert any(line.startswith(f"{precision}: teacher fidelity") for line in r.summary_lines())
    json.dumps(r.to_dict(), allow_nan=False)
    # every op these models use has a CPU kernel in both dtypes (torch 2.13); only the ASVP solve runs in fp32, as
    # asvp build pins it, so nothing is inf/NaN (the unpinned fp16 solve was NaN at the tap on every teacher)
    assert [n for n in p.fp32_ops if "ASVP solve" not in n] == [] and any("ASVP solve" in n for n in p.fp32_ops)
    assert not any(p.nonfinite_images.values()), p.nonfinite_images


@pytest.mark.slow
def test_validate_fp32_is_unchanged(sr_defended):
    clean, defended = sr_defended
    r = api.validate(clean, defended, heldout_size=48, spectrum=False, progress=False)
    assert r.precision == "fp32" and r.precision_report is None and "onnx2torch" not in r.provider


def test_profile_at_fp16(exported):
    r = api.profile(exported("sr"), timing=Timing("1x3x16x16", warmup=0, iters=2), memory="off", progress=False,
                    precision="fp16")
    assert r.precision == "fp16" and "fp16" in r.summary_lines()[0] and "onnx2torch" in r.models[0].provider

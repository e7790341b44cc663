"""Marking (runtime/fingerprint/keyspace.py, mark.py): the mark is small, recorded without the key, costs what it
says, and its key space is what the options ask for."""
import json
import math

import numpy as np
import pytest
import torch

from asvp import api
from asvp.errors import AsvpError
from asvp.fingerprint import key_id
from asvp.graph_passes.mark import META_FINGERPRINT, read_mark
from asvp.onnx_utils import get_metadata, load_model
from asvp.runtime.evaluation.served import ServedModel
from asvp.runtime.fingerprint import keyspace
from asvp.runtime.fingerprint.keyspace import key_space
from asvp.runtime.fingerprint.mark import mark_file
from asvp.runtime.fingerprint.probes import probe_inputs
from asvp.tasks import get_task

KEY_A = "test-key-alpha-0001"  # the keys of conftest's marked models
KEY_B = "test-key-bravo-0002"


@pytest.mark.slow
def test_cost_calibrated_mark_meets_its_drop_budget_on_the_calibration_data(models, tmp_path, monkeypatch):
    """The default strength: the largest eps whose measured drop on the owner's calibration crops is at most
    CAL_MARGIN x the budget; the key space loses the cost-bearing directions; nothing key-specific is recorded."""
    monkeypatch.setattr(keyspace, "CAL_CROPS", 6)
    monkeypatch.setattr(keyspace, "CAL_SIZE", 48)
    out = tmp_path / "sr.cal.onnx"
    res = api.fingerprint_mark(models["clean"], out, KEY_A, max_drop_db=0.05)
    info = read_mark(load_model(out))
    cost = info.cost
    target = keyspace.CAL_MARGIN * 0.05
    assert cost["max_drop_db"] == 0.05 and cost["target_db"] == pytest.approx(target)
    assert cost["removed_directions"] >= 1 and info.key_dim == 36 - cost["removed_directions"]
    xc, yc = keyspace.calibration_pairs("sr", 6, 48)
    drop = keyspace.calibration_psnr(ServedModel(models["clean"]).query(xc)[0], yc) - keyspace.calibration_psnr(
        ServedModel(out).query(xc)[0], yc)
    assert 0.0 < drop <= target * 1.05 and drop == pytest.approx(cost["calibration_drop_db"], abs=2e-3)
    assert KEY_A not in json.dumps(get_metadata(load_model(out))) and res.key_dim == info.key_dim
    # the marked model is itself flagged under its key, not under another
    assert api.fingerprint_verify(out, clean=models["clean"], defended=out, key=KEY_A).flagged
    with pytest.raises(AsvpError, match="budget|max drop"):
        api.fingerprint_mark(models["clean"], tmp_path / "x.onnx", KEY_A, max_drop_db=0.0)



def test_mark_is_small_recorded_without_the_key_and_costs_what_it_says(models):
    res = models["mark_result"]
    model = load_model(models["A"])
    meta = get_metadata(model)
    info = read_mark(model)
    assert info is not None and info.m == 8 and len(info.basis) == info.channels
    blob = json.dumps(meta)
    assert KEY_A not in blob and key_id(KEY_A) not in blob
    assert res.key_id == key_id(KEY_A) and META_FINGERPRINT in meta
    x = probe_inputs("sr")
    diff = ServedModel(models["A"]).query(x)[0] - ServedModel(models["clean"]).query(x)[0]
    psnr = 10 * math.log10(1 / float(np.mean(diff.astype(np.float64) ** 2)))
    assert abs(psnr - info.strength_db) < 0.05 and abs(psnr - 50.0) < 0.5



@pytest.mark.slow
def test_bias_students_key_space_is_recorded_and_verify_removes_no_span(models, tmp_path):
    """--bias-students: the key space is the half of the default one along which students of the clean model
    deviate least; the metadata says so (key-free), the planted case still flips, and verify removes no reference
    span (the space already avoids that bias)."""
    c, a = models["clean"], models["A"]
    full = key_space(c, task="sr", cost=False)
    ks = key_space(c, task="sr", cost=False, bias_students=2, bias_budget=(8, 2))
    dfull = full.r.shape[1]
    assert ks.r.shape == (full.r.shape[0], dfull - round(dfull / 2))
    assert ks.bias == {"students": 2, "seeds": [200, 201], "queries": 8, "steps": 2,
                       "removed_directions": round(dfull / 2)}
    assert np.allclose(full.r @ np.linalg.pinv(full.r) @ ks.r, ks.r, atol=1e-8)  # inside the default key space
    out = tmp_path / "sr.fpbias.onnx"
    res = mark_file(c, out, KEY_A, strength_db=50.0, task="sr", space=ks)
    assert res.mark["bias"] == ks.bias and res.key_dim == ks.r.shape[1]
    assert "removes no reference span" in "\n".join(res.summary_lines())
    info = read_mark(load_model(out))
    assert info.bias == ks.bias and info.key_dim == ks.r.shape[1] and KEY_A not in get_metadata(load_model(out))[META_FINGERPRINT]
    bias = lambda b: get_task("sr").baseline_output(torch.from_numpy(b)).numpy()  # noqa: E731
    hit = api.fingerprint_verify(out, clean=c, defended=out, key=KEY_A, references=[bias])
    assert hit.flagged and hit.references == [] and "away from the bias of 2 students" in "\n".join(hit.summary_lines())
    miss = api.fingerprint_verify(a, clean=c, defended=out, key=KEY_A, name="other mark")
    assert not miss.flagged and miss.p_value > 0.01
    with pytest.raises(AsvpError, match="bias students must be an integer"):
        key_space(c, task="sr", bias_students=-1)
    with pytest.raises(AsvpError, match="need the task"):
        key_space(c, task=None, cost=False, bias_students=2)

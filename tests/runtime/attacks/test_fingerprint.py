"""The keyed distillation fingerprint: the exact null, the planted case, the key, bad inputs."""
import json
import math

import numpy as np
import pytest
import torch

from asvp import api
from asvp.cli import main
from asvp.errors import AsvpError
from asvp.fingerprint import (bias_neutral_directions, coefficients, cosine_tail, cost_neutral_directions, key_dim,
                              key_direction, key_id, key_statistic, mix_matrix, nuisance_basis, principal_directions,
                              sym_basis)
from asvp.graph_passes.fingerprint import META_FINGERPRINT, read_mark
from asvp.onnx_utils import get_metadata, load_model
from asvp.runtime.attacks import fingerprint as fp
from asvp.runtime.attacks.attack import ServedModel
from asvp.tasks import get_task
from asvp.tasks.data import TRAIN_IMAGES, random_crops

KEY_A = "test-key-alpha-0001"
KEY_B = "test-key-bravo-0002"


# ---- core: key, basis, exact null ---------------------------------------------------------------------------

def test_key_direction_is_a_deterministic_unit_vector_that_depends_on_the_key():
    u1, u2, v = key_direction(KEY_A, 36), key_direction(KEY_A, 36), key_direction(KEY_B, 36)
    assert np.allclose(u1, u2) and math.isclose(np.linalg.norm(u1), 1.0)
    assert abs(float(u1 @ v)) < 0.9
    with pytest.raises(AsvpError, match="at least 8 characters"):
        key_direction("short", 36)


def test_symmetric_basis_is_orthonormal_and_the_mix_is_symmetric():
    b = sym_basis(5).reshape(key_dim(5), -1)
    assert np.allclose(b @ b.T, np.eye(key_dim(5)))
    w = principal_directions(np.random.default_rng(0).standard_normal((4, 12, 6, 6)), 5)
    assert np.allclose(w.T @ w, np.eye(5), atol=1e-9)
    a = mix_matrix(w, key_direction(KEY_A, key_dim(5)), 0.3)
    assert np.allclose(a, a.T) and math.isclose(np.linalg.norm(a), 0.3, rel_tol=1e-9)


@pytest.mark.parametrize("dim", [2, 3, 10, 36, 37])
def test_cosine_tail_matches_the_uniform_sphere(dim):
    rng = np.random.default_rng(dim)
    u = rng.standard_normal((200_000, dim))
    c1 = u[:, 0] / np.linalg.norm(u, axis=1)
    for c in (-0.5, 0.0, 0.2, 0.45, 0.7):
        emp = float(np.mean(c1 >= c))
        assert abs(cosine_tail(c, dim) - emp) < 4 * math.sqrt(emp * (1 - emp) / len(c1)) + 1e-4, (dim, c)
    assert cosine_tail(1.0, dim) == 0.0 and cosine_tail(-1.0, dim) == 1.0


def test_cosine_tail_matches_the_incomplete_beta():
    special = pytest.importorskip("scipy.special")
    for dim in (5, 36, 64):
        for c in (0.05, 0.3, 0.6, 0.9, 0.99):
            ref = 0.5 * special.betainc((dim - 1) / 2, 0.5, 1 - c * c)
            assert cosine_tail(c, dim) == pytest.approx(ref, rel=1e-6, abs=1e-15)


def test_p_values_are_uniform_over_keys_for_a_fixed_suspect_even_with_whitening_and_nuisance():
    """The null is the key's randomness: for any fixed (biased) suspect, p over random keys is uniform."""
    rng = np.random.default_rng(7)
    d = 36
    delta = rng.standard_normal((d, 400))
    gram = delta @ delta.T
    t = gram @ np.full(d, 0.3) + rng.standard_normal(d)  # a strongly biased innocent suspect
    nuisance = [rng.standard_normal(d) + 1.0 for _ in range(3)]
    a = coefficients(t, gram, nuisance)
    ps = np.array([key_statistic(a, key_direction(f"null-key-{i:05d}", d))[1] for i in range(3000)])
    assert 0.006 < np.mean(ps < 0.01) < 0.017
    assert 0.04 < np.mean(ps < 0.05) < 0.062
    assert 0.47 < np.mean(ps < 0.5) < 0.53
    assert key_statistic(np.zeros(d), key_direction(KEY_A, d)) == (0.0, 1.0)


def test_reference_span_is_removed_and_capped_at_half_the_dimensions():
    rng = np.random.default_rng(3)
    d = 12
    refs = [rng.standard_normal(d) for _ in range(3)]
    q = nuisance_basis(refs, d)
    assert q.shape == (d, 3) and np.allclose(q.T @ q, np.eye(3))
    inside = 0.7 * refs[0] - 2.0 * refs[2]  # a suspect whose bias lies in the references' span: nothing left
    assert np.allclose(coefficients(inside, np.eye(d), refs), 0.0)
    assert nuisance_basis([rng.standard_normal(d) for _ in range(20)], d).shape == (d, d // 2)
    assert nuisance_basis(None, d) is None


def test_cost_neutral_directions_are_orthogonal_to_the_teachers_error_directions():
    rng = np.random.default_rng(4)
    d = 16
    g = rng.standard_normal(d)
    cross = np.outer(rng.standard_normal(30), g) + 0.01 * rng.standard_normal((30, d))  # one dominant direction
    q = cost_neutral_directions(cross, share=0.25)
    assert q.shape == (d, d - 4) and np.allclose(q.T @ q, np.eye(d - 4))
    assert np.linalg.norm(q.T @ g) < 0.01 * np.linalg.norm(g)  # no key in the span of q changes E to first order
    assert cost_neutral_directions(cross, share=0.0).shape == (d, d)


def test_bias_neutral_directions_keep_the_half_where_innocent_models_deviate_least():
    rng = np.random.default_rng(5)
    d = 12
    big = np.linalg.qr(rng.standard_normal((d, 3)))[0]  # innocent deviations: mostly along 3 directions
    bias = rng.standard_normal((20, 3)) @ (10 * big.T) + 0.1 * rng.standard_normal((20, d))
    q = bias_neutral_directions(bias)
    assert q.shape == (d, d // 2) and np.allclose(q.T @ q, np.eye(d // 2))
    assert np.linalg.norm(q.T @ big) < 0.05  # the key space keeps none of the big directions
    kept, all_ = np.sum((bias @ q) ** 2), np.sum(bias ** 2)
    assert kept < 1e-3 * all_
    assert bias_neutral_directions(bias, share=0.0).shape == (d, d)
    assert bias_neutral_directions(bias[:, :3], share=0.9).shape == (3, 2)  # never fewer than 2 directions
    with pytest.raises(ValueError):
        bias_neutral_directions(np.zeros(d))


def test_cost_calibrated_mark_meets_its_drop_budget_on_the_calibration_data(models, tmp_path, monkeypatch):
    """The default strength: the largest eps whose measured drop on the owner's calibration crops is at most
    CAL_MARGIN x the budget; the key space loses the cost-bearing directions; nothing key-specific is recorded."""
    monkeypatch.setattr(fp, "CAL_CROPS", 6)
    monkeypatch.setattr(fp, "CAL_SIZE", 48)
    out = tmp_path / "sr.cal.onnx"
    res = api.fingerprint_mark(models["clean"], out, KEY_A, max_drop_db=0.05)
    info = read_mark(load_model(out))
    cost = info.cost
    target = fp.CAL_MARGIN * 0.05
    assert cost["max_drop_db"] == 0.05 and cost["target_db"] == pytest.approx(target)
    assert cost["removed_directions"] >= 1 and info.key_dim == 36 - cost["removed_directions"]
    xc, yc = fp.calibration_pairs("sr", 6, 48)
    drop = fp._pooled_psnr(ServedModel(models["clean"]).query(xc)[0], yc) - fp._pooled_psnr(
        ServedModel(out).query(xc)[0], yc)
    assert 0.0 < drop <= target * 1.05 and drop == pytest.approx(cost["calibration_drop_db"], abs=2e-3)
    assert KEY_A not in json.dumps(get_metadata(load_model(out))) and res.key_dim == info.key_dim
    # the marked model is itself flagged under its key, not under another
    assert api.fingerprint_verify(out, clean=models["clean"], defended=out, key=KEY_A).flagged
    with pytest.raises(AsvpError, match="budget|max drop"):
        api.fingerprint_mark(models["clean"], tmp_path / "x.onnx", KEY_A, max_drop_db=0.0)


# ---- the planted case on a real teacher ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("fp")
    clean, ma, mb = d / "sr.onnx", d / "sr.fpA.onnx", d / "sr.fpB.onnx"
    api.export("sr", clean)
    # a fixed strength keeps the fixture fast; the cost calibration (the default) has its own test below
    ra = api.fingerprint_mark(clean, ma, KEY_A, strength_db=50.0)
    api.fingerprint_mark(clean, mb, KEY_B, strength_db=50.0)
    return {"dir": d, "clean": clean, "A": ma, "B": mb, "mark_result": ra}


def _ground_truth_model():
    """An independently trained model (never saw any teacher): a tiny EDSR fit to ground truth for a few steps."""
    spec = get_task("sr")
    torch.manual_seed(3)
    net = spec.build().eval()
    g = torch.Generator().manual_seed(5)
    x, y = spec.make_pair(random_crops(TRAIN_IMAGES, 8, 32, g), g)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    for _ in range(10):
        loss = torch.nn.functional.l1_loss(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def fn(batch):
        with torch.no_grad():
            return net(torch.from_numpy(batch)).numpy()
    return fn


def test_mark_is_small_recorded_without_the_key_and_costs_what_it_says(models):
    res = models["mark_result"]
    model = load_model(models["A"])
    meta = get_metadata(model)
    info = read_mark(model)
    assert info is not None and info.m == 8 and len(info.basis) == info.channels
    blob = json.dumps(meta)
    assert KEY_A not in blob and key_id(KEY_A) not in blob
    assert res.key_id == key_id(KEY_A) and META_FINGERPRINT in meta
    x = fp.probe_inputs("sr")
    diff = ServedModel(models["A"]).query(x)[0] - ServedModel(models["clean"]).query(x)[0]
    psnr = 10 * math.log10(1 / float(np.mean(diff.astype(np.float64) ** 2)))
    assert abs(psnr - info.strength_db) < 0.05 and abs(psnr - 50.0) < 0.5


def test_verdict_flips_on_the_planted_case(models):
    c, a = models["clean"], models["A"]
    hit = api.fingerprint_verify(a, clean=c, defended=a, key=KEY_A)
    assert hit.flagged and hit.p_value < 1e-9 and hit.statistic > 0.9 and 0.9 < hit.beta < 1.1
    for name, suspect in (("ground truth", _ground_truth_model()),
                          ("bicubic", lambda b: get_task("sr").baseline_output(torch.from_numpy(b)).numpy())):
        miss = api.fingerprint_verify(suspect, clean=c, defended=a, key=KEY_A, name=name)
        assert not miss.flagged and miss.p_value > 0.01, (name, miss.p_value)
    same = api.fingerprint_verify(c, clean=c, defended=a, key=KEY_A)
    assert not same.flagged and same.p_value == 1.0


def test_the_key_changes_the_verdict(models):
    c, a, b = models["clean"], models["A"], models["B"]
    # the model marked with key A, tested as a suspect by the owner of key B: not flagged
    other = api.fingerprint_verify(a, clean=c, defended=b, key=KEY_B)
    assert not other.flagged and other.p_value > 0.01
    assert api.fingerprint_verify(b, clean=c, defended=b, key=KEY_B).flagged
    with pytest.raises(AsvpError, match="key does not reproduce the mark"):
        api.fingerprint_verify(a, clean=c, defended=a, key=KEY_B)


def test_one_pass_verdict_equals_verify(models):
    """Benchmarks check the key once and test each suspect on its one pass over the probes (check_key, query,
    result): the same verdict as verify; a wrong key fails the check itself."""
    c, a = models["clean"], models["A"]
    v = fp.Verifier.open(c, a, task="sr")
    bicubic = lambda b: get_task("sr").baseline_output(torch.from_numpy(b)).numpy()  # noqa: E731
    u, key_check = v.check_key(KEY_A)
    for suspect, name in ((a, "marked"), (bicubic, "bicubic")):
        full = v.verify(suspect, KEY_A, name=name)
        fn = fp._as_suspect(suspect)[0]
        one = v.result(v.query(fn, name), name, KEY_A, u, key_check)
        assert (one.statistic, one.p_value, one.flagged, one.beta, one.key_check) == \
               (full.statistic, full.p_value, full.flagged, full.beta, full.key_check)
    assert v.result(v.query(fp._as_suspect(a)[0], "marked"), "marked", KEY_A, u, key_check).flagged
    with pytest.raises(AsvpError, match="key does not reproduce the mark"):
        v.check_key(KEY_B)


def test_reference_bias_is_removed_and_cached(models, tmp_path):
    c, a = models["clean"], models["A"]
    bias = lambda b: get_task("sr").baseline_output(torch.from_numpy(b)).numpy()  # noqa: E731
    cal = api.fingerprint_calibrate(c, a, cache=tmp_path, seeds=(), references=[bias], progress=False)
    assert len(cal.references) == 1 and list(tmp_path.glob("fingerprint-references-*.npz"))
    res = api.fingerprint_verify(a, clean=c, defended=a, key=KEY_A, cache=tmp_path)
    assert res.references and res.flagged
    # the reference itself, tested against its own bias direction, carries no mark at all
    same = api.fingerprint_verify(bias, clean=c, defended=a, key=KEY_A, cache=tmp_path, name="other")
    assert same.references and abs(same.statistic) < 1e-6


def test_bias_students_key_space_is_recorded_and_verify_removes_no_span(models, tmp_path):
    """--bias-students: the key space is the half of the default one along which students of the clean model
    deviate least; the metadata says so (key-free), the planted case still flips, and verify removes no reference
    span (the space already avoids that bias)."""
    c, a = models["clean"], models["A"]
    full = fp.key_space(c, task="sr", cost=False)
    ks = fp.key_space(c, task="sr", cost=False, bias_students=2, bias_budget=(8, 2))
    dfull = full.r.shape[1]
    assert ks.r.shape == (full.r.shape[0], dfull - round(dfull / 2))
    assert ks.bias == {"students": 2, "seeds": [200, 201], "queries": 8, "steps": 2,
                       "removed_directions": round(dfull / 2)}
    assert np.allclose(full.r @ np.linalg.pinv(full.r) @ ks.r, ks.r, atol=1e-8)  # inside the default key space
    out = tmp_path / "sr.fpbias.onnx"
    res = fp.mark_file(c, out, KEY_A, strength_db=50.0, task="sr", space=ks)
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
        fp.key_space(c, task="sr", bias_students=-1)
    with pytest.raises(AsvpError, match="need the task"):
        fp.key_space(c, task=None, cost=False, bias_students=2)


# ---- bad inputs: one line, exit 2, nothing written ------------------------------------------------------------

def _cli(capsys, *argv):
    rc = main(list(argv))
    err = capsys.readouterr().err
    return rc, err


def test_bad_inputs_get_one_line_errors(models, capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("ASVP_FINGERPRINT_KEY", raising=False)
    c, a = str(models["clean"]), str(models["A"])
    dehaze = tmp_path / "dehaze.onnx"
    api.export("dehaze", dehaze)
    cases = [
        (("fingerprint", "verify", str(tmp_path / "missing.onnx"), "--clean", c, "--defended", a, "--key", KEY_A),
         "not found"),
        (("fingerprint", "verify", a, "--clean", c, "--defended", c, "--key", KEY_A), "carries no fingerprint mark"),
        (("fingerprint", "verify", a, "--clean", c, "--defended", a), "key is required"),
        (("fingerprint", "verify", a, "--clean", c, "--defended", a, "--key", "short"), "at least 8 characters"),
        (("fingerprint", "verify", a, "--clean", c, "--defended", a, "--key", KEY_B), "does not reproduce"),
        (("fingerprint", "verify", str(dehaze), "--clean", c, "--defended", a, "--key", KEY_A), "returns shape"),
        (("fingerprint", "verify", a, "--clean", str(dehaze), "--defended", a, "--key", KEY_A), "not its clean model"),
        (("fingerprint", "verify", a, "--clean", c, "--defended", a, "--key", KEY_A, "--alpha", "2"), "alpha"),
        (("fingerprint", "verify", a, "--clean", c, "--defended", a, "--key-file", str(tmp_path / "nokey")),
         "cannot read the key file"),
        (("fingerprint", "mark", c, "-o", str(tmp_path / "bad.onnx"), "--key", KEY_A, "--m", "32"), "m < channels"),
        (("fingerprint", "mark", c, "-o", str(tmp_path / "bad.onnx"), "--key", KEY_A, "--strength", "5"), "strength"),
        (("fingerprint", "mark", c, "-o", str(tmp_path / "bad.onnx"), "--key", KEY_A, "--max-drop", "-1"), "max drop"),
        (("fingerprint", "mark", a, "-o", str(tmp_path / "bad.onnx"), "--key", KEY_A, "--strength", "50"),
         "already fingerprinted"),
        (("fingerprint", "mark", c, "-o", str(tmp_path / "bad.onnx"), "--key", KEY_A, "--node", "nope"), "nope"),
        (("fingerprint", "mark", c, "-o", str(tmp_path / "bad.onnx"), "--key", KEY_A, "--bias-students", "-1"),
         "bias students must be an integer >= 0"),
        (("fingerprint", "calibrate", "--clean", c, "--defended", a, "--cache", str(tmp_path / "cal"), "--steps", "0"),
         "steps must be"),
    ]
    for argv, needle in cases:
        rc, err = _cli(capsys, *argv)
        assert rc == 2, (argv, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("asvp: error:") and needle in lines[0], (argv, err)
        assert "Traceback" not in err
    assert not (tmp_path / "bad.onnx").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left behind


def test_cli_verify_prints_json_and_reads_the_key_from_the_environment(models, capsys, monkeypatch):
    monkeypatch.setenv("ASVP_FINGERPRINT_KEY", KEY_A)
    c, a = str(models["clean"]), str(models["A"])
    assert main(["fingerprint", "verify", a, "--clean", c, "--defended", a, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["flagged"] is True and out["p_value"] < 1e-9 and out["key_id"] == key_id(KEY_A)
    assert KEY_A not in json.dumps(out)

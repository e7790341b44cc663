"""research/fingerprint_key_strength.py: the key-scale model solves its budget, and the selection-exact p-value
keeps the null when keeping the strongest key would bias the uniform one."""
from __future__ import annotations

import json

import numpy as np
import pytest

from asvp.fingerprint import key_direction

from research import fingerprint_key_strength as ks

KEY = "fingerprint-eval-key-0"


def test_key_scales_meet_the_target_drop_exactly():
    rng = np.random.default_rng(0)
    m = rng.standard_normal((6, 6))
    terms = {"H": m @ m.T + np.eye(6), "g": rng.standard_normal(6), "mse0": 2e-3, "n": 5000}
    keys = ks.unit_keys(50, 6, rng)
    s = ks.key_scales(keys, terms, 0.02)
    mse = terms["mse0"] + (2 * s * (keys @ terms["g"]) + s ** 2 * np.einsum("ki,ij,kj->k", keys, terms["H"], keys)) \
        / terms["n"]
    assert np.all(s > 0) and np.allclose(10 * np.log10(mse / terms["mse0"]), 0.02, rtol=1e-9, atol=0)
    # a key that lowers the teacher's error to first order (g.u < 0) affords a larger scale
    g = terms["g"] / np.linalg.norm(terms["g"])
    assert ks.key_scales(-g[None], {**terms, "H": np.eye(6)}, 0.02) > ks.key_scales(g[None], {**terms, "H": np.eye(6)}, 0.02)


def _entry(shift: float, dim: int = 10, n: int = 12, seed: int = 0) -> tuple[dict, np.ndarray]:
    """Innocent models sharing a bias b (which the one reference does not span), marked students = pair + shift x key."""
    rng = np.random.default_rng(seed)
    b = rng.standard_normal(dim)
    b /= np.linalg.norm(b)
    other = rng.standard_normal(dim)
    u = key_direction(KEY, dim)
    rows = []
    for i in range(n):
        neg = 3.0 * b + 0.5 * rng.standard_normal(dim)
        rows.append({"name": f"student of clean, seed {i}", "label": "negative", "t": neg.tolist()})
        rows.append({"name": f"student of marked, seed {i}", "label": "positive", "t": (neg + shift * u).tolist()})
    return {"key": KEY, "key_dim": dim, "references_t": {"ref": other.tolist()}, "rows": rows,
            "mark": {"eps": 1.0, "basis_eps": 1.0, "m": 8, "node": "/x", "cost": {"target_db": 0.02}}}, b


def _terms_favouring(b: np.ndarray) -> dict:
    """A cost model under which keys along b (the innocents' bias) afford much larger marks."""
    return {"H": np.eye(len(b)), "g": -40.0 * b, "mse0": 1e-3, "n": 10000}


def test_keeping_the_strongest_key_biases_the_uniform_p_but_not_the_selection_exact_one():
    entry, b = _entry(shift=0.0, dim=6)
    res = ks.run_task("toy", entry, _terms_favouring(b), keys=4000, best=32, trials=500, seed=1)
    c = res["simulation"]["counts"]
    rate = lambda k: c[k][0] / c[k][1]  # noqa: E731
    assert rate("one key: FPR") < 0.03  # a uniform key: exact
    assert rate("uniform p: FPR") > 0.08  # the chosen key leans towards the innocents' shared bias (0.21 seen)
    assert rate("selection-exact: FPR") < 0.03 and rate("Bonferroni: FPR") < 0.03
    assert res["amplitude_db_vs_median_key"]["strongest_of_32_median"] > 0


def test_a_learned_mark_is_found_under_every_rule_and_bonferroni_is_the_most_conservative():
    entry, b = _entry(shift=30.0)
    terms = {"H": np.eye(10), "g": np.zeros(10), "mse0": 1e-3, "n": 10000}
    res = ks.run_task("toy", entry, terms, keys=2000, best=4, trials=20, seed=2)
    c = res["simulation"]["counts"]
    rate = lambda k: c[k][0] / c[k][1]  # noqa: E731
    assert rate("one key: TPR") > 0.9 and rate("selection-exact: TPR") > 0.9
    assert rate("Bonferroni: TPR") <= rate("uniform p: TPR")
    assert res["scale_model_check"]["evaluated_key_s"] > 0 and len(res["simulation"]["per_key_tpr"]) == 3


def test_main_writes_json_and_markdown_and_refuses_a_changed_mark(tmp_path, capsys):
    entry, b = _entry(shift=30.0)
    src = tmp_path / "fp.json"
    src.write_text(json.dumps({"tasks": {"toy": entry}}))
    out = tmp_path / "res"
    assert ks.main(["--json", str(src), "--keys", "500", "--trials", "3", "--out", str(out)],
                   terms_of=lambda task, e, work: (_terms_favouring(b), 10)) == 0
    data = json.loads((tmp_path / "res.json").read_text())
    assert set(data["tasks"]) == {"toy"} and data["args"]["best"] == 8
    md = (tmp_path / "res.md").read_text()
    assert md.strip() in capsys.readouterr().out and md.count("| toy |") == 2
    # a key space that no longer matches the evaluated one: refused, nothing written
    with pytest.raises(SystemExit) as exc:
        ks.main(["--json", str(src), "--out", str(tmp_path / "other")],
                terms_of=lambda task, e, work: (_terms_favouring(b), 9))
    assert exc.value.code == 2 and not list(tmp_path.glob("other*"))


def test_cross_check_predicts_another_keys_verdicts_from_the_same_students():
    entry, b = _entry(shift=30.0)
    entry["references_t"] = {"ref": b.tolist()}  # (the default reference happens to lie near both keys)
    terms = {"H": np.eye(10), "g": np.zeros(10), "mse0": 1e-3, "n": 10000}
    names = [r["name"] for r in entry["rows"] if r["label"] == "positive"]
    other = {"key": "fingerprint-eval-key-1", "rows": [{"name": n, "flagged": i % 2 == 0} for i, n in enumerate(names)]}
    res = ks.run_task("toy", entry, terms, keys=500, best=4, trials=2, seed=0, other=other)
    c = res["cross_check"]
    # a strong learned mark is flagged under any key: all predicted, half measured in this made-up twin
    assert c == {"key": "fingerprint-eval-key-1", "students": 12, "predicted": 12, "measured": 6, "agree": 6}
    weak = ks.predict_key(_entry(shift=0.0)[0], lambda k: np.ones(len(k)), "fingerprint-eval-key-1")
    assert len(weak) == 12 and sum(weak.values()) <= 1  # nothing learned: innocent-like verdicts


def test_predict_only_records_the_verdicts_under_another_key(tmp_path):
    entry, b = _entry(shift=30.0)
    entry["references_t"] = {"ref": b.tolist()}
    src = tmp_path / "fp.json"
    src.write_text(json.dumps({"tasks": {"toy": entry}}))
    terms = {"H": np.eye(10), "g": np.zeros(10), "mse0": 1e-3, "n": 10000}
    assert ks.main(["--json", str(src), "--predict", "fingerprint-eval-key-2", "--out", str(tmp_path / "pred")],
                   terms_of=lambda task, e, work: (terms, 10)) == 0
    data = json.loads((tmp_path / "pred.json").read_text())
    pred = data["tasks"]["toy"]["prediction"]
    assert pred["key"] == "fingerprint-eval-key-2" and pred["students"] == 12 and pred["flagged"] == 12
    assert "simulation" not in data["tasks"]["toy"]
    assert "| toy | `fingerprint-eval-key-0` | 12 | 12 |" in (tmp_path / "pred.md").read_text()


def test_predict_with_the_keys_own_results_checks_the_prediction(tmp_path):
    entry, b = _entry(shift=30.0)
    entry["references_t"] = {"ref": b.tolist()}
    src = tmp_path / "fp.json"
    src.write_text(json.dumps({"tasks": {"toy": entry}}))
    names = [r["name"] for r in entry["rows"] if r["label"] == "positive"]
    twin = tmp_path / "k2.json"
    twin.write_text(json.dumps({"key": "fingerprint-eval-key-2",
                                "tasks": {"toy": {"rows": [{"name": n, "flagged": True} for n in names[:5]]}}}))
    terms = {"H": np.eye(10), "g": np.zeros(10), "mse0": 1e-3, "n": 10000}
    args = ["--json", str(src), "--predict", "fingerprint-eval-key-2", "--other", str(twin), "--out", str(tmp_path / "c")]
    assert ks.main(args, terms_of=lambda task, e, work: (terms, 10)) == 0
    check = json.loads((tmp_path / "c.json").read_text())["tasks"]["toy"]["cross_check"]
    assert check == {"key": "fingerprint-eval-key-2", "students": 5, "predicted": 5, "measured": 5, "agree": 5}
    with pytest.raises(SystemExit) as exc:  # results under another key than the one predicted
        ks.main(args[:3] + ["fingerprint-eval-key-3"] + args[4:], terms_of=lambda task, e, work: (terms, 10))
    assert exc.value.code == 2

"""The absorbability diagnostic (runtime/evaluation/absorbability.py): its numbers on features whose answer is known,
its least-squares bookkeeping against a direct fit, and `asvp absorbability` on a bundled teacher."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from asvp import api
from asvp.cli import main
from asvp.config import AsvpConfig
from asvp.method import asvp_reference
from asvp.runtime.evaluation.absorbability import ABSORBABLE_BELOW, measure, subspace_variation, verdict

C, HW = 12, (6, 6)


def _spiked(n: int, shared: bool, seed: int = 0) -> np.ndarray:
    """n features [C, 6, 6] with 3 leading directions in the same basis in every image (shared) or a random one.

    The tail is not small (a third of the energy): when the top k hold nearly all the energy, ASVP is close to
    scaling the whole feature by h, which one map absorbs whatever the subspaces do."""
    rng = np.random.default_rng(seed)
    base = np.linalg.qr(rng.standard_normal((C, C)))[0]
    out = []
    for _ in range(n):
        q = base if shared else np.linalg.qr(rng.standard_normal((C, C)))[0]
        spectrum = np.diag([8.0, 6.0, 5.0] + [3.0] * (C - 3))
        coeff = np.linalg.qr(rng.standard_normal((HW[0] * HW[1], C)))[0].T  # orthonormal rows: M = Q S V^T exactly
        out.append((q @ spectrum @ coeff).reshape(C, *HW))
    return np.stack(out).astype(np.float32)


def test_a_shared_subspace_is_fully_absorbable_and_random_subspaces_are_not():
    cfg = AsvpConfig(h=1.5, k=3, k_mode="fixed")
    same = measure([_spiked(16, shared=True)], cfg)
    rand = measure([_spiked(16, shared=False)], cfg)
    assert same["unexplained"] < 1e-8 and same["unexplained_heldout"] < 1e-8  # D = (h-1) U U^T M exactly
    assert same["subspace_variation"] < 1e-8 and same["principal_angle_deg"] < 1e-3
    assert rand["unexplained_heldout"] > 0.3 and rand["subspace_variation"] > 0.5
    assert rand["unexplained_heldout"] >= rand["unexplained"]  # the held-out fit cannot do better than in-sample
    assert rand["unexplained"] <= rand["scaling_bound"]  # the fit beats "scale everything by h"
    assert verdict(same["unexplained_heldout"]) == "absorbable"
    assert verdict(rand["unexplained_heldout"]) == "not absorbable"


def test_the_streaming_fit_equals_a_direct_least_squares_fit():
    """The residual from the accumulated normal equations matches an explicit lstsq over all pixels."""
    feats = _spiked(10, shared=False, seed=3)
    cfg = AsvpConfig(h=2.0, k=4, tau=0.8)
    got = measure([feats[:3], feats[3:7], feats[7:]], cfg)  # chunking must not matter
    m = torch.from_numpy(feats.astype(np.float64))
    delta = (asvp_reference(m, cfg) - m).numpy().reshape(10, C, -1)
    x = np.concatenate([feats.reshape(10, C, -1).astype(np.float64), np.ones((10, 1, HW[0] * HW[1]))], 1)
    X = x.transpose(1, 0, 2).reshape(C + 1, -1)
    D = delta.transpose(1, 0, 2).reshape(C, -1)
    w = np.linalg.lstsq(X.T, D.T, rcond=None)[0].T
    direct = float(np.sum((D - w @ X) ** 2) / np.sum(D**2))
    assert got["unexplained"] == pytest.approx(direct, rel=1e-6, abs=1e-12)
    assert got["rel_change"] == pytest.approx(np.linalg.norm(D) / np.linalg.norm(X[:C]), rel=1e-9)


def test_the_shares_do_not_depend_on_h():
    feats = _spiked(8, shared=False, seed=5)
    a, b = (measure([feats], AsvpConfig(h=h, k=4)) for h in (1.1, 3.0))
    for key in ("unexplained", "unexplained_heldout", "subspace_variation", "k_used_mean", "topk_energy"):
        assert a[key] == pytest.approx(b[key], rel=1e-9), key
    assert b["rel_change"] == pytest.approx(a["rel_change"] * 2.0 / 0.1, rel=1e-9)  # the change scales with h - 1


def test_subspace_variation_matches_a_pair_by_pair_computation_with_unequal_k():
    rng = np.random.default_rng(7)
    bases = [np.linalg.qr(rng.standard_normal((9, k)))[0] for k in (1, 3, 2, 4, 4, 1, 2)]
    overlaps, angles = [], []
    for i in range(len(bases)):
        for j in range(i + 1, len(bases)):
            cos = np.clip(np.linalg.svd(bases[i].T @ bases[j], compute_uv=False), 0, 1)  # min(k_i, k_j) values
            overlaps.append(np.sum(cos**2) / len(cos))
            angles.append(np.degrees(np.mean(np.arccos(cos))))
    var, ang = subspace_variation(bases)
    assert var == pytest.approx(1 - np.mean(overlaps), rel=1e-9) and ang == pytest.approx(np.mean(angles), rel=1e-9)


def test_subspace_variation_of_orthogonal_and_identical_bases():
    e = np.eye(6)
    assert subspace_variation([e[:, :2], e[:, 2:4]]) == (pytest.approx(1.0), pytest.approx(90.0))
    assert subspace_variation([e[:, :2], e[:, :2]])[0] == pytest.approx(0.0, abs=1e-12)
    assert subspace_variation([e[:, :2]]) == (None, None)
    assert verdict(None) == "n/a" and verdict(ABSORBABLE_BELOW) == "not absorbable"


@pytest.fixture(scope="module")
def sr_result(exported):
    return api.absorbability(exported("sr"), task="sr", queries=8, progress=False)


def test_every_candidate_of_a_bundled_teacher_gets_a_verdict(sr_result, exported):
    res = sr_result
    names = [n.name for n in api.list_nodes(exported("sr"))]
    assert [n.name for n in res.nodes] == names and res.n_images == 8
    assert res.automatic == "/Add"
    for n in res.nodes:
        assert 0.0 <= n.unexplained <= 1.0 and 0.0 <= n.unexplained_heldout
        assert 0.0 <= n.subspace_variation <= 1.0 and 1 <= n.k_used_mean <= 4
        assert n.verdict == verdict(n.unexplained_heldout)
        assert n.unexplained <= n.scaling_bound + 1e-9
    assert "(auto)" in res.markdown() and "| /Add (auto) |" in res.markdown()
    table = [line for line in res.markdown().splitlines() if line.startswith("|")]
    assert len({line.count(" | ") for line in table if "---" not in line}) == 1  # header and rows have equal width


def test_cli_json_and_a_folder_of_images(exported, tmp_path, capsys):
    from skimage import io as skio

    rng = np.random.default_rng(0)
    (tmp_path / "input").mkdir()
    for i in range(3):
        skio.imsave(tmp_path / "input" / f"im{i}.png", (rng.random((40, 36, 3)) * 255).astype(np.uint8),
                    check_contrast=False)
    assert main(["absorbability", exported("sr"), "--images", str(tmp_path), "--k", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["n_images"] == 3 and data["config"]["k"] == 2 and str(tmp_path) in data["images"]
    assert all(math.isfinite(n["unexplained"]) for n in data["nodes"])


@pytest.mark.parametrize("argv, needle", [
    (["nodes", "{m}", "--task", "sr"], "unrecognized arguments"),  # listing takes no task: absorbability does
    (["nodes", "{m}", "--k", "2"], "unrecognized arguments"),
    (["absorbability", "{m}", "--images", "/nonexistent/dir"], "not found"),
    (["absorbability", "{m}", "--task", "sr", "--queries", "1"], "queries must be"),
    (["absorbability", "{m}", "--task", "nope"], "unknown task"),
    (["absorbability", "{m}", "--task", "lowlight"], "does not match"),
    (["nodes", "{m}", "--absorbability", "--task", "nope"], "unknown task"),  # the old flag, redirected
])
def test_bad_input_is_one_line_and_exit_2(exported, argv, needle, capsys):
    try:
        rc = main([a.replace("{m}", exported("sr")) for a in argv])
    except SystemExit as e:  # argparse's usage errors
        rc = e.code
    err = [ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith("asvp: note:")]
    assert rc == 2 and len(err) == 1 and needle in err[0]


def test_a_given_perturbation_is_measured_instead_of_asvp():
    """measure(..., perturb=f): the paper's ASVP as f gives the default numbers; one global linear map as f is fully
    explained; a keyed variant (a per-image h on a shared subspace) is not, although ASVP itself is there."""
    from asvp.variants import variant_reference

    feats = _spiked(16, shared=True, seed=7)
    cfg = AsvpConfig(h=1.5, k=3, k_mode="fixed")
    as_matrix = lambda f: (lambda m: f(m.unsqueeze(-1)).reshape(m.shape))  # noqa: E731
    plain = measure([feats], cfg)
    same = measure([feats], cfg, perturb=as_matrix(lambda x: asvp_reference(x, cfg)))
    assert same["unexplained"] == pytest.approx(plain["unexplained"], abs=1e-12)
    a = torch.from_numpy(np.random.default_rng(0).standard_normal((C, C)))
    linear = measure([feats], cfg, perturb=lambda m: m + a @ m)
    assert linear["unexplained_heldout"] < 1e-8
    # the hash reads each image's Gram matrix: give the images different leading singular values (same subspace)
    u1 = np.linalg.qr(np.random.default_rng(7).standard_normal((C, C)))[0][:, :1]  # _spiked's first shared direction
    boost = np.random.default_rng(1).uniform(0.0, 1.0, len(feats))
    feats = np.stack([((np.eye(C) + b * u1 @ u1.T) @ f.reshape(C, -1)).reshape(f.shape)
                      for b, f in zip(boost, feats)]).astype(np.float32)
    keyed = AsvpConfig(variant="keyed-h", h=1.0, h_max=2.0, key="t", k=3, k_mode="fixed")
    var = measure([feats], keyed, perturb=as_matrix(lambda x: variant_reference(x, keyed)))
    assert measure([feats], cfg)["unexplained_heldout"] < 1e-8 and var["unexplained_heldout"] > 0.05

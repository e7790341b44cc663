"""The keyed defence variants: the float64 reference (asvp/variants.py), their standard-op emission
(graph_passes/variants.py), defend's plugin refusal and the defend CLI flags. Their configuration fields:
tests/core/test_config.py."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from asvp.cli import main
from asvp.config import AsvpConfig
from asvp.errors import AsvpError
from asvp.graph_passes import select
from asvp.graph_passes.defend import defend_model
from asvp.graph_passes.variants import standalone_variant_model
from asvp.method import asvp_reference
from asvp.variants import keyed_uniforms, variant_reference
from asvp.tasks import get_task

KEYED_H = AsvpConfig(variant="keyed-h", h=1.0, h_max=1.5, key="k1", placement="inline")
KEYED_ROT = AsvpConfig(variant="keyed-rotation", h=1.2, angle_max=30.0, key="k1", placement="inline")
VARIANTS = [pytest.param(KEYED_H, id="keyed-h"), pytest.param(KEYED_ROT, id="keyed-rotation"),
            pytest.param(KEYED_ROT.with_(k_mode="fixed", k=3), id="keyed-rotation-fixed-k3")]


def rel_err(out, ref) -> np.ndarray:
    """Per-sample ||out - ref|| / ||ref||."""
    out = torch.as_tensor(np.ascontiguousarray(out)).double().flatten(1)
    ref = torch.as_tensor(np.ascontiguousarray(ref)).double().flatten(1)
    return ((out - ref).norm(dim=1) / ref.norm(dim=1)).numpy()


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def teacher_features(exported):
    """features(task) -> {candidate name: [6, C, H, W] float32} at every candidate of the bundled teacher, on its
    held-out images (cached per task)."""
    cache: dict = {}

    def get(task: str) -> dict:
        if task not in cache:
            model = onnx.load(exported(task))
            cands = [c for c in select.candidates(model) if c.channels > 4]
            probe = onnx.ModelProto()
            probe.CopyFrom(model)
            for c in cands:
                probe.graph.output.append(onnx.helper.make_tensor_value_info(c.output, onnx.TensorProto.FLOAT, None))
            sess = session(probe)
            x = get_task(task).heldout(size=96)[0].numpy()
            feats = sess.run([c.output for c in cands], {sess.get_inputs()[0].name: x})
            cache[task] = {c.name: f for c, f in zip(cands, feats)}
        return cache[task]

    return get


# ---- the reference --------------------------------------------------------------------------------------------

def test_reference_properties(teacher_features):
    f = torch.from_numpy(teacher_features("sr")["/Add"])
    m = f.double().reshape(f.shape[0], f.shape[1], -1)
    # the hash: values in [0, 1], one per sample, spread over the range (unrelated values for different images)
    u = keyed_uniforms(m, KEYED_H)[:, 0].numpy()
    assert ((u >= 0) & (u <= 1)).all() and len(set(np.round(u, 6))) == len(u) and u.max() - u.min() > 0.3
    # keyed-rotation with h = 1 is a rotation inside the top-k subspace: the feature's norm is unchanged
    rot = variant_reference(f, KEYED_ROT.with_(h=1.0))
    assert np.allclose(rot.flatten(1).norm(dim=1), f.double().flatten(1).norm(dim=1), rtol=1e-10)
    assert rel_err(rot, f).min() > 1e-3  # and it does change it
    # keyed-h with h = h_max - tiny is the paper's ASVP at h
    near = KEYED_H.with_(h=1.5, h_max=1.5 + 1e-12)
    assert rel_err(variant_reference(f, near), asvp_reference(f, AsvpConfig(h=1.5))).max() < 1e-10


# ---- the ONNX graph against the reference ------------------------------------------------------------------------

@pytest.mark.parametrize("task", ["sr", "lowlight"])
@pytest.mark.parametrize("cfg", VARIANTS)
def test_onnx_matches_float64_reference_at_every_candidate(teacher_features, task, cfg):
    """<= 1e-3 relative error (ONNX Runtime vs variant_reference) at every candidate node of two bundled teachers,
    on their held-out images: the hash lands on the same values in float32 and float64."""
    worst, graphs = {}, {}
    for name, f in teacher_features(task).items():
        c = f.shape[1]
        if c not in graphs:
            graphs[c] = session(standalone_variant_model(c, cfg))
        out = graphs[c].run(None, {"x": f})[0]
        worst[name] = float(rel_err(out, variant_reference(torch.from_numpy(f), cfg)).max())
    assert max(worst.values()) <= 1e-3, sorted(worst.items(), key=lambda kv: -kv[1])[:3]


@pytest.mark.parametrize("cfg", VARIANTS[:2])
def test_deterministic_per_sample_and_keyed(teacher_features, cfg):
    f = teacher_features("sr")["/Add"]
    sess = session(standalone_variant_model(f.shape[1], cfg))
    a = sess.run(None, {"x": f})[0]
    b = session(standalone_variant_model(f.shape[1], cfg)).run(None, {"x": f})[0]
    assert np.array_equal(a, b), "the same query must get bit-identical answers"
    # per sample: each sample alone gets (to float32 round-off) what it gets inside the batch, whatever its neighbours
    for i in range(len(f)):
        alone = sess.run(None, {"x": f[i : i + 1]})[0]
        assert rel_err(alone, a[i : i + 1]).max() < 1e-5
    shuffled = sess.run(None, {"x": f[::-1].copy()})[0][::-1]
    assert rel_err(shuffled, a).max() < 1e-5
    # and the samples do get different parameters: the change relative to the paper's fixed-h ASVP differs per sample
    m = torch.from_numpy(f).double().reshape(f.shape[0], f.shape[1], -1)
    assert np.ptp(keyed_uniforms(m, cfg)[:, 0].numpy()) > 0.2
    # another key: other answers (graph and reference)
    other = cfg.with_(key="k2")
    c = session(standalone_variant_model(f.shape[1], other)).run(None, {"x": f})[0]
    assert rel_err(c, a).max() > 1e-3
    assert rel_err(variant_reference(torch.from_numpy(f), other), variant_reference(torch.from_numpy(f), cfg)).max() > 1e-3
    # integer and string forms of a key are the same key (the command line passes strings)
    assert np.array_equal(keyed_uniforms(m, cfg.with_(key=7)), keyed_uniforms(m, cfg.with_(key="7")))


def test_hash_is_stable_under_float32_noise(teacher_features):
    """Perturbing the feature by float32 round-off moves the hash by ~1e-4 at most: no jumps between float32 and
    float64 evaluations (the hash is smooth, not a fractional part)."""
    f = teacher_features("lowlight")["/mid/mid.2/Relu"].astype(np.float64)
    m = torch.from_numpy(f).reshape(f.shape[0], f.shape[1], -1)
    noisy = m * (1 + 1e-7 * torch.randn(m.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    for cfg in (KEYED_H, KEYED_ROT):
        assert (keyed_uniforms(noisy, cfg) - keyed_uniforms(m, cfg)).abs().max() < 1e-3


# ---- defend, plugin refusal, the CLI ------------------------------------------------------------------------

def test_defend_inserts_the_variant_and_hides_the_key(exported):
    model = onnx.load(exported("sr"))
    out, info = defend_model(model, None, KEYED_H)
    meta = {p.key: p.value for p in out.metadata_props}
    assert json.loads(meta["asvp.config"])["variant"] == "keyed-h" and "key" not in json.loads(meta["asvp.config"])
    assert "k1" not in out.SerializeToString().decode("latin1").split("asvp.config")[1][:400]
    assert {"Sin", "Acos"} <= {n.op_type for n in out.graph.node}
    # inline at the automatic node, the same answers as the standalone block on the clean model's feature
    x = get_task("sr").heldout(size=64)[0].numpy()[:2]
    feat = select.resolve(model, None)[0].output
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(onnx.helper.make_tensor_value_info(feat, onnx.TensorProto.FLOAT, None))
    f = session(probe).run([feat], {"input": x} if model.graph.input[0].name == "input" else
                           {model.graph.input[0].name: x})[0]
    tap, _ = defend_model(model, None, KEYED_H.with_(placement="tap"))
    got = session(tap).run(["asvp_tap_0"], {model.graph.input[0].name: x})[0]
    assert rel_err(got, variant_reference(torch.from_numpy(f), KEYED_H)).max() <= 1e-3


def test_plugin_mode_refuses_variants(exported):
    with pytest.raises(AsvpError, match="only in subgraph mode"):
        defend_model(onnx.load(exported("sr")), None, KEYED_ROT, mode="plugin")


@pytest.mark.parametrize("extra,code", [
    (["--variant", "keyed-h", "--h", "1.0", "--h-max", "1.2", "--key", "s", "--mode", "plugin"], 2),
    (["--variant", "keyed-h", "--h", "1.0", "--h-max", "1.2"], 2),  # no key
    (["--variant", "keyed-rotation", "--key", "s", "--angle-max", "500"], 2),
    (["--variant", "keyed-rotation", "--key", "s3cret", "--angle-max", "10", "--json"], 0),
])
def test_defend_cli_variant_flags(exported, tmp_path, capsys, extra, code):
    out = tmp_path / "d.onnx"
    try:
        rc = main(["defend", exported("sr"), "-o", str(out), *extra])
    except SystemExit as e:
        rc = e.code
    cap = capsys.readouterr()
    assert rc == code, cap.err
    if code:
        lines = [ln for ln in cap.err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("asvp: error: ") and not out.exists(), cap.err
    else:
        assert json.loads(cap.out)["config"]["variant"] == "keyed-rotation"
        assert b"s3cret" not in out.read_bytes()


def test_variant_block_finds_the_same_directions_as_the_paper_subgraph(teacher_features):
    """graph_passes/variants.py repeats build_asvp's basis and mask steps (same helpers and constants): keyed-h with a
    vanishing h range must give the paper subgraph's output to float32 round-off, so the two cannot drift apart."""
    from asvp.graph_passes.subgraph import standalone_model

    f = teacher_features("sr")["/Add"]
    near = KEYED_H.with_(h=1.5, h_max=1.5 + 1e-6)
    ours = session(standalone_variant_model(f.shape[1], near)).run(None, {"x": f})[0]
    paper = session(standalone_model(f.shape[1], AsvpConfig(h=1.5))).run(None, {"x": f})[0]
    assert rel_err(ours, paper).max() < 1e-5

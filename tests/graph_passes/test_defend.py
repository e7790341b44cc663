"""Defending ONNX models: parity with the float64 reference on the bundled teachers' real features, placements,
plugin mode, metadata, refusals, Polygraphy and the `asvp defend` CLI."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from asvp import api, cli
from asvp.config import AsvpConfig
from asvp.errors import AsvpError
from asvp.graph_passes import plugin_contract, select
from asvp.graph_passes.defend import defend_model
from asvp.graph_passes.surgery import check_graph
from asvp.graph_passes.metadata import read_defence
from asvp.method import asvp_reference
from asvp.tasks import TASK_NAMES

TASKS = TASK_NAMES
TOL = 1e-3  # relative error target of the subgraph against the float64 SVD reference (docs/method.md)


def rel_err(out, ref) -> float:
    out = torch.as_tensor(np.asarray(out)).double().flatten(1)
    ref = torch.as_tensor(np.asarray(ref)).double().flatten(1)
    return float(((out - ref).norm(dim=1) / ref.norm(dim=1)).max())


def heldout(task) -> np.ndarray:
    from asvp.tasks import get_task

    return get_task(task).heldout(size=96)[0][:3].numpy()


def session(model: onnx.ModelProto):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def with_outputs(model: onnx.ModelProto, names) -> onnx.ModelProto:
    """A copy exposing internal tensors as extra graph outputs."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for n in names:
        m.graph.output.append(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
    return m


def infer(model, x, names=None):
    s = session(model)
    outs = s.run(names, {s.get_inputs()[0].name: x})
    return dict(zip(names or [o.name for o in s.get_outputs()], outs))


# ---- parity on real features ------------------------------------------------------------------------------

@pytest.mark.parametrize("task", TASKS)
def test_parity_on_real_features_both_placements(exported, task):
    clean = onnx.load(exported(task))
    x = heldout(task)
    cfg = AsvpConfig()
    (feat,) = select.resolve(clean, None)
    ref_run = infer(with_outputs(clean, [feat.output]), x)
    clean_out, f = ref_run["output"], ref_run[feat.output]
    ref = asvp_reference(torch.from_numpy(f), cfg)
    assert rel_err(f, ref) > 1e-2  # the defence does something measurable

    tap_model, info = defend_model(clean, None, cfg.with_(placement="tap"))
    tap_name = info.nodes[0]["tap_output"]
    got = infer(tap_model, x)
    assert np.array_equal(got["output"], clean_out)  # tap: the network itself is untouched
    assert rel_err(got[tap_name], ref) < TOL

    inline_model, info = defend_model(clean, None, cfg.with_(placement="inline"))
    block = info.nodes[0]["block"]
    out_node = next(n for n in inline_model.graph.node if n.name.startswith(block + "/to_feature"))
    perturbed = out_node.output[0]
    consumers = [n for n in inline_model.graph.node if not n.name.startswith(block + "/")
                 and (feat.output in n.input or perturbed in n.input)]
    assert consumers and all(perturbed in n.input and feat.output not in n.input for n in consumers)
    got = infer(with_outputs(inline_model, [feat.output, perturbed]), x)
    assert np.array_equal(got[feat.output], f)
    assert rel_err(got[perturbed], ref) < TOL
    assert np.max(np.abs(got["output"] - clean_out)) > 0  # the perturbation reaches the output


def test_three_nodes_and_other_sizes(exported):
    clean = onnx.load(exported("sr"))
    cfg = AsvpConfig(placement="tap", k=3, k_mode="fixed", h=2.0)
    model, info = defend_model(clean, ["Conv#1", "re:^/body/body.2/Relu$", "auto"], cfg)
    assert [r["tap_output"] for r in info.nodes] == ["asvp_tap_0", "asvp_tap_1", "asvp_tap_2"]
    assert len({r["block"] for r in info.nodes}) == 3
    x = np.random.default_rng(0).random((2, 3, 20, 28), dtype=np.float32)
    names = [r["tensor"] for r in info.nodes]
    got = infer(with_outputs(model, names), x)
    for r in info.nodes:
        assert got[r["tap_output"]].shape == (2, r["channels"], 20, 28)
        assert rel_err(got[r["tap_output"]], asvp_reference(torch.from_numpy(got[r["tensor"]]), cfg)) < TOL


# ---- validity, metadata ---------------------------------------------------------------------------------

def test_defended_models_are_valid_onnx_with_metadata(exported):
    clean = onnx.load(exported("lowlight"))
    cfg = AsvpConfig(h=2.0, k=3, placement="tap")
    model, info = defend_model(clean, ["auto"], cfg)
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    assert model.ir_version <= 8 and model.ir_version == clean.ir_version
    assert [o.domain for o in model.opset_import] == [o.domain for o in clean.opset_import]
    tap = next(o for o in inferred.graph.output if o.name == "asvp_tap_0")
    dims = tap.type.tensor_type.shape.dim
    assert tap.type.tensor_type.elem_type == onnx.TensorProto.FLOAT and len(dims) == 4
    assert dims[1].dim_value == info.nodes[0]["channels"]
    assert all(d.dim_param and not d.HasField("dim_value") for i, d in enumerate(dims) if i != 1)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["asvp.task"] == "lowlight"  # the exporter's metadata survives
    assert meta["asvp.defended"] == "true" and meta["asvp.mode"] == "subgraph" and meta["asvp.placement"] == "tap"
    assert json.loads(meta["asvp.config"]) == cfg.to_dict() and meta["asvp.config_digest"] == cfg.digest()
    (rec,) = json.loads(meta["asvp.nodes"])
    assert {"node", "tensor", "channels", "tap_output"} <= set(rec) and rec["tap_output"] == "asvp_tap_0"
    parsed = read_defence(meta)  # the one reader (validation and attacks use it) parses what defend recorded
    assert parsed.defended and parsed.nodes[0].tap_output == "asvp_tap_0" and parsed.config == cfg


@pytest.mark.parametrize("placement", ["inline", "tap"])
def test_plugin_mode_graph(exported, placement):
    clean = onnx.load(exported("sr"))
    cfg = AsvpConfig(k=3, h=1.8, tau=0.85, placement=placement)
    model, info = defend_model(clean, ["auto", "Relu#0"], cfg, mode="plugin")
    nodes = [n for n in model.graph.node if plugin_contract.is_plugin_node(n)]
    assert len(nodes) == 2 and len(plugin_contract.plugin_nodes(model)) == 2 and info.inserted_nodes == 2
    for n in nodes:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        assert attrs["plugin_namespace"] == b"asvp" and attrs["plugin_version"] == b"1"
        assert attrs["k"] == 3 and attrs["adaptive"] == 1 and attrs["placement"] == placement.encode()
        assert attrs["h"] == pytest.approx(1.8) and attrs["tau"] == pytest.approx(0.85)
    assert any(o.domain == plugin_contract.PLUGIN_DOMAIN and o.version == 1 for o in model.opset_import)
    check_graph(model)  # onnx.checker full + strict shape inference
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    typed = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    for n in nodes:  # the plugin output is typed, and inference continues downstream of it
        assert typed[n.output[0]].type.tensor_type.shape.dim[1].dim_value > 0
    out = next(o for o in inferred.graph.output if o.name == "output")
    assert len(out.type.tensor_type.shape.dim) == 4
    assert {p.key: p.value for p in model.metadata_props}["asvp.mode"] == "plugin"


def test_defending_a_plugin_defended_model(exported, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # ONNX Runtime's symbolic shape inference litters the cwd when it cannot finish
    clean = onnx.load(exported("sr"))
    first, _ = defend_model(clean, ["Relu#0"], AsvpConfig(placement="inline"), mode="plugin")
    both, info = defend_model(first, None, AsvpConfig(placement="tap"))
    assert [r["mode"] for r in info.all_nodes] == ["plugin", "subgraph"] and info.nodes[0]["node"] == "/Add"
    meta = {p.key: p.value for p in both.metadata_props}
    assert meta["asvp.mode"] == "mixed" and meta["asvp.placement"] == "mixed"
    assert any(o.domain == plugin_contract.PLUGIN_DOMAIN for o in both.opset_import)
    assert list(tmp_path.iterdir()) == []


def test_inline_at_a_graph_output_keeps_its_name():
    """A feature that is also a graph output: the perturbed tensor takes over the output's name."""
    from onnx import TensorProto, helper

    w = np.random.default_rng(0).standard_normal((8, 3, 3, 3)).astype(np.float32)
    w2 = np.random.default_rng(1).standard_normal((3, 8, 1, 1)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["feat"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("Conv", ["feat", "w2"], ["output"], name="head")],
        "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3, "H", "W"]),
         helper.make_tensor_value_info("feat", TensorProto.FLOAT, ["N", 8, "H", "W"])],
        [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(w2, "w2")])
    clean = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    cfg = AsvpConfig(k=2, placement="inline")
    model, info = defend_model(clean, ["conv"], cfg)
    assert [o.name for o in model.graph.output] == ["output", "feat"]
    assert info.nodes[0]["tensor"] == "feat" and info.nodes[0]["clean_tensor"] != "feat"
    x = np.random.default_rng(2).random((2, 3, 6, 5), dtype=np.float32)
    f = infer(clean, x)["feat"]
    got = infer(model, x)
    assert rel_err(got["feat"], asvp_reference(torch.from_numpy(f), cfg)) < TOL
    assert not np.allclose(got["output"], infer(clean, x)["output"])
    clean_feat = infer(with_outputs(model, [info.nodes[0]["clean_tensor"]]), x)[info.nodes[0]["clean_tensor"]]
    assert np.array_equal(clean_feat, f)


# ---- refusals ------------------------------------------------------------------------------------------

def rank3_model() -> onnx.ModelProto:
    from onnx import TensorProto, helper

    w = np.ones((8, 3, 1, 1), np.float32)
    g = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["c"], name="conv"),
         helper.make_node("Reshape", ["c", "s3"], ["flat"], name="flatten"),
         helper.make_node("Reshape", ["flat", "s4"], ["output"], name="unflatten")],
        "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 8, 4, 4])],
        [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(np.array([1, 8, 16]), "s3"),
         onnx.numpy_helper.from_array(np.array([1, 8, 4, 4]), "s4")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("kwargs, msg", [
    (dict(selectors=["flatten"]), "rank-3"),
    (dict(config=AsvpConfig(k=8)), "smaller than the channel count"),
    (dict(config=AsvpConfig(h=0.0)), "h must be > 0"),
    (dict(config=AsvpConfig(h=-1.0)), "h must be > 0"),
    (dict(config=AsvpConfig(h=float("nan"))), "finite"),
    (dict(config=AsvpConfig(h=float("inf"))), "finite"),
    (dict(config=AsvpConfig(tau=float("nan"))), "tau"),
    (dict(config=AsvpConfig(iters=0)), "iters"),
    (dict(selectors=["nope"]), "asvp nodes"),
    (dict(mode="cuda"), "mode must be one of"),
])
def test_refusals(kwargs, msg):
    with pytest.raises(AsvpError, match=msg):
        defend_model(rank3_model(), **kwargs)


def test_defending_twice_needs_allow_redefend(exported):
    clean = onnx.load(exported("sr"))
    once, info = defend_model(clean, ["Relu#1"], AsvpConfig())
    with pytest.raises(AsvpError, match="already defended.*allow-redefend"):
        defend_model(once, ["Relu#1"], AsvpConfig())
    with pytest.raises(AsvpError, match="inserted ASVP block"):
        defend_model(once, [next(n.name for n in once.graph.node if n.name.startswith("asvp/"))], AsvpConfig())
    other, _ = defend_model(once, ["Relu#0"], AsvpConfig())  # another node is fine
    twice, info2 = defend_model(once, ["Relu#1"], AsvpConfig(h=2.0), allow_redefend=True)
    assert info2.nodes[0]["block"] != info.nodes[0]["block"]
    recs = json.loads({p.key: p.value for p in twice.metadata_props}["asvp.nodes"])
    assert [r["node"] for r in recs] == [info.nodes[0]["node"]] * 2
    x = heldout("sr")[:1]
    assert np.all(np.isfinite(infer(twice, x)["output"]))


# ---- tools --------------------------------------------------------------------------------------------

def test_polygraphy_runs_the_defended_model(exported, tmp_path):
    out = tmp_path / "sr.asvp.onnx"
    api.defend(exported("sr"), out)
    poly = Path(sys.executable).with_name("polygraphy")
    res = subprocess.run([str(poly), "run", str(out), "--onnxrt", "--input-shapes", "input:[1,3,24,24]"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "PASSED" in res.stdout + res.stderr


def test_api_defend_result(exported, tmp_path):
    out = tmp_path / "d.onnx"
    res = api.defend(exported("sr"), out, nodes=["Conv#2"], config={"k": 3, "placement": "tap"})
    d = res.to_dict()
    assert set(d) == {"path", "mode", "placement", "nodes", "config", "digest"}
    assert d["path"] == str(out) and out.exists() and d["placement"] == "tap" and d["config"]["k"] == 3
    assert d["digest"] == AsvpConfig(k=3, placement="tap").digest()
    with pytest.raises(AsvpError, match="unknown config field"):
        api.defend(exported("sr"), tmp_path / "e.onnx", config={"kk": 3})
    assert not (tmp_path / "e.onnx").exists()


def test_cli_defend(exported, tmp_path, capsys):
    src = exported("sr")
    out = tmp_path / "cli.onnx"
    assert cli.main(["defend", src, "-o", str(out), "--k", "3", "--h", "2", "--placement", "tap", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["path"] == str(out) and d["config"]["h"] == 2.0 and d["nodes"][0]["tap_output"] == "asvp_tap_0"
    assert onnx.load(str(out)).graph.output[-1].name == "asvp_tap_0"
    assert cli.main(["defend", src, "-o", str(tmp_path / "plain.onnx"), "--nodes", "Relu#0", "Conv#-1"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("wrote ") and printed.count("\n") == 1


@pytest.mark.parametrize("args", [["--k", "32"], ["--h", "nan"], ["--h", "0"], ["--tau", "inf"], ["--nodes", "/nope"],
                                  ["--nodes", "re:("], ["--iters", "0"]])
def test_cli_bad_inputs(exported, tmp_path, capsys, args):
    out = tmp_path / "bad.onnx"
    assert cli.main(["defend", exported("sr"), "-o", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("asvp: error: ") and err.count("\n") == 1
    assert not out.exists() and not list(tmp_path.iterdir())


def test_cli_missing_model(tmp_path, capsys):
    assert cli.main(["defend", str(tmp_path / "none.onnx"), "-o", str(tmp_path / "o.onnx")]) == 2
    assert "not found" in capsys.readouterr().err and not (tmp_path / "o.onnx").exists()

"""Issue 27 (items 3-7): candidate analysis on real-model shapes: fixed-size models are probed at their own size,
attention projections are told by the graph's structure, the node producing the output image is refused, NHWC
models are refused in one line, and padded features are labelled with what is true (`ceil(H/8)*8`)."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from asvp import api
from asvp.cli import main
from asvp.errors import AsvpError
from asvp.graph_passes import select
from asvp.graph_passes.candidates import ATTENTION_PROBLEM, classify


def _export(model: nn.Module, path, shape=(1, 3, 24, 24), dynamic: bool = True) -> str:
    dyn = {"input": {0: "N", 2: "H", 3: "W"}, "output": {0: "N", 2: "Ho", 3: "Wo"}} if dynamic else None
    torch.onnx.export(model.eval(), (torch.rand(*shape),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["output"], dynamic_axes=dyn)
    return str(path)


class ChannelAttention(nn.Module):
    """Restormer's transposed attention: a 1x1 conv and a depthwise conv make q, k, v as [N, C, H, W] maps."""

    def __init__(self, c: int = 8, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.qkv_dw = nn.Conv2d(3 * c, 3 * c, 3, padding=1, groups=3 * c)
        self.proj = nn.Conv2d(c, c, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv_dw(self.qkv(x)).chunk(3, dim=1)
        q, k, v = (t.reshape(b, self.heads, c // self.heads, h * w) for t in (q, k, v))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).reshape(b, c, h, w))


class Mixer(nn.Module):
    """A transformer-like restorer whose module names say nothing of attention ("mixer"), so only the graph's
    structure can tell its q/k/v maps (24 channels: the widest, so once the automatic choice) from features."""

    def __init__(self):
        super().__init__()
        self.head = nn.Conv2d(3, 8, 3, padding=1)
        self.mixer = ChannelAttention()
        self.ffn = nn.Sequential(nn.Conv2d(8, 16, 1), nn.GELU(), nn.Conv2d(16, 8, 1))
        self.tail = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x):
        f = self.head(x)
        f = f + self.mixer(f)
        f = f + self.ffn(f)
        return x + self.tail(f)


def test_attention_projections_are_told_by_structure(tmp_path):
    torch.manual_seed(0)
    model = onnx.load(_export(Mixer(), tmp_path / "mixer.onnx"))
    rows = {c.name: p for c, p in classify(model)}
    assert rows["/mixer/qkv/Conv"] == ATTENTION_PROBLEM and rows["/mixer/qkv_dw/Conv"] == ATTENTION_PROBLEM, rows
    cands = select.candidates(model)
    assert "/mixer/proj/Conv" in [c.name for c in cands]  # the attention's output projection is a feature
    assert not any("qkv" in c.name for c in cands)
    (auto,) = select.resolve(model, None)
    assert "qkv" not in auto.name and auto.channels == 16  # the feed-forward's hidden map, not q/k/v (24)


class Refiner(nn.Module):
    """A 4-channel image model (RGB + alpha) whose features are 4 channels wide too: the last conv and the residual
    sum produce the output image (C = the output's 4) and must never be chosen."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(4, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return torch.clamp(x + self.b(torch.relu(self.a(x))), 0, 1)


def test_output_image_node_is_never_chosen(tmp_path):
    torch.manual_seed(0)
    path = _export(Refiner(), tmp_path / "r.onnx", (1, 4, 16, 16))
    model = onnx.load(path)
    rows = {c.name: p for c, p in classify(model)}
    assert "produces the output image" in rows["/b/Conv"] and "produces the output image" in rows["/Add"], rows
    (auto,) = select.resolve(model, None)
    assert auto.name == "/Relu"
    with pytest.raises(AsvpError, match="produces the output image"):
        select.resolve(model, ["/Add"])
    (forced,) = select.resolve(model, ["/Add"], force_nodes=True)  # experts may insist
    assert forced.name == "/Add"
    # the CLI's one-line refusal (the bundled sr teacher's `--nodes output`) is a row of tests/cli/test_bad_input.py


class Windowed(nn.Module):
    """Window partition and reverse with the sizes as Python ints (as window transformers trace): exported without
    dynamic axes, its Reshapes hold the export size, so it runs at that size only."""

    def __init__(self):
        super().__init__()
        self.head = nn.Conv2d(3, 8, 3, padding=1)
        self.mix = nn.Linear(8, 8)
        self.tail = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x):
        f = self.head(x)
        b, c, h, w = (int(s) for s in f.shape)
        win = f.reshape(b, c, h // 4, 4, w // 4, 4).permute(0, 2, 4, 3, 5, 1).reshape(-1, 16, c)
        win = self.mix(win)
        f = f + win.reshape(b, h // 4, w // 4, 4, 4, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, h, w)
        return self.tail(f)


def test_fixed_size_model_is_probed_at_its_own_size(tmp_path, capfd):
    torch.manual_seed(0)
    path = _export(Windowed(), tmp_path / "w.onnx", (1, 3, 16, 24), dynamic=False)
    capfd.readouterr()
    assert main(["nodes", path, "--json"]) == 0
    out, err = capfd.readouterr()
    assert err == ""  # ONNX Runtime's errors from the failed probes at other sizes stay silent
    nodes = {n["name"]: n for n in json.loads(out)}
    assert nodes["/Add"]["shape"] == [1, 8, 16, 24] and nodes["/head/Conv"]["shape"] == [1, 8, 16, 24]
    res = api.defend(path, tmp_path / "w.asvp.onnx")
    assert res.nodes[0]["node"] == "/Add"


def _nhwc_model(path) -> str:
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [8, 3, 3, 3], np.zeros(8 * 27, np.float32).tolist())
    nodes = [helper.make_node("Transpose", ["input"], ["x"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["x", "w"], ["output"], pads=[1, 1, 1, 1])]
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", "H", "W", 3])
    g = helper.make_graph(nodes, "nhwc", [x],
                          [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


def test_nhwc_model_is_refused_in_one_line(tmp_path, capfd):
    path = _nhwc_model(tmp_path / "nhwc.onnx")
    for argv in (["nodes", path], ["defend", path, "-o", str(tmp_path / "d.onnx")]):
        assert main(argv) == 2
        err = capfd.readouterr().err
        assert err.count("\n") == 1 and "NHWC" in err and "NCHW" in err, err
    assert not (tmp_path / "d.onnx").exists()


class Padded(nn.Module):
    """Pads the input to a multiple of 8 inside and crops the output back (as OmniSR and RealCUGAN do)."""

    def __init__(self):
        super().__init__()
        self.head = nn.Conv2d(3, 8, 3, padding=1)
        self.down = nn.Conv2d(8, 8, 2, stride=2)
        self.tail = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x):
        h, w = x.shape[2:]
        f = self.head(F.pad(x, (0, (8 - w % 8) % 8, 0, (8 - h % 8) % 8), mode="reflect"))
        f = f + F.interpolate(self.down(f), scale_factor=2.0)
        return x + self.tail(f)[:, :, :h, :w]


def test_padded_features_are_labelled_as_padded(tmp_path, capsys):
    torch.manual_seed(0)
    path = _export(Padded(), tmp_path / "p.onnx", (1, 3, 29, 50))
    assert main(["nodes", path]) == 0
    table = capsys.readouterr().out
    assert "[N, 8, ceil(H/8)*8, ceil(W/8)*8]" in table and "[N, 8, ceil(H/8)*4, ceil(W/8)*4]" in table, table


def test_dim_labels():
    from asvp.graph_passes.probe import dim_label

    assert dim_label([(32, 32), (96, 96), (33, 33)], "H") == "H"
    assert dim_label([(32, 64), (96, 192), (33, 66)], "H") == "2*H"
    assert dim_label([(32, 32), (96, 96), (33, 40)], "H") == "ceil(H/8)*8"
    assert dim_label([(32, 64), (96, 128), (33, 64)], "H") == "ceil(H/64)*64"
    assert dim_label([(32, 16), (96, 48), (33, 17)], "H") == "ceil(H/2)"
    assert dim_label([(32, 34), (96, 98), (33, 35)], "H") == "H + 2"
    assert dim_label([(32, 32), (96, 96)], "W") == "W"  # without the off-multiple probe: what was measured


def _spandrel(name: str) -> nn.Module:
    from asvp.exporter.spandrel_loader import import_spandrel

    import_spandrel()
    import spandrel.architectures as A

    torch.manual_seed(0)
    return {"OmniSR": lambda: A.OmniSR.OmniSR(num_feat=16, block_num=1, window_size=8, res_num=1, up_scale=2),
            "KBNet": lambda: A.KBNet.KBNet_l(dim=24, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1,
                                             heads=[1, 1, 1, 1]),
            "SeemoRe": lambda: A.SeemoRe.SeemoRe(scale=2, num_experts=2, num_layers=1, embedding_dim=16,
                                                 global_kernel_size=5)}[name]()


@pytest.mark.slow
@pytest.mark.parametrize("arch,projection", [("OmniSR", "qkv_dwconv"), ("KBNet", "qkv_dwconv"), ("SeemoRe", "to_qv")])
def test_real_attention_projections_are_not_candidates(tmp_path, arch, projection):
    """OmniSR's and KBNet's (Restormer's) q/k/v convolutions, laid out N,C,H,W and the widest maps of their blocks,
    are refused by structure (KBNet's sit in a module named `ffn`); SeemoRe's `to_qv` (a product, no Softmax)
    by its name."""
    model = onnx.load(_export(_spandrel(arch), tmp_path / "m.onnx", (1, 3, 32, 40)))
    rows = [(c, p) for c, p in classify(model) if f"/{projection}/" in c.name]
    assert rows and all(p for _, p in rows), [(c.name, p) for c, p in rows if not p]
    if arch != "SeemoRe":
        assert all(p == ATTENTION_PROBLEM for _, p in rows)
    (auto,) = select.resolve(model, None)
    assert "qkv" not in auto.name and "to_qv" not in auto.name, auto.name


def test_validate_measures_a_padded_tap(tmp_path):
    """Validation reads the tap and the clean model's same tensor at the padded size (32 x 56 for a 29 x 50 image):
    a padded tap is measured like any other."""
    from skimage import io

    torch.manual_seed(0)
    clean = _export(Padded(), tmp_path / "p.onnx", (1, 3, 29, 50))
    res = api.defend(clean, tmp_path / "p.asvp.onnx", nodes=["/Add"])
    rng = np.random.default_rng(0)
    for sub in ("input", "target"):
        (tmp_path / "pairs" / sub).mkdir(parents=True)
        for i in range(2):
            io.imsave(tmp_path / "pairs" / sub / f"img{i}.png", (rng.random((29, 50, 3)) * 255).astype(np.uint8),
                      check_contrast=False)
    out = api.validate(clean, res.path, task="underwater", images=tmp_path / "pairs", progress=False)
    (tap,) = out.tap
    assert out.output_max_abs_diff == 0.0 and tap["rel_change"]["mean"] > 0
    assert out.per_image[0]["input_shape"] == [1, 3, 29, 50]


def test_feature_attack_aligns_to_a_padded_tap():
    """The attacker's feature distillation matches a padded teacher feature (32 x 56 for a 29 x 50 query) to the
    student layer of the image's size, on the top-left crop where the image is (the padding goes bottom/right)."""
    from asvp.runtime.evaluation.students import (TrainBudget, build_student, match_hints, student_points,
                                                  train_student)

    rng = np.random.default_rng(0)
    x = rng.random((4, 3, 29, 50), dtype=np.float32)
    feat = rng.random((4, 8, 32, 56), dtype=np.float32)
    meta = [{"name": "/Add", "hw": (32, 56), "depth": 0.5}]
    student = build_student("underwater", 0, "default")
    (name,) = match_hints(student, (1, 3, 29, 50), [{**meta[0], "channels": 8}])
    assert dict(student_points(student, (1, 3, 29, 50)))[name][2:] == (29, 50)
    _, record = train_student("underwater", x, x, seed=0, budget=TrainBudget(steps=2, batch=2), feats=[feat],
                              feat_meta=meta, progress=False)
    assert record["hint_layers"] == [{"teacher": "/Add", "student": name}]

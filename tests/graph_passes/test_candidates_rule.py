"""Issue 12: candidates are real spatial feature maps (computed from the image, [N, C, H', W'] with H'/W' following
the input), never weights, constants or attention tensors; explicit non-features are refused unless force_nodes;
grey and multi-channel images and models with extra inputs are accepted by `nodes` and `defend`."""
from __future__ import annotations

import onnx
import pytest
import torch
from torch import nn

from asvp import api
from asvp.cli import main
from asvp.errors import AsvpError
from asvp.graph_passes import select
from asvp.graph_passes.candidates import classify


def _export(model: nn.Module, path, inputs: dict, fold: bool = True) -> str:
    """torch -> ONNX with dynamic N/H/W on every rank-4 input (the TorchScript exporter, as `asvp export`)."""
    names = list(inputs)
    dyn = {n: {0: "N", 2: "H", 3: "W"} for n, t in inputs.items() if t.ndim == 4 and t.shape[-1] > 1}
    dyn["out"] = {0: "N", 2: "Ho", 3: "Wo"}
    torch.onnx.export(model.eval(), tuple(inputs.values()), str(path), dynamo=False, opset_version=17,
                      input_names=names, output_names=["out"], dynamic_axes=dyn, do_constant_folding=fold)
    return str(path)


class WithConstants(nn.Module):
    """A conv net whose graph also holds learned rank-4 parameters used elementwise (as NAFNet's beta/gamma)."""

    def __init__(self, cin: int = 3):
        super().__init__()
        self.head = nn.Conv2d(cin, 8, 3, padding=1)
        self.beta = nn.Parameter(torch.rand(1, 8, 1, 1))
        self.mask = nn.Parameter(torch.rand(1, 8, 4, 4))  # a constant "attention mask"-like map
        self.tail = nn.Conv2d(8, cin, 3, padding=1)

    def forward(self, x):
        f = torch.relu(self.head(x)) * (self.beta + 1.0)
        g = self.mask.mean(dim=(2, 3), keepdim=True) + f
        return self.tail(g)


class Denoiser(nn.Module):
    """Image + a noise map (FFDNet-style): C_img + 1 channels in, C_img out."""

    def __init__(self, cin: int = 3):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin + 1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, cin, 3, padding=1))

    def forward(self, x, sigma):
        return x - self.body(torch.cat([x, sigma], 1))


def test_weights_and_constants_are_not_candidates(tmp_path):
    torch.manual_seed(0)
    path = _export(WithConstants(), tmp_path / "c.onnx", {"input": torch.rand(1, 3, 16, 16)}, fold=False)
    model = onnx.load(path)
    cands = select.candidates(model)
    assert cands and all(c.shape[0] == "N" for c in cands)
    inits = {i.name for i in model.graph.initializer}
    assert not any(c.output in inits for c in cands)
    rows = classify(model)
    refused = [(c, p) for c, p in rows if p and "not computed from the image" in p]
    assert refused, "the learned parameters must be seen and refused"
    victim = refused[0][0]
    with pytest.raises(AsvpError, match="not a feature map"):
        select.resolve(model, [victim.name or victim.output])
    # experts may insist (rank 4, fixed C): the exact name is then taken
    if len(victim.shape) == 4 and victim.channels >= 4:
        (forced,) = select.resolve(model, [victim.name or victim.output], force_nodes=True)
        assert forced.output == victim.output


@pytest.fixture(scope="module")
def swinir_batch1(tmp_path_factory):
    """A small random SwinIR exported by hand with batch 1 (what the issue saw): window attention inside."""
    from asvp.exporter.spandrel_loader import import_spandrel

    import_spandrel()
    from spandrel.architectures.SwinIR import SwinIR

    torch.manual_seed(0)
    m = SwinIR(img_size=16, embed_dim=12, depths=[1], num_heads=[2], window_size=4, upscale=2,
               upsampler="pixelshuffledirect", mlp_ratio=2.0)
    return _export(m, tmp_path_factory.mktemp("swinir") / "s.onnx", {"input": torch.rand(1, 3, 24, 24)})


def test_attention_tensors_are_never_candidates(swinir_batch1, tmp_path):
    model = onnx.load(swinir_batch1)
    cands = select.candidates(model)
    assert cands
    assert not any("attn" in c.name for c in cands), [c.name for c in cands]
    assert all(c.shape[0] == "N" and c.channels == 12 for c in cands), [(c.name, c.shape) for c in cands]
    attn = [c for c, p in classify(model) if "attn" in c.name and p]
    assert attn, "the attention tensors are rank 4 here and must be refused, with a reason"
    (auto,) = select.resolve(model, None)
    assert "attn" not in auto.name
    out = tmp_path / "d.onnx"
    with pytest.raises(AsvpError, match="not a feature map"):
        api.defend(swinir_batch1, out, nodes=[attn[0].name])
    assert not out.exists()


def test_grey_model_nodes_and_defend(tmp_path, capsys):
    torch.manual_seed(0)
    path = _export(nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 3, padding=1)),
                   tmp_path / "grey.onnx", {"input": torch.rand(1, 1, 16, 16)})
    assert main(["nodes", path]) == 0
    assert "[N, 8, H, W]" in capsys.readouterr().out
    res = api.defend(path, tmp_path / "grey.asvp.onnx")
    assert res.nodes and res.nodes[0]["channels"] == 8
    # validate feeds RGB images: it says so in one line
    assert main(["validate", path, str(tmp_path / "grey.asvp.onnx"), "--task", "sr"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "RGB" in err and "asvp defend" in err


@pytest.mark.parametrize("cin", [3, 1])
def test_extra_input_models(tmp_path, capsys, cin):
    torch.manual_seed(0)
    path = _export(Denoiser(cin), tmp_path / "dn.onnx",
                   {"image": torch.rand(1, cin, 16, 16), "sigma": torch.rand(1, 1, 16, 16)})
    if cin == 3:  # the 3-channel input is the image
        nodes = api.list_nodes(path)
    else:  # two grey inputs: which one is the image cannot be told; --input names it
        with pytest.raises(AsvpError, match="--input"):
            api.list_nodes(path)
        with pytest.raises(AsvpError, match="no input named"):
            api.list_nodes(path, input_name="nope")
        nodes = api.list_nodes(path, input_name="image")
    assert nodes and any(n.channels == 8 for n in nodes) and all(n.shape[0] == "N" for n in nodes)
    out = tmp_path / "dn.asvp.onnx"
    assert main(["defend", path, "-o", str(out), "--input", "image"]) == 0
    d = onnx.load(out)
    assert [i.name for i in d.graph.input] == ["image", "sigma"]
    capsys.readouterr()
    # profile and validate run single-input models only, and say so in one line
    assert main(["profile", path, "--shape", "1x3x16x16", "--memory", "off", "--iters", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exactly one input" in err


def test_noise_level_scalar_input_is_not_the_image(tmp_path):
    class LevelNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.out = nn.Conv2d(8, 3, 3, padding=1)

        def forward(self, x, level):  # level: [N, 1, 1, 1]
            return self.out(torch.relu(self.conv(x)) * level)

    torch.manual_seed(0)
    path = _export(LevelNet(), tmp_path / "lv.onnx", {"input": torch.rand(1, 3, 16, 16), "level": torch.rand(1, 1, 1, 1)})
    nodes = api.list_nodes(path)
    assert [n.channels for n in nodes] and all(n.channels == 8 for n in nodes)


def test_fixed_size_model_is_probed_at_its_size_and_else_read_symbolically(tmp_path, monkeypatch):
    """A model exported at one fixed size, with a constant Reshape inside, cannot run at the probe sizes: it is
    probed at its own size (issue 27: the map after the Reshape is then a 16x16 feature, shown with its numbers).
    A model ONNX Runtime cannot run at all is read from ONNX Runtime's symbolic shapes (the
    input's fixed N/H/W made symbolic), where the map after the constant Reshape is not tied to the input."""
    class Fixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1)
            self.b = nn.Conv2d(8, 3, 3, padding=1)

        def forward(self, x):
            f = torch.relu(self.a(x))
            return self.b(f.reshape(1, 8, 16, 16) * 2.0)

    torch.manual_seed(0)
    path = tmp_path / "fixed.onnx"
    torch.onnx.export(Fixed().eval(), (torch.rand(1, 3, 16, 16),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["out"])  # no dynamic axes at all
    model = onnx.load(path)
    from asvp.graph_passes.probe import probe_shapes
    from asvp.graph_passes.symbolic import analysis_copy

    m, name, _ = analysis_copy(model)
    assert probe_shapes(m, name, [model.graph.node[0].output[0]]).shapes is None  # cannot run at other sizes
    assert probe_shapes(m, name, [model.graph.node[0].output[0]], batch2=False,
                        fixed_hw=(16, 16)).fixed
    cands = {c.name: c for c in select.candidates(model)}
    mul = next(n for n in cands if "Mul" in n)
    assert cands[mul].shape == (1, 8, 16, 16) and cands["/a/Conv"].shape == (1, 8, 16, 16)

    from asvp.graph_passes import candidates
    from asvp.graph_passes.probe import Probe

    monkeypatch.setattr(candidates, "probe_shapes", lambda *a, **k: Probe(None, why="it cannot run"))
    rows = {c.name: p for c, p in classify(model)}
    before = [n for n, p in rows.items() if p is None]
    assert before and all("Reshape" not in n and "Mul" not in n for n in before), rows
    assert any(p and "not tied to the input" in p for n, p in rows.items() if "Mul" in n), rows

"""Issue 12: third-party restorers (spandrel architectures, small random-weight configurations built here, saved as a
state dict and exported through `asvp export x.pth`) export with parity at several sizes and batch 2 (or say
exactly which static option they need), list only feature maps, and defend.

Sizes are kept small for CI (2 CPU cores): one residual group / block per stage, embed dims 8-32 (SCUNet's
smallest: 64, its attention heads are 32 wide and it splits the channels in two).
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from asvp import api
from asvp.cli import main
from asvp.errors import AsvpError
from asvp.exporter.spandrel_loader import import_spandrel
from asvp.onnx_utils import get_metadata
from asvp.options import ExportOptions


def _arch(name: str):
    import_spandrel()
    import spandrel.architectures as A

    torch.manual_seed(0)
    return {
        "SwinIR": lambda: A.SwinIR.SwinIR(img_size=16, embed_dim=12, depths=[1], num_heads=[2], window_size=4,
                                          upscale=2, upsampler="pixelshuffledirect", mlp_ratio=2.0),
        "HAT": lambda: A.HAT.HAT(img_size=16, embed_dim=12, depths=[1], num_heads=[2], window_size=4, upscale=2,
                                 compress_ratio=3, squeeze_factor=4, mlp_ratio=2.0),
        "DAT": lambda: A.DAT.DAT(img_size=16, embed_dim=32, depth=[2], num_heads=[2], split_size=[2, 4], upscale=2,
                                 expansion_factor=2.0),
        "SCUNet": lambda: A.SCUNet.SCUNet(config=[1, 1, 1, 1, 1, 1, 1], dim=64),
        "NAFNet": lambda: A.NAFNet.NAFNet(width=8, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1]),
        "ESRGAN": lambda: A.ESRGAN.ESRGAN(num_filters=8, num_blocks=1, scale=2),
        "RealESRGAN Compact": lambda: A.Compact.Compact(num_feat=8, num_conv=2, upscale=2),
        "SPAN": lambda: A.SPAN.SPAN(num_in_ch=3, num_out_ch=3, feature_channels=8, upscale=2),
    }[name]()


# architecture -> (extra `asvp export` flags it needs, scale, minimum side). The flags are what the export's own
# error message asks for. SwinIR, HAT and DAT turn the batch size into a Python int in their window code; they
# keep a dynamic batch through their export patches (exporter/patches.py, tests/exporter/test_patches.py).
ARCHS = {
    "SwinIR": ([], 2, None),
    "HAT": ([], 2, 16),
    "DAT": ([], 2, 16),
    "SCUNet": ([], 1, 40),
    "NAFNet": ([], 1, None),
    "ESRGAN": ([], 2, None),
    "RealESRGAN Compact": ([], 2, None),
    "SPAN": ([], 2, None),
}


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(ARCHS))
def test_spandrel_architecture_exports_lists_and_defends(tmp_path, capsys, arch):
    flags, scale, minimum = ARCHS[arch]
    pth, onnx_path, defended = tmp_path / "m.pth", tmp_path / "m.onnx", tmp_path / "m.asvp.onnx"
    torch.save(_arch(arch).state_dict(), pth)
    assert main(["export", str(pth), "-o", str(onnx_path), "--json", *flags]) == 0, capsys.readouterr().err
    import json

    res = json.loads(capsys.readouterr().out)
    meta = get_metadata(onnx.load(onnx_path))
    assert res["teacher"] == f"spandrel:{arch}" and res["scale"] == scale
    assert meta["asvp.exporter"] == res["exporter"] in ("torchscript", "dynamo")
    shapes = [tuple(s) for s in res["parity_inputs"]]
    assert any(s[0] == 1 and s[2] != s[3] for s in shapes)  # non-square
    assert any(s[2] % 2 and s[3] % 2 for s in shapes)  # odd sides
    assert (2 in {s[0] for s in shapes}) == ("--static-batch" not in flags)
    if minimum:
        assert int(meta["asvp.min_size"]) == minimum and min(min(s[2:]) for s in shapes) >= minimum

    nodes = api.list_nodes(onnx_path)
    assert nodes, "no candidate feature map"
    assert all(n.shape[0] == ("N" if "--static-batch" not in flags else 1) and n.channels >= 4 for n in nodes)
    assert not any("attn" in n.name.lower() for n in nodes), [n.name for n in nodes if "attn" in n.name.lower()]
    out = api.defend(onnx_path, defended)
    assert out.nodes and out.nodes[0]["tap_output"]
    onnx.checker.check_model(onnx.load(defended), full_check=True)

    # the defended model runs at a size the export never traced; tap placement leaves the output bit-identical
    n, _, h, w = shapes[-1]
    x = np.random.default_rng(0).random((n, 3, h + 2, w + 3), dtype=np.float32)
    if minimum:
        x = np.random.default_rng(0).random((n, 3, max(h, minimum) + 2, max(w, minimum) + 3), dtype=np.float32)
    clean = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    outs = ort.InferenceSession(str(defended), providers=["CPUExecutionProvider"]).run(None, {"input": x})
    assert np.array_equal(outs[0], clean)
    assert outs[1].shape[0] == n and np.isfinite(outs[1]).all()


class BakesTheBatch(torch.nn.Module):
    """Turns the batch into a Python int, as windowed transformers do, with no export patch registered for it."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        b = int(x.shape[0])
        return self.conv(x).reshape(b, -1).reshape(b, 3, x.shape[2], x.shape[3])


def test_batch_baked_export_names_the_batch_and_the_option(tmp_path):
    from asvp.exporter.export import export_model

    with pytest.raises(AsvpError, match=r"parity fails at 2x3x\d+x\d+ .*--static-batch") as e:
        export_model(BakesTheBatch(), tmp_path / "s.onnx", teacher="t", exporter="torchscript")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "s.onnx").exists()


def test_static_size_fixes_height_and_width(tmp_path):
    pth = tmp_path / "c.pth"
    torch.save(_arch("RealESRGAN Compact").state_dict(), pth)
    res = api.export(str(pth), tmp_path / "c.onnx", ExportOptions(static_size="40x48", static_batch=True))
    m = onnx.load(res.path)
    dims = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 40, 48] and res.dynamic == []
    assert [tuple(s) for s in res.parity_inputs] == [(1, 3, 40, 48)]
    with pytest.raises(AsvpError, match="static-size"):
        api.export(str(pth), tmp_path / "d.onnx", ExportOptions(static_size="40by48"))


class NeedsSixteen(torch.nn.Module):
    """A user model that refuses inputs smaller than 24 pixels (as window models do)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        if x.shape[-1] < 24 or x.shape[-2] < 24:
            raise ValueError("input too small")
        return self.conv(x)


def test_minimum_size_is_detected(tmp_path):
    from asvp.exporter.export import export_model
    from asvp.exporter.parity import detect_min_size

    model = NeedsSixteen().eval()
    assert detect_min_size(model, 1) == 24
    assert detect_min_size(model, 16) == 32
    res = export_model(model, tmp_path / "n.onnx", teacher="t")
    assert res.min_size == 24 and get_metadata(onnx.load(res.path))["asvp.min_size"] == "24"


def test_dynamo_exporter_on_request(tmp_path):
    """torch's dynamo exporter (onnxscript) is used when asked, recorded in the metadata, with the same parity."""
    pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript (pip install 'asvp[dynamo]')")
    pth = tmp_path / "c.pth"
    torch.save(_arch("RealESRGAN Compact").state_dict(), pth)
    res = api.export(str(pth), tmp_path / "c.onnx", ExportOptions(exporter="dynamo"))
    m = onnx.load(res.path)
    assert res.exporter == "dynamo" and get_metadata(m)["asvp.exporter"] == "dynamo"
    assert res.dynamic == ["N", "H", "W"] and 2 in {s[0] for s in res.parity_inputs}
    assert res.opset == max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 18
    assert api.list_nodes(res.path)


def test_onnxruntime_failure_in_parity_is_one_line(tmp_path):
    """DAT with a tiny embedding normalises over zero features in one layer: torch accepts it, ONNX Runtime refuses.
    The export says so in one line (it used to end in an ONNX Runtime traceback), and writes nothing."""
    import_spandrel()
    import spandrel.architectures as A

    torch.manual_seed(0)
    net = A.DAT.DAT(img_size=16, embed_dim=16, depth=[2], num_heads=[2], split_size=[2, 4], upscale=2,
                    expansion_factor=2.0)
    pth = tmp_path / "d.pth"
    torch.save(net.state_dict(), pth)
    with pytest.raises(AsvpError, match=r"ONNX Runtime fails.*LayerNormalization.*traced shape itself") as e:
        api.export(str(pth), tmp_path / "d.onnx", ExportOptions(exporter="torchscript", static_batch=True))
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.pth"]

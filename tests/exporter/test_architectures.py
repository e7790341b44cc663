"""Issue 12: the export of third-party restorers (spandrel architectures, tiny random-weight configurations from
benchmarks/tiny_architectures.py) names the static option it needs, fixes sizes on request, detects a minimum
size, uses dynamo on request and reports ONNX Runtime failures in one line.

That each architecture exports, lists only feature maps, defends and matches torch is the architecture table's
test (tests/exporter/test_architecture_table.py, one harness run for every architecture).
"""
from __future__ import annotations

import onnx
import pytest
import torch

from asvp import api
from asvp.errors import AsvpError
from asvp.exporter.spandrel_loader import import_spandrel
from asvp.onnx_utils import get_metadata
from asvp.options import ExportOptions

from benchmarks.tiny_architectures import build


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
    torch.save(build("RealESRGAN Compact").state_dict(), pth)
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
    torch.save(build("RealESRGAN Compact").state_dict(), pth)
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

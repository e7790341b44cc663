"""Issue 27.10: export patches (exporter/patches.py) keep the batch dynamic for windowed transformers.

Each patched function computes what the architecture's own does; each patched architecture (tiny random-weight
configurations of spandrel's classes) traced under its patch matches torch in ONNX Runtime at batch 1, 2 and 3
within 1e-4, and records its patch. The originals are back after the trace, whatever happens.
"""
from __future__ import annotations

import importlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from asvp.exporter.export import export_model
from asvp.exporter.parity import PARITY_ATOL, photo_batch
from asvp.exporter.patches import PATCHES, patched, patches_for, window_reverse, windows2img
from asvp.exporter.spandrel_loader import import_spandrel
from asvp.onnx_utils import get_metadata


def _spandrel():
    import_spandrel()
    import spandrel.architectures as A

    return A


def _tiny(arch: str) -> torch.nn.Module:
    A = _spandrel()
    torch.manual_seed(0)
    swin = dict(img_size=16, embed_dim=12, depths=[1], num_heads=[2], window_size=4, upscale=2, mlp_ratio=2.0)
    split = dict(img_size=16, embed_dim=32, num_heads=[2], split_size=[2, 4], upscale=2)  # 32: see deploy.md (DAT)
    return {
        "SwinIR": lambda: A.SwinIR.SwinIR(upsampler="pixelshuffledirect", **swin),
        "HAT": lambda: A.HAT.HAT(compress_ratio=3, squeeze_factor=4, **swin),
        "Swin2SR": lambda: A.Swin2SR.Swin2SR(upsampler="pixelshuffledirect", **swin),
        "DRCT": lambda: A.DRCT.DRCT(gc=8, upsampler="pixelshuffle", **swin),  # without an upsampler: identity
        "DAT": lambda: A.DAT.DAT(depth=[2], expansion_factor=2.0, **split),
        "RGT": lambda: A.RGT.RGT(depth=[1], mlp_ratio=2.0, **split),
    }[arch]().eval()


def _module(arch: str):
    return importlib.import_module(next(p.module for p in PATCHES if p.architecture == arch))


@pytest.mark.parametrize("arch, fname", [(p.architecture, f) for p in PATCHES for f in p.functions])
def test_patched_function_computes_the_original(arch, fname):
    _spandrel()
    original = getattr(_module(arch), fname)
    replacement = {"window_reverse": window_reverse, "windows2img": windows2img}[fname]
    for batch in (1, 2, 3):
        if fname == "window_reverse":  # (B * 3 * 2 windows of 4 x 4, C) -> (B, 12, 8, C)
            args = (torch.rand(batch * 6, 4, 4, 5), 4, 12, 8)
        else:  # (B * 3 * 2 windows of 4 x 2 pixels, C) -> (B, 12, 4, C)
            args = (torch.rand(batch * 6, 8, 5), 4, 2, 12, 4)
        assert torch.equal(replacement(*args), original(*args))


def test_patches_are_found_by_the_models_own_module_and_restored():
    A = _spandrel()
    assert [p.architecture for p in patches_for(_tiny("SwinIR"))] == ["SwinIR"]
    assert patches_for(A.Compact.Compact(num_feat=8, num_conv=2, upscale=2)) == []
    module = _module("HAT")
    original = module.window_reverse
    with pytest.raises(RuntimeError, match="boom"), patched(patches_for(_tiny("HAT"))):
        assert module.window_reverse is window_reverse
        raise RuntimeError("boom")
    assert module.window_reverse is original


def _ort_vs_torch(proto: onnx.ModelProto, model, batches=(1, 2, 3)) -> float:
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    worst = 0.0
    for n in batches:
        x = photo_batch(n, 20, 28)
        with torch.no_grad():
            want = model(x).numpy()
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        assert got.shape == want.shape == (n, 3, 40, 56)  # x2: the model's own layers ran
        worst = max(worst, float(np.abs(got - want).max()))
    return worst


@pytest.mark.parametrize("arch", ["SwinIR", "HAT",
                                  pytest.param("Swin2SR", marks=pytest.mark.slow),
                                  pytest.param("DRCT", marks=pytest.mark.slow),
                                  pytest.param("DAT", marks=pytest.mark.slow),
                                  pytest.param("RGT", marks=pytest.mark.slow)])
def test_patched_export_keeps_the_batch_dynamic(tmp_path, arch):
    """Exported under its patch (the export's own parity checks include batch 2; without the patch they fail
    there), the model records the patch and ONNX Runtime matches torch at batch 1, 2 and 3."""
    model = _tiny(arch)
    multiple = 4 if arch == "DRCT" else 1  # DRCT does not pad to its window (spandrel: multiple of 4)
    res = export_model(model, tmp_path / "m.onnx", teacher=arch, exporter="torchscript", size_multiple=multiple)
    proto = onnx.load(res.path)
    assert res.dynamic == ["N", "H", "W"] and 2 in {s[0] for s in res.parity_inputs}
    assert res.patch == get_metadata(proto)["asvp.export_patch"] == next(
        p.name for p in PATCHES if p.architecture == arch)
    assert _ort_vs_torch(proto, model) <= PARITY_ATOL

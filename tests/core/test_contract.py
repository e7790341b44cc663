"""Issue 27.8/27.9, the pieces under the bad-input table's rows: exclusive creation of a new output, one-line
library messages, IR versions that match the opset, and image reading (CMYK, 16-bit, SSIM's minimum size)."""
from __future__ import annotations

import errno
import os

import numpy as np
import onnx
import pytest
from onnx import helper

import asvp.io as aio
from asvp.errors import AsvpError, detail_line, first_line, weights_load_detail
from asvp.io import atomic_output, check_output
from asvp.metrics import psnr_ssim
from asvp.onnx_utils import as_model, capped_ir_version


def test_a_new_output_is_created_exclusively(tmp_path):
    out = tmp_path / "o.bin"
    check_output(out)  # no force: the name must still be free when the result is written
    with pytest.raises(AsvpError, match="appeared while asvp was working"):
        with atomic_output(out) as tmp:
            tmp.write_bytes(b"mine")
            out.write_bytes(b"theirs")  # another process wrote it meanwhile
    assert out.read_bytes() == b"theirs" and os.listdir(tmp_path) == ["o.bin"]
    check_output(out, force=True)  # force: replaced, as asked
    with atomic_output(out) as tmp:
        tmp.write_bytes(b"mine")
    assert out.read_bytes() == b"mine"


def test_exclusive_create_without_hard_links(tmp_path, monkeypatch):
    """Where the file system has no hard links, an O_EXCL create of the final name decides the race."""
    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(aio.os, "link", no_links)
    out = tmp_path / "o.bin"
    with atomic_output(out, exclusive=True) as tmp:
        tmp.write_bytes(b"first")
    assert out.read_bytes() == b"first"
    with pytest.raises(AsvpError, match="appeared"):
        with atomic_output(out, exclusive=True) as tmp:
            tmp.write_bytes(b"second")
    assert out.read_bytes() == b"first" and os.listdir(tmp_path) == ["o.bin"]


def test_an_output_link_that_loops_is_bad_input(tmp_path):
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    with pytest.raises(AsvpError, match="loops"):
        check_output(tmp_path / "a", [tmp_path / "in.onnx"], force=True)


def test_library_messages_on_one_line():
    exc = RuntimeError('Error(s) in loading state_dict for Net:\n\tMissing key(s) in state_dict: "a.weight". \n\t'
                       'Unexpected key(s) in state_dict: "b.weight". ')
    assert detail_line(exc) == ('Error(s) in loading state_dict for Net: Missing key(s) in state_dict: "a.weight".; '
                                'Unexpected key(s) in state_dict: "b.weight".')
    long = detail_line(RuntimeError("x" * 1000))
    assert len(long) <= 320 and long.endswith("...")
    coloured = RuntimeError("load failed, \x1b[1mtrust the source\x1b[0m.\n\tmore")
    assert "\x1b" not in detail_line(coloured) and "\x1b" not in first_line(coloured)

    class UnpicklingError(Exception):
        pass

    pickled = UnpicklingError("Weights only load failed. \x1b[1mdo those steps\x1b[0m.\n\t(1) In PyTorch 2.6 ...\n\t"
                              "WeightsUnpickler error: Unsupported global: GLOBAL pkg.Net was not an allowed global by "
                              "default. Please use ...\n\nCheck the documentation")
    msg = weights_load_detail(pickled)
    assert "Unsupported global: GLOBAL pkg.Net" in msg and "state_dict()" in msg and "\x1b" not in msg


def _model(opset: int, ir: int) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir)


@pytest.mark.parametrize("opset,ir,expected", [(17, 10, 8), (17, 7, 8), (19, 8, 9), (21, 10, 10), (21, 8, 10)])
def test_ir_version_capped_but_never_below_the_opsets_minimum(opset, ir, expected):
    assert capped_ir_version(_model(opset, ir), ir) == expected


def test_defend_keeps_ir_10_for_an_opset_21_model(exported, tmp_path):
    from asvp import api

    m = onnx.load(exported("sr"))
    m.opset_import[0].version, m.ir_version = 21, 10
    onnx.save(m, tmp_path / "op21.onnx")
    api.defend(tmp_path / "op21.onnx", tmp_path / "d.onnx")
    assert onnx.load(tmp_path / "d.onnx").ir_version == 10


def test_empty_model_is_said_to_be_empty(tmp_path):
    (tmp_path / "e.onnx").write_bytes(b"")
    for source in (tmp_path / "e.onnx", b""):
        with pytest.raises(AsvpError, match="empty, not an ONNX model"):
            as_model(source)


def test_cmyk_jpeg_is_read_as_its_colours(tmp_path):
    from PIL import Image

    from asvp.runtime.evaluation.images import load_image

    rgb = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg", quality=100)
    got = load_image(tmp_path / "c.jpg")
    assert got.shape == (3, 16, 16)
    assert np.abs(got.transpose(1, 2, 0) - rgb / 255.0).mean() < 0.03  # was 0.5: the CMYK planes read as RGB


def test_16_bit_grey_png_keeps_its_depth(tmp_path):
    """(A 16-bit colour PNG, which would be read at 8 bits, is refused: row validate-png-16-bit-colour.)"""
    from PIL import Image

    from asvp.runtime.evaluation.images import load_image

    grey = np.arange(256, dtype=np.uint16).reshape(16, 16) * 257 + 1  # values no 8-bit image holds
    Image.fromarray(grey).save(tmp_path / "g.png")
    got = load_image(tmp_path / "g.png")
    assert np.abs(got[0] - grey / 65535.0).max() < 1e-6


def test_ssim_refuses_images_smaller_than_its_window():
    a = np.zeros((1, 3, 6, 9), np.float32)
    with pytest.raises(AsvpError, match="too small for SSIM"):
        psnr_ssim(a, a)
    b = np.full((1, 3, 7, 7), 0.5, np.float32)
    assert psnr_ssim(b + 0.1, b)[0] == pytest.approx(20.0)

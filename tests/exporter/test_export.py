"""Issue 2: teachers, export parity, spandrel and module:Class sources, `asvp nodes`, bad inputs."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from asvp import api
from asvp.cli import main
from asvp.errors import AsvpError
from asvp.exporter.export import export_model
from asvp.onnx_utils import MAX_IR_VERSION
from asvp.options import ExportOptions
from asvp.exporter.teachers.bundled import load_teacher, weights_path
from asvp.tasks import TASKS, get_task
from asvp.onnx_utils import get_metadata
from asvp.tasks import TASK_NAMES


@pytest.mark.parametrize("task", TASK_NAMES)
def test_export_parity_dynamic_shapes(exported, task):
    path = exported(task)
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version <= MAX_IR_VERSION
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    meta = get_metadata(model)
    spec = get_task(task)
    assert meta["asvp.task"] == task and int(meta["asvp.scale"]) == spec.scale
    assert meta["asvp.teacher"] == spec.teacher_name
    # Dynamic batch/height/width: a shape the export never saw, on real held-out images.
    inp, _ = spec.heldout(size=96 * spec.scale)
    x = inp[:, :, :64, :80].contiguous()
    torch_model, _ = load_teacher(task)
    with torch.no_grad():
        want = torch_model(x).numpy()
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.numpy()})[0]
    assert got.shape == want.shape == (x.shape[0], 3, 64 * spec.scale, 80 * spec.scale)
    assert np.max(np.abs(got - want)) < 1e-4


@pytest.mark.parametrize("task", TASK_NAMES)
def test_every_task_ships_its_bundled_weights(task):
    """The teachers are committed package data: a missing file is a broken package, never a reason to skip."""
    assert weights_path(task).is_file() and weights_path(task).with_suffix(".json").is_file(), task


@pytest.mark.parametrize("task", TASK_NAMES)
def test_bundled_teacher_beats_trivial_baseline(task):
    row = api.teacher_quality([task])[0]
    assert row["psnr"] > row["baseline_psnr"], row
    assert row["ssim"] > row["baseline_ssim"] - 0.01, row


def test_spandrel_checkpoint_exports(tmp_path):
    from asvp.exporter.spandrel_loader import import_spandrel

    import_spandrel()
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(0)
    net = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2)
    ckpt = tmp_path / "compact.pth"
    torch.save(net.state_dict(), ckpt)
    res = api.export(str(ckpt), tmp_path / "compact.onnx")
    assert res.scale == 2 and res.teacher.startswith("spandrel:")
    assert res.parity_max_abs_diff <= res.parity_tolerance
    meta = get_metadata(onnx.load(res.path))
    assert meta["asvp.scale"] == "2"


def test_module_class_source_with_weights(tmp_path):
    from asvp.tasks.architectures import ResidualCNN

    torch.manual_seed(1)
    net = ResidualCNN(ch=8, blocks=1)
    weights = tmp_path / "w.pt"
    torch.save(net.state_dict(), weights)
    res = api.export("asvp.tasks.architectures:ResidualCNN", tmp_path / "m.onnx",
                     ExportOptions(weights=weights, kwargs='{"ch": 8, "blocks": 1}', task="underwater"))
    assert res.task == "underwater" and res.scale == 1
    # Wrong kwargs -> weights do not fit -> one clear error, no file.
    with pytest.raises(AsvpError, match="cannot load weights"):
        api.export("asvp.tasks.architectures:ResidualCNN", tmp_path / "bad.onnx",
                   ExportOptions(weights=weights, kwargs='{"ch": 16, "blocks": 1}'))
    assert not (tmp_path / "bad.onnx").exists()


def test_parity_failure_leaves_no_file(tmp_path):
    model, spec = load_teacher("underwater")
    inp, _ = spec.heldout(size=64)
    out = tmp_path / "x.onnx"
    with pytest.raises(AsvpError, match="failed its parity checks.*parity fails at 1x3x"):
        export_model(model, out, inp[:1], teacher="t", atol=-1.0, exporter="torchscript")
    assert list(tmp_path.iterdir()) == []


def test_nodes_table_and_json(exported, capsys):
    path = exported("sr")
    assert main(["nodes", path]) == 0
    table = capsys.readouterr().out
    assert "/body/body.0/conv1/Conv" in table and "[N, 32, H, W]" in table
    assert main(["nodes", path, "--json"]) == 0
    nodes = json.loads(capsys.readouterr().out)
    assert all(n["channels"] >= 4 and len(n["shape"]) == 4 for n in nodes)
    assert {"name", "op_type", "output", "shape", "channels"} <= set(nodes[0])
    assert nodes[0]["shape"][0] == "N"  # symbolic batch kept


def _rank2_model(path):
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8])
    g = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    onnx.save(onnx.helper.make_model(g), path)


@pytest.mark.parametrize("argv_factory, message", [
    (lambda d: ["nodes", str(d / "missing.onnx")], "not found"),
    (lambda d: ["nodes", str(d / "garbage.onnx")], "not a readable ONNX model"),
    (lambda d: ["nodes", str(d / "rank2.onnx")], "no float32 NCHW image input"),
    (lambda d: ["export", "nosuchtask", "-o", str(d / "out.onnx")], "unknown teacher"),
    (lambda d: ["train-teacher", "--task", "nosuchtask"], "unknown task"),
    (lambda d: ["export", str(d / "missing.pth"), "-o", str(d / "out.onnx")], "not found"),
    (lambda d: ["export", "no.such.module:Net", "-o", str(d / "out.onnx")], "cannot import"),
])
def test_bad_input_one_line_error(tmp_path, capsys, argv_factory, message):
    (tmp_path / "garbage.onnx").write_bytes(b"\x00not onnx at all\xff" * 10)
    _rank2_model(tmp_path / "rank2.onnx")
    before = set(tmp_path.iterdir())
    assert main(argv_factory(tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("asvp: error:") and message in err and "\n" not in err
    assert set(tmp_path.iterdir()) == before  # nothing half-written


def test_console_script_help_and_exit_code(tmp_path):
    exe = [sys.executable, "-m", "asvp.cli"]
    out = subprocess.run(exe + ["--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "export" in out.stdout and "nodes" in out.stdout
    bad = subprocess.run(exe + ["nodes", str(tmp_path / "none.onnx")], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


"""Issue 2: teachers, export parity, spandrel and module:Class sources, `asvp nodes`, bad inputs."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import types

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from asvp import api
from asvp.cli import main
from asvp.errors import AsvpError
from asvp.exporter.export import export_model
from asvp.exporter.parity import photo_batch
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



# ---- issue 27: exporter chatter, parity photos, torch's own failures, SIGTERM, grey models ------------------

class Chatty(torch.nn.Module):
    """Writes to the process's stdout and stderr file descriptors while traced, as torch's C++ side does (the
    TorchScript exporter's "Torch IR graph at exception" dump), past sys.stdout."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        if torch.jit.is_tracing():
            os.write(1, b"Torch IR graph at exception: graph(...)\n")
            os.write(2, b"C++ warning\n")
        return self.conv(x)


def test_exporter_output_stays_off_stdout_and_json_is_pure(tmp_path, capfd, monkeypatch):
    module = types.ModuleType("asvp_chatty_model")
    module.Chatty = Chatty
    monkeypatch.setitem(sys.modules, "asvp_chatty_model", module)
    assert main(["export", "asvp_chatty_model:Chatty", "-o", str(tmp_path / "c.onnx"), "--json"]) == 0
    out, err = capfd.readouterr()
    assert json.loads(out)["exporter"] == "torchscript" and "Torch IR" not in out + err and err == ""


def test_parity_sizes_beyond_the_photographs_are_mirror_tiled(tmp_path):
    """--size-multiple 32 checks parity at 256x512, beyond the held-out photographs (about 300 pixels): it used
    to end in an internal error; the photographs are now mirror-tiled."""
    x = photo_batch(2, 400, 640)
    assert x.shape == (2, 3, 400, 640) and 0 <= float(x.min()) and float(x.max()) <= 1 and float(x.std()) > 0.05
    res = export_model(torch.nn.Conv2d(3, 3, 3, padding=1), tmp_path / "m.onnx", teacher="t", size_multiple=32,
                       exporter="torchscript")
    assert [1, 3, 256, 512] in res.parity_inputs


class BatchOfOne(torch.nn.Module):
    """A model that itself refuses batches above 1."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        if x.shape[0] != 1:
            raise RuntimeError("expected batch 1")
        return self.conv(x)


def test_torch_model_failing_at_a_check_shape_suggests_static_batch(tmp_path):
    with pytest.raises(AsvpError, match=r"torch model itself fails at 2x3x33x37 .*expected batch 1.*--static-batch") as e:
        export_model(BatchOfOne(), tmp_path / "b.onnx", teacher="t", exporter="torchscript")
    assert "\n" not in str(e.value) and list(tmp_path.iterdir()) == []
    res = export_model(BatchOfOne(), tmp_path / "b.onnx", teacher="t", exporter="torchscript", static_batch=True)
    assert res.dynamic == ["H", "W"]


SLEEPY = '''
import pathlib, time, torch

class Sleepy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        if torch.jit.is_tracing():
            pathlib.Path(__file__).with_name("tracing").touch()
            time.sleep(60)
        return self.conv(x)
'''


def test_sigterm_during_export_leaves_nothing(tmp_path):
    """SIGTERM while the exporter traces: exit 130 ("interrupted"), no temporary folder or file left behind."""
    (tmp_path / "sleepy.py").write_text(SLEEPY)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    proc = subprocess.Popen([sys.executable, "-m", "asvp.cli", "export", "sleepy:Sleepy", "-o",
                             str(tmp_path / "out" / "s.onnx")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(1200):  # the trace has started (torch imported, checks run): at most 2 minutes
            if (tmp_path / "tracing").exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert (tmp_path / "tracing").exists(), proc.communicate()[1] if proc.poll() is not None else "no trace"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and err.strip() == "asvp: interrupted"
    # ONNX Runtime keeps a session file (.ses) in the temporary folder from its import on: not a leftover
    assert [p.name for p in tmp.iterdir() if p.name != ".ses"] == []
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def _grey_dncnn(path):
    from asvp.exporter.spandrel_loader import import_spandrel

    import_spandrel()
    import spandrel.architectures as A

    torch.manual_seed(0)
    torch.save(A.DnCNN.DnCNN(in_nc=1, out_nc=1, nc=8, nb=4).state_dict(), path)


def test_grey_dncnn_exports_and_defends_and_validate_names_the_channels(tmp_path, capsys):
    _grey_dncnn(tmp_path / "g.pth")
    res = api.export(str(tmp_path / "g.pth"), tmp_path / "g.onnx")
    meta = get_metadata(onnx.load(res.path))
    assert (res.in_channels, res.out_channels) == (1, 1) and "1 -> 1 channels" in res.summary_lines()[0]
    assert meta["asvp.in_channels"] == meta["asvp.out_channels"] == "1"
    assert meta["asvp.layout"] == "NCHW grey float32" and all(s[1] == 1 for s in res.parity_inputs)
    assert 2 in {s[0] for s in res.parity_inputs}  # dynamic batch checked
    out = api.defend(res.path, tmp_path / "g.asvp.onnx")
    assert out.nodes
    x = np.random.default_rng(0).random((2, 1, 21, 30), dtype=np.float32)
    y = ort.InferenceSession(str(tmp_path / "g.asvp.onnx"), providers=["CPUExecutionProvider"]).run(None, {"input": x})
    assert y[0].shape == (2, 1, 21, 30) and np.isfinite(y[0]).all()
    # validate feeds RGB pictures: it refuses the grey model in one line that names the channel count
    assert main(["validate", res.path, str(tmp_path / "g.asvp.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "1-channel image (grey)" in err and "RGB" in err


@pytest.mark.parametrize("cin, cout, layout", [(1, 1, "NCHW grey float32"), (4, 3, "NCHW 4-channel float32")])
def test_user_model_channels_are_detected_and_recorded(tmp_path, cin, cout, layout):
    """A model that does not run on RGB is tried at its first convolution's input channels."""
    torch.manual_seed(0)
    res = export_model(torch.nn.Conv2d(cin, cout, 3, padding=1), tmp_path / "m.onnx", teacher="t",
                       exporter="torchscript")
    meta = get_metadata(onnx.load(res.path))
    assert (res.in_channels, res.out_channels) == (cin, cout) and meta["asvp.layout"] == layout
    assert (meta["asvp.in_channels"], meta["asvp.out_channels"]) == (str(cin), str(cout))
    assert all(s[1] == cin for s in res.parity_inputs)


class ScalesItsInputInPlace(torch.nn.Module):
    """Changes its input in place (as spandrel's RCAN does): the parity check must give torch its own copy."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        x.mul_(255.0)
        return self.conv(x) / 255.0


def test_parity_survives_a_model_that_changes_its_input_in_place(tmp_path):
    from asvp.exporter.export import export_model

    torch.manual_seed(0)
    res = export_model(ScalesItsInputInPlace(), tmp_path / "m.onnx", teacher="t", exporter="torchscript")
    assert res.parity_max_abs_diff <= 1e-4 and (tmp_path / "m.onnx").exists()

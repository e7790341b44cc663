"""benchmarks/gpu.py without a GPU: arguments, the one-line refusal, result files, and the whole pipeline with
stand-in timers on CPU (Triton's interpreter runs the kernels). The GPU figures themselves are not tested here."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are imported (see test_triton_kernel.py)

from asvp.errors import AsvpError  # noqa: E402
from asvp.exporter.teachers.bundled import load_teacher  # noqa: E402
from asvp.tasks import TASKS  # noqa: E402
from asvp.graph_passes import select  # noqa: E402
from asvp.runtime.engines.kernels import triton_env  # noqa: E402

from benchmarks import gpu, gpu_paths, gpu_precision, gpu_report, gpu_timing  # noqa: E402

SCRIPT = Path(gpu.__file__)


def test_arguments():
    a = gpu.parse_args([])
    assert a.tasks == list(TASKS) and [gpu.format_shape(s) for s in a.shapes] == list(gpu.SHAPES) and a.iters == 30
    q = gpu.parse_args(["--quick", "--tasks", "sr,dehaze"])
    assert q.tasks == ["sr", "dehaze"] and len(q.shapes) == 2 and q.iters == 10
    for bad, match in [(["--tasks", "sr,nope"], "unknown task"), (["--shapes", "1x3x64"], "NxCxHxW"),
                       (["--shapes", "1x1x64x64"], "C=3"), (["--tasks", "lowlight", "--shapes", "1x3x66x64"], "multiples of 4"),
                       (["--iters", "0"], "--iters")]:
        with pytest.raises(AsvpError, match=match):
            gpu.parse_args(bad)
    assert gpu.device_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible")
def test_refuses_without_cuda_in_one_line_and_writes_nothing(tmp_path):
    res = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out-dir", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 3 and res.stdout == ""
    assert res.stderr.startswith("gpu.py: error: no CUDA device") and res.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_summarize_events_counts_kernels_and_busy_time():
    cuda, cpu = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU

    def ev(name, dev, us):
        return types.SimpleNamespace(name=name, device_type=dev, time_range=types.SimpleNamespace(elapsed_us=lambda: us))

    events = [ev("conv", cuda, 10.0), ev("asvp_gram_kernel", cuda, 4.0), ev("Memset (Device)", cuda, 1.0),
              ev("aten::conv2d", cpu, 99.0)] * 2
    assert gpu_timing.summarize_events(events, reps=2) == {"kernels": 2.0, "memops": 1.0, "busy_us": 14.0}


def fake_env():
    return {"device": "Stand-in GPU", "python": "3", "torch": torch.__version__, "cuda": None, "triton": "x",
            "date": "today", "capability": "0.0", "sms": 0, "driver": None, "onnxruntime": ort.__version__,
            "onnx2torch": None}


def test_pipeline_with_stand_in_timers(tmp_path, monkeypatch):
    """run() end to end on CPU: hooks on the real sr teacher, the Triton kernels (interpreted) at the node and their
    parity, export + defend + a subgraph runner (ONNX Runtime CPU standing in for onnx2torch), result files."""
    ok, why = triton_env.triton_status()
    if not ok:
        pytest.skip(why)
    calls = []

    def fake_measure(fn, iters, warmup):
        out = fn()
        assert isinstance(out, torch.Tensor) and torch.isfinite(out).all()
        calls.append(tuple(out.shape))
        return {"kernels": 10.0, "memops": 0.0, "busy_us": 100.0, "eager_us": 200.0, "captured": True,
                "graph_us": 150.0, "error": None}

    class OrtModule:  # stands in for onnx2torch.convert(...): runs the ONNX file with ONNX Runtime on CPU
        def __init__(self, path):
            self.sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])

        def __call__(self, x):
            return torch.from_numpy(self.sess.run(None, {self.sess.get_inputs()[0].name: x.numpy()})[0])

    monkeypatch.setattr(gpu_timing, "DEVICE", "cpu")
    monkeypatch.setattr(gpu_timing, "measure", fake_measure)
    monkeypatch.setattr(gpu, "require_cuda", lambda: None)
    monkeypatch.setattr(gpu, "environment", fake_env)
    monkeypatch.setattr(gpu_paths, "pick_subgraph_runtime", lambda choice: "onnx2torch")
    monkeypatch.setattr(gpu_paths, "onnx2torch_module", OrtModule)
    monkeypatch.setattr(gpu_paths, "KERNEL_FEATURE", (1, 32, 16, 16))
    monkeypatch.setattr(gpu_precision, "SCALES", (100.0,))  # one scale keeps the interpreter's time down
    args = gpu.parse_args(["--tasks", "sr", "--shapes", "1x3x16x16", "--iters", "1", "--out-dir", str(tmp_path)])
    res = gpu.run(args)
    assert res["errors"] == [], res["errors"]
    plugin, sub = [r for r in res["rows"] if r["path"] == "plugin"], [r for r in res["rows"] if r["path"] == "subgraph"]
    assert len(plugin) == len(sub) == 1 and plugin[0]["channels"] == sub[0]["channels"] == 32
    assert plugin[0]["node"] == sub[0]["node"] == "/Add" and plugin[0]["ratio"]["busy"] == 1.0
    assert plugin[0]["kernel_rel_err"] <= 1e-4  # the kernel at the hooked node vs the float64 reference
    assert [r["rel_err"] <= 1e-4 for r in res["kernel"]] == [True] * 3, res["kernel"]
    assert calls.count((1, 3, 32, 32)) == 4  # sr doubles H and W
    assert calls.count((1, 32, 16, 16)) == 3 + 2  # the fp32 kernels, then fp16/bf16
    kern = res["precision"]["kernel"]
    assert [(r["dtype"], r["scale"]) for r in kern] == [("fp16", 100.0), ("bf16", 100.0)]
    assert all(r["nonfinite"] == 0 and r["rel_err"] < 5e-2 for r in kern), kern  # real fp16/bf16 kernel outputs
    if importlib.util.find_spec("onnx2torch") is None:
        assert "onnx2torch is not importable" in res["precision"]["models"][0]["skipped"]
    js, md = gpu.write_results(res, tmp_path)
    assert js.name == "gpu-stand-in-gpu.json" and json.loads(js.read_text())["settings"]["tasks"] == ["sr"]
    text = md.read_text()
    for needle in ("# GPU benchmark: Stand-in GPU", "## The kernel alone", "## Plugin path", "## Subgraph path",
                   "## Reduced precision (fp16 / bf16)", "| fp16 | x100 | 1x32x16x16 |",
                   "| sr | /Add (32) | 1x3x16x16 | 10 -> 10 | 100.0 | 1.000x | 1.000x | 1.000x | yes / yes |"):
        assert needle in text, needle
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu-stand-in-gpu.json", "gpu-stand-in-gpu.md"]


@pytest.mark.slow
def test_placements_hook_the_nodes_defend_picks(exported):
    """PLACEMENTS[task] names the node api.defend picks automatically, and the torch tensor the plugin path's hook
    sees there is that node's output (ONNX Runtime on the clean export, 1x3x32x32)."""
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for task in TASKS:
        node, _, _ = gpu_paths.PLACEMENTS[task]
        model = onnx.load(exported(task))
        auto = select.automatic(select.candidates(model))
        assert auto.name == node, (task, auto.name)
        model.graph.output.append(onnx.helper.make_tensor_value_info(auto.output, onnx.TensorProto.FLOAT, None))
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        want = sess.run([auto.output], {sess.get_inputs()[0].name: x.numpy()})[0]
        teacher, _ = load_teacher(task)
        seen = {}
        handle = gpu_paths.hooked(teacher, task, lambda f: seen.setdefault("f", f))
        with torch.no_grad():
            teacher(x)
        handle.remove()
        assert np.abs(seen["f"].numpy() - want).max() <= 1e-4 * max(1.0, np.abs(want).max()), task


def _gpu_result():
    """A made-up gpu.py result: the kernel meets its target, one plugin row misses, one subgraph row failed."""
    env = {"device": "Made-up GPU", "capability": "9.0", "driver": "999.1", "torch": "2.11", "cuda": "13.0",
           "triton": "3.6.0", "date": "2026-11-29 00:00 UTC"}
    run = {"kernels": 5.0, "busy_us": 100.0, "captured": True}
    return {"environment": env, "errors": ["subgraph dehaze 1x3x256x256: RuntimeError: boom"],
            "kernel": [{"kernel": "asvp_triton (gram -> eig -> apply)", "feature": "1x32x256x256", "busy_us": 42.0,
                        "kernels": 3.0, "captured": True},
                       {"kernel": "asvp_triton_fused (one launch, AOT kernel)", "feature": "1x32x256x256",
                        "busy_us": 400.0, "kernels": 1.0, "captured": True}],
            "rows": [{"task": "sr", "shape": "1x3x256x256", "path": "plugin", "runtime": "torch + Triton kernel",
                      "clean": run, "defended": dict(run, captured=False), "ratio": {"busy": 1.08}},
                     {"task": "sr", "shape": "1x3x128x128", "path": "plugin", "runtime": "torch + Triton kernel",
                      "clean": run, "defended": run, "ratio": {"busy": 1.5}},
                     {"task": "dehaze", "shape": "1x3x256x256", "path": "subgraph", "runtime": "onnx2torch",
                      "error": "RuntimeError: boom"}]}


def test_summary_against_the_issue_targets():
    md = gpu_report.summary_markdown(_gpu_result())
    assert md.startswith("**Made-up GPU** (compute capability 9.0), driver 999.1")
    assert "| kernel alone, 1x32x256x256 | 42.0 us | <= 50 us | met | yes |" in md
    assert "| plugin path (torch + Triton kernel), sr, 1x3x256x256 | 1.080x | <= 1.05x | **not met** | no |" in md
    assert "| subgraph path (onnx2torch), dehaze, 1x3x256x256 | n/a | <= 1.3x | not measured | n/a |" in md
    assert "1x3x128x128" not in md and "fused" not in md and "Problems during the run: 1" in md


def test_benchmarks_md_gpu_section_reads_the_committed_results(tmp_path):
    from benchmarks import render

    assert "**No GPU figures: pending.**" in "\n".join(render.gpu_markdown(tmp_path))
    (tmp_path / "gpu-made-up-gpu.json").write_text(json.dumps(_gpu_result()))
    text = "\n".join(render.gpu_markdown(tmp_path))
    assert "pending" not in text and "**Made-up GPU**" in text and "`benchmarks/results/gpu-made-up-gpu.md`" in text


def test_precision_model_rows_compute_in_reduced_precision():
    """model_rows on CPU with a stand-in for onnx2torch's module: float64 reference, fp32/fp16/bf16 rows whose
    errors grow as the precision falls (so they really ran in that precision), inf/NaN counted; a missing
    converter gives one skipped row with the reason."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 1))

    def measure(fn, iters, warmup):
        return {"busy_us": 1.0}

    errors = []
    rows = gpu_precision.model_rows({"sr": "m.onnx"}, (1, 3, 8, 8), "cpu", lambda path: net, measure, 1, 0, errors)
    assert errors == [] and [r["dtype"] for r in rows] == ["fp32", "fp16", "bf16"]
    err = {r["dtype"]: r["rel_err"] for r in rows}
    assert err["fp32"] < 1e-6 < err["fp16"] < err["bf16"] < 5e-2, err
    assert all(r["nonfinite"] == 0 and r["busy_us"] == 1.0 for r in rows)

    def missing(path):
        raise gpu_precision.MissingDependencyError("onnx2torch is not importable (ModuleNotFoundError)")

    assert gpu_precision.model_rows({"sr": "m"}, (1, 3, 8, 8), "cpu", missing, measure, 1, 0, []) == \
        [{"skipped": "onnx2torch is not importable (ModuleNotFoundError)"}]
    huge = gpu_precision.accuracy(torch.tensor([float("inf"), 1.0], dtype=torch.float16), torch.tensor([7e4, 1.0]))
    assert huge == {"nonfinite": 1, "rel_err": None}
    md = "\n".join(gpu_precision.markdown({"kernel": [], "models": rows}))
    assert "| sr | fp16 | 1x3x8x8 |" in md and "Skipped" not in md

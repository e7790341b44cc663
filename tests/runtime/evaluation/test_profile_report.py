"""`asvp profile` (interleaved latency, memory) and the composable report writer."""
from __future__ import annotations

import json

import numpy as np
import pytest

from asvp import api, cli
from asvp.errors import AsvpError, MissingDependencyError
from asvp.options import Timing
from asvp.runtime.evaluation import profile as prof
from asvp.runtime.evaluation.report import Section, jsonable, new_figure, write_report
from asvp.tasks import TASK_NAMES

TASKS = TASK_NAMES


@pytest.fixture(scope="module")
def teacher(exported):
    """exported(task): the bundled teacher's ONNX export, shared with the other test files."""
    return exported


def _check_stats(m, iters, batch, memory=True):
    s = m.stats
    assert len(m.samples_ms) == iters and all(x > 0 for x in m.samples_ms)
    assert s["min_ms"] <= s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"] <= s["max_ms"]
    assert s["mean_ms"] == pytest.approx(np.mean(m.samples_ms))
    assert s["p50_ms"] == pytest.approx(np.median(m.samples_ms))
    assert s["throughput_ips"] == pytest.approx(batch * 1e3 / s["mean_ms"])
    assert (m.peak_rss_mb >= 0) if memory else m.peak_rss_mb is None
    assert m.device_memory_mb is None
    assert m.provider == "CPUExecutionProvider"


@pytest.mark.parametrize("task", TASKS)
def test_profile_every_teacher(task, teacher):
    clean = teacher(task)
    res = api.profile(clean, clean, timing=Timing("2x3x32x32", warmup=1, iters=4), memory="off", progress=False)
    assert res.interleaved and [m.name for m in res.models] == ["clean", "defended"]
    for m in res.models:
        _check_stats(m, 4, 2, memory=False)
    c, d = res.models
    assert res.ratio["p50"] == pytest.approx(d.stats["p50_ms"] / c.stats["p50_ms"])
    assert res.ratio["paired_median"] == pytest.approx(
        np.median(np.array(d.samples_ms) / np.array(c.samples_ms)), rel=1e-6)
    assert res.memory_method == "not measured"


def test_profile_single_model_and_cli_json(teacher, capsys):
    res = api.profile(teacher("sr"), timing=Timing((1, 3, 24, 24), warmup=0, iters=3), memory="inprocess",
                      progress=False)
    assert not res.interleaved and res.ratio == {} and len(res.models) == 1
    _check_stats(res.models[0], 3, 1)
    assert cli.main(["profile", teacher("sr"), "--shape", "1x3x24x24", "--warmup", "1", "--iters", "2", "--json", "-q",
                     "--memory", "off"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["shape"] == [1, 3, 24, 24] and d["iters"] == 2 and d["models"][0]["name"] == "clean"


class _FakeRunner:
    """Records the order of inferences; stands in for a Polygraphy runner."""

    log: list = []

    def __init__(self, name):
        self.name = name

    def activate(self):
        pass

    def deactivate(self):
        pass

    def get_input_metadata(self):
        return {"input": None}

    def infer(self, feed, check_inputs=True):
        self.log.append(self.name)
        return {"output": feed["input"]}

    def last_inference_time(self):
        return 0.002 if self.name == "defended" else 0.001


def test_profile_interleaves_and_alternates_order(teacher, monkeypatch):
    from asvp.runtime.engines import backends

    _FakeRunner.log = []
    threads = []

    def fake(model, backend, input_shape=None, name=None, **kw):
        threads.append(kw.get("threads"))
        return _FakeRunner(name)

    monkeypatch.setattr(backends, "make_runner", fake)
    res = prof.profile(teacher("dehaze"), teacher("dehaze"), shape=(1, 3, 16, 16), warmup=2, iters=4, memory="off",
                       threads=1, progress=False)
    assert threads == [1, 1] and res.threads == 1  # the thread count reaches every runner
    # One checked first inference each, then per iteration both models, in alternating order (ABBA...).
    assert _FakeRunner.log == ["clean", "defended"] + ["clean", "defended", "defended", "clean"] * 3
    assert res.ratio["p50"] == pytest.approx(2.0) and res.ratio["paired_median"] == pytest.approx(2.0)
    assert res.models[0].stats["p50_ms"] == pytest.approx(1.0)


@pytest.mark.parametrize("kw, message", [
    ({"shape": "1x3x32"}, "four positive integers"),
    ({"shape": "1xAx32x32"}, "NxCxHxW with integers"),
    ({"shape": "1x1x32x32"}, "3 channels"),
    ({"shape": "1x3x30x32", "task": "lowlight"}, "multiples of 4"),
    ({"iters": 0}, "iters must be an integer >= 1"),
    ({"warmup": -1}, "warmup must be"),
    ({"backend": "nope"}, "unknown backend"),
    ({"memory": "lots"}, "memory must be one of"),
    ({"threads": 0}, "threads must be an integer >= 1"),
])
def test_profile_bad_input(kw, message, teacher, tmp_path, capsys):
    task = kw.pop("task", "sr")
    with pytest.raises(AsvpError) as ei:
        given = {"shape": "1x3x32x32", **kw}
        timing = Timing(**{k: given.pop(k) for k in ("shape", "warmup", "iters", "threads") if k in given})
        api.profile(teacher(task), timing=timing, **given, out=tmp_path / "o", progress=False)
    assert message in str(ei.value)
    assert not (tmp_path / "o").exists()
    argv = ["profile", teacher(task), "--out", str(tmp_path / "o")]
    for k, v in {"shape": "1x3x32x32", **kw}.items():
        argv += [f"--{k}", str(v)]
    if "memory" in kw:  # argparse refuses it first (exit 2, its own usage message)
        with pytest.raises(SystemExit) as se:
            cli.main(argv)
        assert se.value.code == 2
        return
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("asvp: error: ") and "\n" not in err and message in err


def test_profile_missing_model_and_backend(teacher, tmp_path, capsys):
    from asvp.runtime.engines.backends import available_backends

    assert cli.main(["profile", str(tmp_path / "nope.onnx")]) == 2
    assert "not found" in capsys.readouterr().err
    missing = [b for b in ("tensorrt", "onnxrt-cuda") if b not in available_backends()]
    if missing:
        with pytest.raises(MissingDependencyError):
            api.profile(teacher("sr"), backend=missing[0], timing=Timing("1x3x32x32", iters=1), progress=False)
        assert cli.main(["profile", teacher("sr"), "--backend", missing[0], "--out", str(tmp_path / "o")]) == 3
        assert not (tmp_path / "o").exists()


# ---- reports -------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_profile_report_files(teacher, tmp_path):
    from PIL import Image

    out = tmp_path / "r"
    res = api.profile(teacher("sr"), teacher("sr"), timing=Timing("1x3x32x32", warmup=1, iters=5), out=out,
                      progress=False)
    assert res.report_dir == str(out)
    # Default memory mode: each model in a fresh process, so both identical models measure alike.
    c, d = res.models
    assert c.peak_rss_mb > 0 and d.peak_rss_mb > 0 and "fresh process" in res.memory_method
    assert abs(c.peak_rss_mb - d.peak_rss_mb) < 0.5 * max(c.peak_rss_mb, d.peak_rss_mb)
    d = json.loads((out / "report.json").read_text())
    assert d["sections"]["profile"]["models"][1]["stats"]["p99_ms"] == pytest.approx(res.models[1].stats["p99_ms"])
    with Image.open(out / "profile-latency.png") as im:
        assert im.format == "PNG"
    md = (out / "report.md").read_text()
    assert "| model | p50 (ms) | p90 (ms) | p99 (ms) |" in md and "| defended / clean | ratio |" in md


def _figure():
    fig = new_figure(2, 2)
    fig.subplots().plot([1, 2, 3])
    return fig


def test_write_report_is_composable(tmp_path):
    from PIL import Image

    out = tmp_path / "rep"
    write_report(out, {"alpha": Section("Alpha", {"x": 1.0, "big": float("inf")}, "| a | b |\n|---|---|\n| 1 | 2 |\n",
                                         {"plot": _figure()})})
    # Another command adds its own section (a plain dict works too) without losing the first.
    write_report(out, {"beta": {"title": "Beta", "data": {"y": [1, 2]}, "markdown": "beta text"}})
    d = json.loads((out / "report.json").read_text())
    assert list(d["sections"]) == ["alpha", "beta"] and d["sections"]["alpha"]["big"] == "inf"
    md = (out / "report.md").read_text()
    assert md.index("## Alpha") < md.index("## Beta") and "![plot](alpha-plot.png)" in md and "| 1 | 2 |" in md
    with Image.open(out / "alpha-plot.png") as im:
        assert im.format == "PNG"
    # Replacing a section keeps its place, updates its data, and removes its stale figures.
    write_report(out, {"alpha": Section("Alpha v2", {"x": 2})})
    d = json.loads((out / "report.json").read_text())
    assert list(d["sections"]) == ["alpha", "beta"] and d["sections"]["alpha"] == {"x": 2}
    assert not (out / "alpha-plot.png").exists()
    md = (out / "report.md").read_text()
    assert "## Alpha v2" in md and "## Beta" in md and "## Alpha\n" not in md
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md", "sections"]


def test_write_report_refuses_bad_sections_without_writing(tmp_path):
    out = tmp_path / "rep"
    with pytest.raises(AsvpError, match="section key"):
        write_report(out, {"../evil": Section("x")})
    with pytest.raises(AsvpError, match="must be a Section"):
        write_report(out, {"ok": 42})
    assert not out.exists()
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(AsvpError, match="not a directory"):
        write_report(f, {"ok": Section("x")})


def test_jsonable():
    assert jsonable({"a": float("nan"), "b": np.float32(1.5), "c": np.arange(2), "d": (1, float("-inf"))}) == \
        {"a": "nan", "b": 1.5, "c": [0, 1], "d": [1, "-inf"]}


@pytest.mark.tensorrt
def test_profile_on_tensorrt(teacher):
    from asvp.runtime.engines.backends import available_backends

    if "tensorrt" not in available_backends():
        pytest.skip("TensorRT with a CUDA device is not available here (asvp backends lists why)")
    res = api.profile(teacher("sr"), teacher("sr"), backend="tensorrt", timing=Timing("1x3x64x64", warmup=2, iters=5),
                      progress=False)
    assert res.models[0].provider.startswith("TensorRT")
    assert res.models[0].device_memory_mb is not None and res.models[0].device_memory_mb >= 0
    for m in res.models:
        assert m.stats["p50_ms"] > 0

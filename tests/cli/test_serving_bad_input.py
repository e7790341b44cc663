"""The bad-input table for the serving commands (triton-repo, serve, validate --url): one line `asvp: error: ...`
on stderr, exit 2 (3: no serving environment, an unreachable server), no traceback, the working folder unchanged."""
from __future__ import annotations

import shutil

import pytest

from asvp.cli import main
from asvp.runtime.serving.server import free_port

# (id, argv; {m} = a clean ONNX model, {url} = a port nothing listens on; expected exit status)
TABLE = [
    ("repo-model-missing", ["triton-repo", "missing.onnx", "--repo", "r"], 2),
    ("repo-model-garbage", ["triton-repo", "garbage.onnx", "--repo", "r"], 2),
    ("repo-bad-form", ["triton-repo", "{m}", "--repo", "r", "--form", "savedmodel"], 2),
    ("repo-bad-name", ["triton-repo", "{m}", "--repo", "r", "--name", "a b"], 2),
    ("repo-entry-exists", ["triton-repo", "{m}", "--repo", "repo", "--name", "existing"], 2),
    ("repo-is-a-file", ["triton-repo", "{m}", "--repo", "afile"], 2),
    ("repo-under-a-file", ["triton-repo", "{m}", "--repo", "afile/r"], 2),
    ("repo-engine-without-sidecar", ["triton-repo", "x.engine", "--repo", "r", "--form", "tensorrt_plan"], 2),
    ("repo-onnx-as-plan", ["triton-repo", "{m}", "--repo", "r", "--form", "tensorrt_plan"], 2),
    ("repo-engine-as-python", ["triton-repo", "x.engine", "--repo", "r"], 2),
    ("repo-tensorrt-on-python-form", ["triton-repo", "{m}", "--repo", "r", "--tensorrt"], 2),
    ("repo-negative-batch", ["triton-repo", "{m}", "--repo", "r", "--max-batch-size", "-1"], 2),
    ("repo-bad-profile", ["triton-repo", "{m}", "--repo", "r", "--form", "onnxruntime", "--tensorrt",
                          "--min", "1x3x64x64", "--max", "1x3x32x32"], 2),
    ("serve-repo-missing", ["serve", "nowhere"], 2),
    ("serve-repo-is-a-file", ["serve", "afile"], 2),
    ("serve-bad-port", ["serve", "repo", "--http-port", "70000"], 2),
    ("serve-binary-missing", ["serve", "repo", "--binary", "no/tritonserver"], 2),
    ("serve-no-serving-env", ["serve", "repo", "--binary", "wheel", "--env", "no-env"], 3),
    ("validate-url-without-model", ["validate", "{m}", "--url", "{url}"], 2),
    ("validate-url-without-port", ["validate", "{m}", "--url", "localhost", "--model", "sr"], 2),
    ("validate-url-two-models", ["validate", "{m}", "{m}", "--url", "{url}", "--model", "sr"], 2),
    ("validate-url-unreachable", ["validate", "{m}", "--url", "{url}", "--model", "sr", "--retries", "0"], 3),
    ("validate-url-bad-shape", ["validate", "{m}", "--url", "{url}", "--model", "sr", "--check-shape", "1x3"], 2),
    ("validate-neither-defended-nor-url", ["validate", "{m}"], 2),
    ("profile-url-without-model", ["profile", "--url", "{url}"], 2),
    ("profile-url-with-a-model-file", ["profile", "{m}", "--url", "{url}", "--model", "sr"], 2),
    ("profile-url-bad-concurrency", ["profile", "--url", "{url}", "--model", "sr", "--concurrency", "1,x"], 2),
    ("profile-url-zero-concurrency", ["profile", "--url", "{url}", "--model", "sr", "--concurrency", "0"], 2),
    ("profile-url-unreachable", ["profile", "--url", "{url}", "--model", "sr", "--retries", "0"], 3),
    ("profile-neither-model-nor-url", ["profile"], 2),
]


@pytest.fixture(scope="module")
def workdir(exported, tmp_path_factory):
    root = tmp_path_factory.mktemp("serving-bad-input")
    shutil.copy(exported("sr"), root / "m.onnx")
    (root / "garbage.onnx").write_bytes(b"not a model")
    (root / "x.engine").write_bytes(b"not an engine")
    (root / "afile").write_text("a file")
    (root / "repo" / "existing").mkdir(parents=True)
    (root / "repo" / "existing" / "keep.txt").write_text("keep")
    return root


def _snapshot(root):
    return {str(p.relative_to(root)): (p.is_dir(), None if p.is_dir() else p.read_bytes()) for p in root.rglob("*")}


@pytest.mark.parametrize("argv,expected", [pytest.param(a, e, id=i) for i, a, e in TABLE])
def test_serving_bad_input_one_line_exit_status_nothing_touched(workdir, monkeypatch, capsys, argv, expected):
    monkeypatch.chdir(workdir)
    url = f"127.0.0.1:{free_port()}"
    argv = [a.replace("{m}", "m.onnx").replace("{url}", url) for a in argv]
    before = _snapshot(workdir)
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's usage errors exit through OneLineParser.error
        rc = e.code
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("asvp: error: ") and "Traceback" not in err, err
    assert rc == expected, (rc, err)
    assert _snapshot(workdir) == before, "the working folder changed"

"""Issue 12: every bad input, CLI-wide, ends in ONE line `asvp: error: ...` on stderr, exit status 2 (3: a missing
backend), no traceback, and leaves the folder it ran in exactly as it was (no output, no temporary file, no input
overwritten). Table-driven: add a row for every new error path.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from asvp.cli import main
from asvp.options import Timing
from asvp.runtime.serving.server import free_port

# (id, argv; {m} = a clean ONNX model, {pth} = a spandrel checkpoint, in the working folder, {url} = a loopback
# address nothing listens on; expected exit status)
TABLE = [
    # argparse's own usage errors: one line too
    ("no-command", [], 2),
    ("unknown-command", ["bogus"], 2),
    ("missing-output", ["defend", "{m}"], 2),
    ("bad-int", ["defend", "{m}", "-o", "x.onnx", "--k", "abc"], 2),
    ("bad-choice", ["defend", "{m}", "-o", "x.onnx", "--mode", "nope"], 2),
    # inputs that are not there or not models
    ("model-missing", ["nodes", "missing.onnx"], 2),
    ("model-garbage", ["nodes", "garbage.onnx"], 2),
    ("model-is-dir", ["nodes", "adir"], 2),
    ("checkpoint-missing", ["export", "missing.pth", "-o", "x.onnx"], 2),
    ("unknown-source", ["export", "garbage.onnx", "-o", "x.onnx"], 2),
    ("kwargs-bad-json", ["export", "asvp.tasks.architectures:ResidualCNN", "-o", "x.onnx", "--kwargs", "{"], 2),
    ("kwargs-bad-arg", ["export", "asvp.tasks.architectures:ResidualCNN", "-o", "x.onnx", "--kwargs", '{"zzz": 1}'], 2),
    ("class-missing", ["export", "asvp.tasks.architectures:Nope", "-o", "x.onnx"], 2),
    ("opset-too-high", ["export", "sr", "-o", "x.onnx", "--opset", "99"], 2),
    # outputs that would destroy an input, or cannot be written
    ("defend-output-is-input", ["defend", "{m}", "-o", "{m}"], 2),
    ("defend-output-is-input-via-link", ["defend", "{m}", "-o", "link.onnx"], 2),
    ("defend-output-exists", ["defend", "{m}", "-o", "existing.onnx"], 2),
    ("defend-output-is-dir", ["defend", "{m}", "-o", "adir"], 2),
    ("defend-output-under-file", ["defend", "{m}", "-o", "afile/x.onnx"], 2),
    ("defend-output-unwritable", ["defend", "{m}", "-o", "/proc/asvp-test/x.onnx"], 2),
    ("export-output-is-input", ["export", "{pth}", "-o", "{pth}"], 2),
    ("export-output-exists", ["export", "{pth}", "-o", "existing.onnx"], 2),
    ("export-output-is-dir", ["export", "sr", "-o", "adir"], 2),
    ("export-output-unwritable", ["export", "sr", "-o", "/proc/x.onnx"], 2),
    ("build-output-is-input", ["build", "{m}", "-o", "{m}"], 2),
    ("build-output-exists", ["build", "{m}", "-o", "existing.onnx"], 2),
    ("build-no-tensorrt", ["build", "{m}", "-o", "new.engine"], None),  # 3 without TensorRT; 2 (GPU) or 0 never here
    ("validate-out-is-file", ["validate", "{m}", "{m}", "--out", "afile"], 2),
    ("validate-out-under-file", ["validate", "{m}", "{m}", "--out", "afile/r"], 2),
    ("validate-out-unwritable", ["validate", "{m}", "{m}", "--out", "/proc/asvp-report"], 2),
    ("validate-out-foreign-report", ["validate", "{m}", "{m}", "--out", "foreign"], 2),
    ("profile-out-under-file", ["profile", "{m}", "--out", "afile/r"], 2),
    ("profile-huge-shape", ["profile", "{m}", "--shape", "1x3x99999x99999", "--memory", "off"], 2),
    ("profile-bad-shape", ["profile", "{m}", "--shape", "1x3x0x4"], 2),
    ("profile-bad-threads", ["profile", "{m}", "--threads", "0", "--memory", "off"], 2),
    ("nodes-budget-is-node-cost", ["nodes", "{m}", "--budget", "1.1"], 2),
    ("node-cost-count-without-budget", ["node-cost", "{m}", "--count", "3"], 2),
    ("nodes-old-cost-and-absorbability", ["nodes", "{m}", "--cost", "--absorbability"], 2),
    ("node-cost-budget-not-a-ratio", ["node-cost", "{m}", "--budget", "0.9"], 2),
    ("node-cost-bad-threads", ["node-cost", "{m}", "--threads", "0"], 2),
    ("node-cost-shape-not-rgb", ["node-cost", "{m}", "--shape", "1x1x16x16"], 2),
    ("node-cost-unknown-node", ["node-cost", "{m}", "--nodes", "nope"], 2),
    ("node-cost-out-under-file", ["node-cost", "{m}", "--out", "afile/r"], 2),
    ("node-cost-tensorrt", ["node-cost", "{m}", "--backend", "tensorrt"], 2),
    ("absorbability-no-input-option", ["absorbability", "{m}", "--input", "image"], 2),
    ("attack-out-is-file", ["attack", "--task", "sr", "--out", "afile"], 2),
    ("attack-unknown-kind", ["attack", "--task", "sr", "--kind", "nope"], 2),
    ("attack-ladder-unknown-preset", ["attack", "--kind", "ladder", "--preset", "nope"], 2),
    ("attack-ladder-zero-seeds", ["attack", "--kind", "ladder", "--task", "sr", "--seeds", "0"], 2),
    ("attack-ladder-bad-interval", ["attack", "--kind", "ladder", "--task", "sr", "--interval", "nope"], 2),
    ("attack-ladder-zero-steps", ["attack", "--kind", "ladder", "--task", "sr", "--steps", "0"], 2),
    ("demo-out-is-file", ["demo", "--out", "afile"], 2),
    # defence choices
    ("defend-no-such-node", ["defend", "{m}", "-o", "x.onnx", "--nodes", "nope"], 2),
    ("defend-k-too-large", ["defend", "{m}", "-o", "x.onnx", "--k", "999"], 2),
    ("defend-non-feature-node", ["defend", "{m}", "-o", "x.onnx", "--nodes", "/upsample/upsample.1/DepthToSpace"], 2),
    ("nodes-unknown-input", ["nodes", "{m}", "--input", "nope"], 2),
    ("defend-unknown-input", ["defend", "{m}", "-o", "x.onnx", "--input", "nope"], 2),
    ("export-bad-static-size", ["export", "{pth}", "-o", "x.onnx", "--static-size", "40by48"], 2),
    ("export-static-size-below-minimum", ["export", "{pth}", "-o", "x.onnx", "--static-size", "0x8"], 2),
    ("export-bad-exporter", ["export", "{pth}", "-o", "x.onnx", "--exporter", "onnx2"], 2),
    ("export-size-multiple-for-bundled", ["export", "sr", "-o", "x.onnx", "--size-multiple", "4"], 2),
    # the serving commands (triton-repo, serve, validate/profile --url); {url}: a port nothing listens on
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
    ("attack-url-without-files", ["attack", "--url", "{url}", "--model", "sr"], 2),
    ("attack-url-ladder", ["attack", "--task", "sr", "--clean", "{m}", "--defended", "{m}", "--kind", "ladder",
                           "--url", "{url}", "--model", "sr"], 2),
    # issue 26.2 / 26.5 (precbuild): build's precision and portability options, refused before TensorRT is needed
    ("build-int8-without-qdq", ["build", "{m}", "-o", "new.engine", "--int8"], 2),
    ("build-asvp-precision-without-reduced", ["build", "{m}", "-o", "new.engine", "--asvp-precision", "reduced"], 2),
    ("build-timing-cache-is-dir", ["build", "{m}", "-o", "new.engine", "--timing-cache", "adir"], 2),
    ("build-timing-cache-is-input", ["build", "{m}", "-o", "new.engine", "--timing-cache", "{m}"], 2),
    ("build-opt-level-out-of-range", ["build", "{m}", "-o", "new.engine", "--opt-level", "9"], 2),
    ("build-bad-hardware-compat", ["build", "{m}", "-o", "new.engine", "--hardware-compatibility", "turing+"], 2),
    # issue 27.8/27.9: contract gaps and messages (files from _contract_files); a 4th element: text the line must hold
    ("defend-h-overflows-float32", ["defend", "{m}", "-o", "x.onnx", "--h", "1e39"], 2, "h must be <="),
    ("defend-keyed-h-max-too-large", ["defend", "{m}", "-o", "x.onnx", "--variant", "keyed-h", "--key", "s",
                                      "--h-max", "1e39"], 2, "h_max must be <="),
    ("defend-iters-unbounded", ["defend", "{m}", "-o", "x.onnx", "--iters", "100000"], 2, "iters must be <="),
    ("defend-output-link-loop", ["defend", "{m}", "-o", "loop.onnx"], 2, "loops"),
    ("nodes-empty-model", ["nodes", "empty.onnx"], 2, "is empty, not an ONNX model"),
    ("nodes-fp16-model", ["nodes", "fp16.onnx"], 2, "float16"),
    ("validate-fp16-model", ["validate", "fp16.onnx", "fp16.onnx"], 2, "float16"),
    ("export-size-multiple-zero", ["export", "asvp.tasks.architectures:ResidualCNN", "-o", "x.onnx",
                                   "--size-multiple", "0"], 2, "--size-multiple"),
    ("export-weights-missing-keys", ["export", "asvp.tasks.architectures:ResidualCNN", "-o", "x.onnx",
                                     "--weights", "{pth}"], 2, 'Missing key(s) in state_dict: "head.weight"'),
    ("export-weights-size-mismatch", ["export", "asvp.tasks.architectures:ResidualCNN", "-o", "x.onnx",
                                      "--weights", "badsize.pth"], 2, "size mismatch for head.weight"),
    ("export-weights-pickled", ["export", "asvp.tasks.architectures:ResidualCNN", "-o", "x.onnx",
                                "--weights", "pickled.pth"], 2, "save model.state_dict() instead"),
    ("validate-image-too-small-for-ssim", ["validate", "{m}", "{m}", "--images", "tiny"], 2, "too small for SSIM"),
    ("validate-png-16-bit-colour", ["validate", "{m}", "{m}", "--images", "png16"], 2, "16-bit colour PNG"),
    # issue 27.11 (export helper): commands that feed RGB pictures refuse a grey model, naming its channel count
    ("validate-grey-model", ["validate", "grey.onnx", "grey.onnx"], 2),
    ("profile-grey-model", ["profile", "grey.onnx"], 2),
    # issue 27.3, 27.5, 27.6 (candidate analysis): the node producing the output image, an NHWC model, a model
    # that cannot be analysed (ONNX Runtime cannot run it): one line saying why, never an empty table
    ("defend-output-image-node", ["defend", "{m}", "-o", "x.onnx", "--nodes", "output", "--k", "2"], 2),
    ("nodes-nhwc-model", ["nodes", "nhwc.onnx"], 2),
    ("defend-nhwc-model", ["defend", "nhwc.onnx", "-o", "x.onnx"], 2),
    ("nodes-unanalysable-model", ["nodes", "opaque.onnx"], 2),
    ("defend-unanalysable-model", ["defend", "opaque.onnx", "-o", "x.onnx"], 2),
    # issue 26.3: validate/profile --precision
    ("precision-bad-choice", ["validate", "{m}", "{m}", "--precision", "fp8"], 2),
    ("precision-on-tensorrt", ["profile", "{m}", "--backend", "tensorrt", "--precision", "fp16", "--memory", "off"], 2),
    ("precision-validate-url", ["validate", "{m}", "--url", "{url}", "--model", "sr", "--precision", "fp16"], 2),
    ("precision-profile-url", ["profile", "--url", "{url}", "--model", "sr", "--precision", "bf16"], 2),
]


def _snapshot(root: Path) -> dict:
    """Every entry under root (links not followed): kind, size, mtime and content hash."""
    snap = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        rel = str(p.relative_to(root))
        if p.is_symlink():
            snap[rel] = ("link", os.readlink(p))
        elif p.is_dir():
            snap[rel] = ("dir",)
        else:
            snap[rel] = ("file", st.st_size, st.st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return snap


@pytest.fixture(scope="module")
def workdir(exported, tmp_path_factory):
    from asvp.exporter.spandrel_loader import import_spandrel

    import_spandrel()
    from spandrel.architectures.Compact import Compact

    root = tmp_path_factory.mktemp("bad-input")
    shutil.copy(exported("sr"), root / "m.onnx")
    torch.manual_seed(0)
    torch.save(Compact(num_feat=8, num_conv=2, upscale=2).state_dict(), root / "c.pth")
    (root / "garbage.onnx").write_bytes(b"not a model")
    (root / "existing.onnx").write_bytes(b"precious")
    (root / "afile").write_text("a file")
    (root / "adir").mkdir()
    (root / "adir" / "keep.txt").write_text("keep")
    (root / "x.engine").write_bytes(b"not an engine")
    (root / "repo" / "existing").mkdir(parents=True)
    (root / "repo" / "existing" / "keep.txt").write_text("keep")
    (root / "foreign").mkdir()
    (root / "foreign" / "report.md").write_text("# someone else's report\n")
    (root / "link.onnx").symlink_to("m.onnx")
    _contract_files(root)
    _grey_model(root / "grey.onnx")  # issue 27.11
    _candidate_models(root)  # issue 27 (candidate analysis)
    return root


def _grey_model(path: Path) -> None:
    """A one-channel (grey) image model: N x 1 x H x W in and out."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, "H", "W"])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 1, "H", "W"])
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["output"])], "grey", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


@pytest.mark.parametrize("argv,expected,says", [pytest.param(a, e, *(says or [None]), id=i)
                                                for i, a, e, *says in TABLE])
def test_bad_input_one_line_exit_status_nothing_touched(workdir, monkeypatch, capsys, argv, expected, says):
    monkeypatch.chdir(workdir)
    url = f"127.0.0.1:{free_port()}"
    argv = [a.replace("{m}", "m.onnx").replace("{pth}", "c.pth").replace("{url}", url) for a in argv]
    before = _snapshot(workdir)
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's usage errors exit through OneLineParser.error
        rc = e.code
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("asvp: error: ") and "Traceback" not in err and "\x1b" not in err, err
    assert says is None or says in lines[0], err
    if expected is not None:
        assert rc == expected, (rc, err)
    else:
        assert rc in (2, 3), (rc, err)
    assert _snapshot(workdir) == before, "the working folder changed"


def test_usage_errors_exit_2_in_one_line(capsys):
    """argparse errors go through OneLineParser: `asvp: error: SUBCOMMAND: message (see ... --help)`, exit 2."""
    for argv in ([], ["bogus"], ["defend"], ["defend", "m.onnx", "-o", "x", "--k", "abc"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith("asvp: error: "), err


@pytest.mark.parametrize("argv", [
    ["export", "sr", "-o", "x.onnx", "--opset", "99"],
    ["defend", "m.onnx", "-o", "m.onnx"],
    ["profile", "m.onnx", "--shape", "1x3x99999x99999", "--memory", "off"],
])
def test_bad_input_in_a_real_process(workdir, argv):
    """The same, as a user runs it: a fresh process, so library warnings printed on stderr would count too."""
    before = _snapshot(workdir)
    r = subprocess.run([sys.executable, "-m", "asvp.cli", *argv], cwd=workdir, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("asvp: error: ") and "Traceback" not in r.stderr, r.stderr
    assert _snapshot(workdir) == before


def test_force_overwrites_an_existing_output_but_never_the_input(workdir, tmp_path, capsys):
    m = workdir / "m.onnx"
    out = tmp_path / "d.onnx"
    out.write_bytes(b"old")
    assert main(["defend", str(m), "-o", str(out)]) == 2
    assert out.read_bytes() == b"old"
    assert main(["defend", str(m), "-o", str(out), "--force"]) == 0
    assert out.read_bytes() != b"old"
    digest = hashlib.sha256(m.read_bytes()).hexdigest()
    assert main(["defend", str(m), "-o", str(m), "--force"]) == 2
    assert hashlib.sha256(m.read_bytes()).hexdigest() == digest
    capsys.readouterr()


def test_report_folders_compose(workdir, tmp_path):
    """An existing asvp report folder gets sections added (no --force needed); other sections are kept."""
    from asvp import api
    from asvp.runtime.evaluation.report import Section

    r = tmp_path / "r"
    api.write_report(r, {"first": Section("First", {"a": 1})})
    res = api.profile(workdir / "m.onnx", timing=Timing("1x3x16x16", warmup=0, iters=1), memory="off", out=r,
                      progress=False)
    assert res is not None
    doc = json.loads((r / "report.json").read_text())
    assert "first" in doc["sections"] and len(doc["sections"]) == 2


# --- issue 27.8/27.9: the contract gaps' files and the cases a table row cannot express ---------------------------

def write_png16(path: Path, pixels) -> None:
    """A 16-bit PNG (colour type from the channel count) written by hand: Pillow cannot write 16-bit colour."""
    import struct
    import zlib

    import numpy as np

    a = np.asarray(pixels, np.uint16)
    a = a[..., None] if a.ndim == 2 else a
    h, w, c = a.shape
    raw = b"".join(b"\x00" + a[i].astype(">u2").tobytes() for i in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, {1: 0, 3: 2, 4: 6}[c], 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


def _contract_files(root: Path) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper
    from PIL import Image

    from asvp.tasks.architectures import ResidualCNN

    (root / "empty.onnx").write_bytes(b"")
    x, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT16, ["N", 3, "H", "W"]) for n in ("x", "y"))
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "fp16", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), root / "fp16.onnx")
    static = onnx.load(root / "m.onnx")  # the clean model with its input fixed at 1x3x16x16
    for d, v in zip(static.graph.input[0].type.tensor_type.shape.dim, (1, 3, 16, 16)):
        d.dim_value = v
    onnx.save(static, root / "static.onnx")
    (root / "loop.onnx").symlink_to("loop2.onnx")
    (root / "loop2.onnx").symlink_to("loop.onnx")
    torch.manual_seed(0)
    model = ResidualCNN()
    torch.save(model, root / "pickled.pth")  # the whole module pickled, not its state dict
    state = model.state_dict()
    state["head.weight"] = state["head.weight"][:1]
    torch.save(state, root / "badsize.pth")
    for name, (hi, wi) in (("tiny", (1, 1)), ("png16", (8, 8))):  # sr is x2: targets twice the input
        for sub, side in (("input", 1), ("target", 2)):
            (root / name / sub).mkdir(parents=True)
            if name == "tiny":
                Image.fromarray(np.full((hi * side, wi * side, 3), 128, np.uint8)).save(root / name / sub / "a.png")
            else:
                write_png16(root / name / sub / "a.png", np.full((hi * side, wi * side, 3), 40000))


def test_two_writers_to_one_new_output_the_second_refuses(workdir, tmp_path, monkeypatch, capsys):
    """Two `defend`s to one new output, without --force: both find the name free, and the one that finishes second
    must refuse, not replace the first one's file. The race is played deterministically: the other writer's file
    appears while this one works (after its checks, before its write)."""
    from asvp.graph_passes import defend as defend_pass

    out = tmp_path / "d.onnx"
    real = defend_pass.defend_model

    def other_writer_finishes_first(*args, **kwargs):
        out.write_bytes(b"the other defend's model")
        return real(*args, **kwargs)

    monkeypatch.setattr(defend_pass, "defend_model", other_writer_finishes_first)
    assert main(["defend", str(workdir / "m.onnx"), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "appeared while asvp was working" in err, err
    assert out.read_bytes() == b"the other defend's model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.onnx"]  # no temporary file left
    out.write_bytes(b"the other defend's model")  # with --force the later writer replaces it, as asked
    assert main(["defend", str(workdir / "m.onnx"), "-o", str(out), "--force"]) == 0
    assert out.read_bytes() != b"the other defend's model"
    capsys.readouterr()


def test_bad_input_is_one_line_without_a_writable_home(workdir):
    """A user whose HOME cannot be written: ONNX Runtime's telemetry warning (printed on import) and Polygraphy's
    lines about a mismatched input (validate against a model of fixed size) must not precede asvp's one line."""
    env = {k: v for k, v in os.environ.items() if k != "XDG_CACHE_HOME"}
    env["HOME"] = str(workdir / "afile" / "home")  # under a file: nobody, root included, can create it
    before = _snapshot(workdir)
    r = subprocess.run([sys.executable, "-m", "asvp.cli", "validate", "m.onnx", "static.onnx"], cwd=workdir,
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("asvp: error: "), r.stderr
    assert _snapshot(workdir) == before


def _candidate_models(root: Path) -> None:
    """Issue 27's candidate-analysis rows: nhwc.onnx ([N, H, W, 3] input) and opaque.onnx (a custom op ONNX
    Runtime does not know between the image and the convolutions)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    def conv(name, cin, cout):
        return helper.make_tensor(name, TensorProto.FLOAT, [cout, cin, 3, 3], np.zeros(cout * cin * 9).tolist())

    def save(first, dims, name, domains=()):
        nodes = [first, helper.make_node("Conv", ["x", "w1"], ["f"], pads=[1, 1, 1, 1]),
                 helper.make_node("Relu", ["f"], ["g"]),
                 helper.make_node("Conv", ["g", "w2"], ["output"], pads=[1, 1, 1, 1])]
        g = helper.make_graph(nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)],
                              [conv("w1", 3, 8), conv("w2", 8, 3)])
        opsets = [helper.make_opsetid("", 17)] + [helper.make_opsetid(d, 1) for d in domains]
        onnx.save(helper.make_model(g, opset_imports=opsets), str(root / f"{name}.onnx"))

    save(helper.make_node("Transpose", ["input"], ["x"], perm=[0, 3, 1, 2]), ["N", "H", "W", 3], "nhwc")
    save(helper.make_node("Opaque", ["input"], ["x"], domain="x.custom"), ["N", 3, "H", "W"], "opaque", ["x.custom"])

"""`asvp validate`: quality cost of the defence, verdicts, tap perturbation, spectra, image folders, bad input.

Defended models: `api.defend` when it exists; until then, and for tests that need an exactly known perturbation,
a stand-in made with onnx-graphsurgeon that multiplies one internal feature by a constant (inline: the product
replaces the feature; tap: it is an extra output), annotated with the same metadata_props `asvp defend` writes.
Teachers: the bundled export; for a task whose bundled weights are not committed yet, the task's architecture
with seeded random weights (the code under test needs the task's geometry, not a trained network).
"""
from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest

from asvp import api, cli
from asvp.config import AsvpConfig
from asvp.errors import AsvpError, MissingDependencyError
from asvp.options import Thresholds
from asvp.tasks import TASK_NAMES

TASKS = TASK_NAMES
SMALL = {"sr": 32, "lowlight": 32, "underwater": 32, "dehaze": 32, "derain": 32}  # held-out crop side (target px)


def _strict_json(text: str):
    def bad(c):
        raise ValueError(f"non-standard JSON constant {c}")

    return json.loads(text, parse_constant=bad)


@pytest.fixture(scope="module")
def teacher(exported):
    """exported(task): the bundled teacher's ONNX export, shared with the other test files."""
    return exported


def make_standin(clean: str, out, placement: str = "inline", factor: float = 1.01, node_index: int = 1,
                 cfg: AsvpConfig = AsvpConfig()) -> str:
    """A 'defended' model that scales one internal feature by `factor` (see the module docstring)."""
    import onnx_graphsurgeon as gs

    from asvp.graph_passes.candidates import feature_candidates
    from asvp.onnx_utils import load_model, save_model, set_metadata

    m = load_model(clean)
    cand = feature_candidates(m)[node_index]
    g = gs.import_onnx(onnx.shape_inference.infer_shapes(m))
    t = g.tensors()[cand.output]
    scale = gs.Constant("asvp_standin_scale", np.array(factor, dtype=np.float32))
    tap = None
    if placement == "inline":
        new = gs.Variable(cand.output + "_asvp", dtype=np.float32, shape=t.shape)
        for consumer in list(t.outputs):
            for i, x in enumerate(consumer.inputs):
                if x is t:
                    consumer.inputs[i] = new
    else:
        tap = "asvp_tap_0"
        new = gs.Variable(tap, dtype=np.float32, shape=t.shape)
        g.outputs.append(new)
    g.nodes.append(gs.Node("Mul", "asvp_standin", inputs=[t, scale], outputs=[new]))
    g.cleanup().toposort()
    p = gs.export_onnx(g)
    p.ir_version = m.ir_version
    del p.metadata_props[:]
    p.metadata_props.extend(m.metadata_props)
    cfg = cfg.with_(placement=placement)
    set_metadata(p, {"asvp.defended": "true", "asvp.mode": "standin", "asvp.placement": placement,
                     "asvp.nodes": json.dumps([{"node": cand.name, "tensor": cand.output, "channels": cand.channels,
                                                "tap": tap}]),
                     "asvp.config": json.dumps(cfg.to_dict()), "asvp.config_digest": cfg.digest()})
    save_model(p, out)
    return str(out)


@pytest.fixture(scope="module")
def defended(teacher, tmp_path_factory):
    """defended(task, placement) -> the teacher defended by api.defend (subgraph mode)."""
    root = tmp_path_factory.mktemp("defended")
    cache = {}

    def get(task: str, placement: str = "inline") -> str:
        key = (task, placement)
        if key not in cache:
            out = root / f"{task}.{placement}.onnx"
            api.defend(teacher(task), out, config=AsvpConfig(placement=placement), mode="subgraph")
            cache[key] = str(out)
        return cache[key]

    return get


# ---- all five teachers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("task", TASKS)
def test_validate_every_teacher(task, teacher, defended):
    res = api.validate(teacher(task), defended(task), heldout_size=SMALL[task], progress=False)
    assert res.task == task and res.n_images == 6 and len(res.per_image) == 6
    assert res.provider == "CPUExecutionProvider"
    for v in (res.clean_psnr, res.defended_psnr, res.baseline_psnr, res.clean_ssim, res.defended_ssim):
        assert math.isfinite(v)
    assert res.teacher_psnr_drop == pytest.approx(res.clean_psnr - res.defended_psnr)
    assert res.clean_psnr == pytest.approx(np.mean([r["clean_psnr"] for r in res.per_image]))
    assert res.output_max_abs_diff == pytest.approx(max(r["max_abs_diff"] for r in res.per_image))
    assert res.output_max_abs_diff > 0  # the defence changes the output (inline)
    assert res.passed == all(c.passed for c in res.checks)
    assert res.verdict in ("PASS", "FAIL")
    # Spectrum at each defended node: the top singular value is amplified by exactly h.
    assert res.spectrum, res.notes
    cfg = AsvpConfig.from_dict(res.defence["config"])
    for e in res.spectrum:
        s0, s1 = np.array(e["s_before"]), np.array(e["s_after_reference"])
        # min(C, H*W) singular values: a deep node at a small test size can have H*W < C.
        assert np.all(np.diff(s0) <= 1e-9 * s0[0]) and 0 < len(s0) <= e["channels"]
        assert 1 <= e["k_used"] <= cfg.k
        assert s1[0] == pytest.approx(cfg.h * s0[0], rel=1e-6)
    _strict_json(json.dumps(res.to_dict()))


def test_validate_matches_direct_computation(teacher, defended):
    """The numbers equal a straight ONNX Runtime run + asvp.metrics on the same held-out images."""
    from asvp.tasks import get_task
    from asvp.metrics import psnr_ssim
    from asvp.runtime.engines.backends import run_model

    clean, dfd = teacher("sr"), defended("sr")
    res = api.validate(clean, dfd, heldout_size=32, progress=False)
    inp, tgt = get_task("sr").heldout(32)
    oc = run_model(clean, inp.numpy())["output"]
    od = run_model(dfd, inp.numpy())["output"]
    per = [psnr_ssim(od[i : i + 1], tgt[i : i + 1].numpy()) for i in range(len(inp))]
    # validate runs one image per batch, this check runs all six in one batch: float32 reductions in the
    # defended subgraph may be ordered differently, so equality holds to float32 rounding, not bit for bit.
    assert res.defended_psnr == pytest.approx(np.mean([p for p, _ in per]), abs=1e-5)
    assert res.defended_ssim == pytest.approx(np.mean([s for _, s in per]), abs=1e-6)
    assert res.output_max_abs_diff == pytest.approx(float(np.abs(od - oc).max()), abs=1e-5)


# ---- verdicts ------------------------------------------------------------------------------------------

def test_verdict_flips_with_impossible_thresholds(teacher, tmp_path, capsys):
    clean = teacher("sr")
    dfd = make_standin(clean, tmp_path / "d.onnx", "inline", factor=1.01)
    ok = api.validate(clean, dfd, heldout_size=32, progress=False)
    assert ok.passed and abs(ok.teacher_psnr_drop) < 0.1 and [c.name for c in ok.checks] == ["finite", "max_teacher_drop"]
    bad = api.validate(clean, dfd, heldout_size=32, thresholds=Thresholds(max_teacher_drop=-1.0), progress=False)
    assert not bad.passed and [c.name for c in bad.failed_checks()] == ["max_teacher_drop"]
    bad = api.validate(clean, dfd, heldout_size=32, progress=False,
                       thresholds=Thresholds(min_output_psnr=1e6, max_abs_diff=0.0, max_ssim_drop=1.0))
    assert {c.name for c in bad.failed_checks()} == {"min_output_psnr", "max_abs_diff"}
    # CLI: 0 on pass, 1 on a failed verdict (distinct from 2 = bad input).
    assert cli.main(["validate", clean, dfd, "--size", "32", "-q"]) == 0
    assert cli.main(["validate", clean, dfd, "--size", "32", "-q", "--max-teacher-drop", "-1"]) == 1
    assert "verdict: FAIL" in capsys.readouterr().out
    assert cli.main(["validate", clean, dfd, "--size", "32", "-q", "--json", "--min-output-psnr", "1e6"]) == 1
    d = json.loads(capsys.readouterr().out)
    assert d["verdict"] == "FAIL" and d["passed"] is False


def test_identical_models_pass_with_infinite_output_psnr(teacher, tmp_path):
    clean = teacher("dehaze")
    res = api.validate(clean, clean, heldout_size=32, out=tmp_path / "r", progress=False,
                       thresholds=Thresholds(min_output_psnr=200, max_abs_diff=0.0))
    assert res.passed and res.output_psnr == math.inf and res.output_max_abs_diff == 0.0
    assert res.teacher_psnr_drop == 0.0 and not res.spectrum
    assert any("asvp.defended" in n for n in res.notes)
    d = _strict_json((tmp_path / "r" / "report.json").read_text())  # inf is written as a string, not Infinity
    assert d["sections"]["validate"]["output_psnr"] == "inf"


def test_tap_perturbation_is_measured(teacher, tmp_path):
    clean = teacher("underwater")
    dfd = make_standin(clean, tmp_path / "tap.onnx", "tap", factor=1.1)
    res = api.validate(clean, dfd, heldout_size=32, progress=False)
    assert res.defence["placement"] == "tap"
    assert res.output_max_abs_diff == 0.0 and res.teacher_psnr_drop == 0.0  # tap leaves the output unchanged
    (t,) = res.tap
    assert t["tap_output"] == "asvp_tap_0"
    assert t["rel_change"]["mean"] == pytest.approx(0.1, rel=1e-5)  # ||1.1 F - F|| / ||F||
    assert len(t["per_image_rel_change"]) == 6
    assert t["reference_rel_error"] > 0.05  # a uniform scale is not ASVP: the reference check notices
    (e,) = res.spectrum
    np.testing.assert_allclose(e["s_after_model"], 1.1 * np.array(e["s_before"]), rtol=1e-4)


def test_keyed_variant_skips_the_reference_check(teacher, tmp_path):
    """A keyed variant's model does not record its key, so the reference (and the spectrum 'after') cannot be
    computed: validate says so instead of reporting a meaningless reference error."""
    clean = teacher("sr")
    dfd = tmp_path / "keyed.onnx"
    api.defend(clean, dfd, config=AsvpConfig(variant="keyed-h", h=1.0, h_max=1.3, key="x", placement="tap"))
    res = api.validate(clean, dfd, heldout_size=32, progress=False)
    (t,) = res.tap
    assert t["reference_rel_error"] is None and t["rel_change"]["mean"] > 0
    assert any("needs the key" in n for n in res.notes)


# ---- reports -------------------------------------------------------------------------------------------

def test_validate_report_files(teacher, defended, tmp_path):
    from PIL import Image

    out = tmp_path / "report"
    res = api.validate(teacher("sr"), defended("sr"), heldout_size=32, out=out, progress=False)
    assert res.report_dir == str(out)
    d = _strict_json((out / "report.json").read_text())
    assert set(d["sections"]) == {"validate", "spectrum"}
    assert d["sections"]["validate"]["clean_psnr"] == pytest.approx(res.clean_psnr)
    assert d["files"]["validate"] == ["validate-quality.png"] and d["files"]["spectrum"] == ["spectrum-nodes.png"]
    for png in ("validate-quality.png", "spectrum-nodes.png"):
        with Image.open(out / png) as im:
            assert im.format == "PNG" and im.size[0] > 200
    md = (out / "report.md").read_text()
    assert "| model | PSNR (dB) | SSIM |" in md and "| clean |" in md and "![quality](validate-quality.png)" in md
    assert "| tensor | C | k used |" in md
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))


# ---- a user's image folder -----------------------------------------------------------------------------

def _write_pairs(root, task="sr", size=32, n=3, fmt="png"):
    from skimage import io

    from asvp.tasks import get_task

    inp, tgt = get_task(task).heldout(size)
    for sub, arr in (("input", inp), ("target", tgt)):
        (root / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = (arr[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            io.imsave(root / sub / f"img{i}.{fmt}", img, check_contrast=False)
    return root


def test_user_image_folder(teacher, defended, tmp_path):
    from skimage import io

    from asvp.metrics import psnr_ssim
    from asvp.runtime.engines.backends import run_model

    root = _write_pairs(tmp_path / "pairs")
    res = api.validate(teacher("sr"), defended("sr"), images=root, progress=False)
    assert res.images == str(root) and res.n_images == 3
    assert [r["name"] for r in res.per_image] == ["img0", "img1", "img2"]
    inp = io.imread(root / "input" / "img1.png").astype(np.float32).transpose(2, 0, 1)[None] / 255
    tgt = io.imread(root / "target" / "img1.png").astype(np.float32).transpose(2, 0, 1)[None] / 255
    p, s = psnr_ssim(run_model(teacher("sr"), inp)["output"], tgt)
    assert res.per_image[1]["clean_psnr"] == pytest.approx(p, abs=1e-6)
    # A grey-scale pair of another size joins the set (run as its own batch).
    io.imsave(root / "input" / "grey.png", np.full((20, 24), 128, np.uint8), check_contrast=False)
    io.imsave(root / "target" / "grey.png", np.full((40, 48), 128, np.uint8), check_contrast=False)
    res = api.validate(teacher("sr"), defended("sr"), images=root, progress=False)
    assert res.n_images == 4 and res.per_image[0]["input_shape"] == [1, 3, 20, 24]


# ---- bad input: one line, non-zero exit, nothing written -----------------------------------------------

def _cli_error(capsys, argv, code=2):
    assert cli.main(argv) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("asvp: error: ") and "\n" not in err, err
    return err


def test_bad_models_and_task(teacher, tmp_path, capsys):
    clean = teacher("sr")
    out = tmp_path / "out"
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model at all")
    assert "not found" in _cli_error(capsys, ["validate", clean, str(tmp_path / "missing.onnx"), "--out", str(out)])
    assert "not a readable ONNX model" in _cli_error(capsys, ["validate", str(junk), clean, "--out", str(out)])
    assert "unknown task 'nope'" in _cli_error(capsys, ["validate", clean, clean, "--task", "nope", "--out", str(out)])
    assert "does not match" in _cli_error(capsys, ["validate", clean, clean, "--task", "lowlight", "--out", str(out)])
    assert "multiple of" in _cli_error(capsys, ["validate", clean, clean, "--size", "33", "--out", str(out)])
    assert "unknown backend" in _cli_error(capsys, ["validate", clean, clean, "--backend", "nope", "--out", str(out)])
    assert not out.exists()
    # A model without task metadata needs --task.
    m = onnx.load(clean)
    del m.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(m, str(bare))
    assert "pass --task" in _cli_error(capsys, ["validate", str(bare), str(bare)])
    assert cli.main(["validate", str(bare), str(bare), "--task", "sr", "--size", "32", "-q"]) == 0
    # A user model with its own task label: geometry from its metadata, images from --images only.
    from asvp.onnx_utils import set_metadata

    set_metadata(m, {"asvp.task": "custom", "asvp.scale": 2})
    onnx.save(m, str(bare))
    assert "give --images" in _cli_error(capsys, ["validate", str(bare), str(bare)])
    root = _write_pairs(tmp_path / "pairs", n=1)
    assert cli.main(["validate", str(bare), str(bare), "--images", str(root), "-q", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["task"] == "custom" and d["n_images"] == 1 and d["per_image"][0]["name"] == "img0"
    assert "engine" in _cli_error(capsys, ["validate", str(tmp_path / "x.engine"), clean])
    # An SR model labelled as a x1 task: caught on the first image's output size.
    set_metadata(m, {"asvp.task": "dehaze", "asvp.scale": 1})
    onnx.save(m, str(bare))
    assert "wrong task or scale" in _cli_error(capsys, ["validate", str(bare), str(bare), "--size", "32", "-q"])


def test_backend_not_installed(teacher, tmp_path, capsys):
    from asvp.runtime.engines.backends import available_backends

    missing = [b for b in ("tensorrt", "onnxrt-cuda") if b not in available_backends()]
    if not missing:
        pytest.skip("TensorRT and CUDA are both installed here: no missing backend to test")
    clean = teacher("sr")
    with pytest.raises(MissingDependencyError):
        api.validate(clean, clean, backend=missing[0], heldout_size=32, progress=False)
    _cli_error(capsys, ["validate", clean, clean, "--backend", missing[0], "--out", str(tmp_path / "o")], code=3)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("case, message", [
    ("sr_target_not_2x", "for scale x2 the target must be"),
    ("not_multiple", "multiples of 4"),
    ("nan", "NaN or infinite"),
    ("unmatched", "unmatched: b"),
    ("no_target_dir", "has no target/ folder"),
    ("empty", "no images"),
    ("float_range", "expected [0, 1]"),
])
def test_bad_image_folders(case, message, teacher, tmp_path, capsys):
    from skimage import io

    root = tmp_path / "imgs"
    (root / "input").mkdir(parents=True)
    (root / "target").mkdir()
    task = "lowlight" if case == "not_multiple" else "sr"
    rgb = lambda h, w: np.full((h, w, 3), 100, np.uint8)  # noqa: E731
    if case == "sr_target_not_2x":
        io.imsave(root / "input" / "a.png", rgb(16, 16), check_contrast=False)
        io.imsave(root / "target" / "a.png", rgb(16, 16), check_contrast=False)
    elif case == "not_multiple":
        io.imsave(root / "input" / "a.png", rgb(30, 32), check_contrast=False)
        io.imsave(root / "target" / "a.png", rgb(30, 32), check_contrast=False)
    elif case == "nan":
        a = np.full((16, 16, 3), 0.5, np.float32)
        a[3, 3, 1] = np.nan
        io.imsave(root / "input" / "a.tif", a, check_contrast=False)
        io.imsave(root / "target" / "a.png", rgb(32, 32), check_contrast=False)
    elif case == "unmatched":
        io.imsave(root / "input" / "a.png", rgb(16, 16), check_contrast=False)
        io.imsave(root / "target" / "a.png", rgb(32, 32), check_contrast=False)
        io.imsave(root / "input" / "b.png", rgb(16, 16), check_contrast=False)
    elif case == "no_target_dir":
        (root / "target").rmdir()
    elif case == "float_range":
        io.imsave(root / "input" / "a.tif", np.full((16, 16, 3), 2.0, np.float32), check_contrast=False)
        io.imsave(root / "target" / "a.png", rgb(32, 32), check_contrast=False)
    with pytest.raises(AsvpError) as ei:
        api.validate(teacher(task), teacher(task), images=root, progress=False, out=tmp_path / "o")
    assert message in str(ei.value)
    err = _cli_error(capsys, ["validate", teacher(task), teacher(task), "--images", str(root), "--out", str(tmp_path / "o")])
    assert message in err
    assert not (tmp_path / "o").exists()


def test_tap_metadata_naming_a_missing_output_is_refused(teacher, tmp_path):
    from asvp.onnx_utils import load_model, set_metadata

    dfd = make_standin(teacher("derain"), tmp_path / "tap.onnx", "tap")
    m = load_model(dfd)
    set_metadata(m, {"asvp.nodes": json.dumps([{"node": "n", "tensor": "t", "tap": "no_such_output"}])})
    onnx.save(m, str(tmp_path / "broken.onnx"))
    with pytest.raises(AsvpError, match="not a graph output"):
        api.validate(teacher("derain"), tmp_path / "broken.onnx", heldout_size=32, progress=False)


@pytest.mark.tensorrt
def test_validate_on_tensorrt(teacher, defended):
    from asvp.runtime.engines.backends import available_backends

    if "tensorrt" not in available_backends():
        pytest.skip("TensorRT with a CUDA device is not available here (asvp backends lists why)")
    res = api.validate(teacher("sr"), defended("sr"), backend="tensorrt", heldout_size=32, progress=False)
    ref = api.validate(teacher("sr"), defended("sr"), heldout_size=32, progress=False)
    assert res.provider.startswith("TensorRT")
    assert res.clean_psnr == pytest.approx(ref.clean_psnr, abs=0.05)
    assert res.teacher_psnr_drop == pytest.approx(ref.teacher_psnr_drop, abs=0.05)

"""The Triton model repository writer, without a server: the three forms parse against Triton's ModelConfig schema
(tritonclient's protobuf), batching follows the model's batch dim, every output is declared, the metadata is
recorded (never a key), and a failed write leaves nothing behind."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from asvp import api
from asvp.config import AsvpConfig
from asvp.errors import AsvpError
from asvp.runtime.engines.shapes import ShapeProfile
from asvp.runtime.engines.sidecar import make_sidecar, sidecar_path
from asvp.runtime.serving import python_model
from asvp.runtime.serving.model_config import TensorRTAccel, check_config_text
from asvp.runtime.serving.repository import RepoOptions, write_repository


@pytest.fixture(scope="module")
def models(exported, tmp_path_factory):
    root = tmp_path_factory.mktemp("repo-models")
    clean = exported("sr")
    tap = api.defend(clean, root / "sr-tap.onnx", config=AsvpConfig(placement="tap")).path
    plugin = api.defend(clean, root / "sr-plugin.onnx", config=AsvpConfig(placement="tap"), mode="plugin").path
    static = onnx.load(clean)
    for vi in list(static.graph.input) + list(static.graph.output):
        vi.type.tensor_type.shape.dim[0].dim_value = 1  # a static batch of 1
    onnx.save(static, root / "static.onnx")
    return {"clean": str(clean), "tap": str(tap), "plugin": str(plugin), "static": str(root / "static.onnx"),
            "root": root}


def _config(repo, name):
    return check_config_text((repo / name / "config.pbtxt").read_text())


def _fake_engine(models, tmp_path):
    tmp_path.mkdir(parents=True, exist_ok=True)
    engine = tmp_path / "sr.engine"
    engine.write_bytes(b"a plan file no TensorRT has run")
    side = make_sidecar(engine_sha256="0" * 64, tensorrt_version="10.9.0", source_path=models["tap"],
                        profile=ShapeProfile("input", (1, 3, 32, 32), (1, 3, 256, 256), (4, 3, 512, 512)),
                        source_sha256="1" * 64, fp16=True, int8=False, workspace=None, plugins=[],
                        device={"name": "a GPU", "compute_capability": "8.9"})
    sidecar_path(engine).write_text(json.dumps(side))
    return engine


def test_python_form_batched_dims_taps_and_metadata(models, tmp_path):
    res = write_repository(models["tap"], tmp_path, RepoOptions(name="sr", key_id="abcd1234", max_side=512))
    cfg = _config(tmp_path, "sr")
    assert cfg.backend == "python" and cfg.max_batch_size == 8 and cfg.HasField("dynamic_batching")
    assert [(t.name, list(t.dims)) for t in cfg.input] == [("input", [3, -1, -1])]
    assert [(t.name, list(t.dims)) for t in cfg.output] == [("output", [3, -1, -1]), ("asvp_tap_0", [32, -1, -1])]
    p = {k: v.string_value for k, v in cfg.parameters.items()}
    assert p["asvp.defended"] == "true" and p["asvp.placement"] == "tap" and p["asvp.taps"] == "asvp_tap_0"
    assert p["asvp.config_digest"] == AsvpConfig(placement="tap").digest()
    assert p["asvp.fingerprint.key_id"] == "abcd1234" and p["asvp.max_side"] == "512"
    assert p["EXECUTION_ENV_PATH"]
    assert (tmp_path / "sr" / "1" / "model.onnx").read_bytes() == open(models["tap"], "rb").read()
    assert (tmp_path / "sr" / "1" / "model.py").read_text() == open(python_model.__file__).read()
    assert res.verified and res.outputs == ["output", "asvp_tap_0"]


def test_static_batch_gives_max_batch_size_0_and_full_dims(models, tmp_path):
    write_repository(models["static"], tmp_path, RepoOptions(name="s", form="onnxruntime"))
    cfg = _config(tmp_path, "s")
    assert cfg.backend == "onnxruntime" and cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
    assert list(cfg.input[0].dims) == [1, 3, -1, -1]


def test_onnxruntime_form_with_tensorrt_accelerator(models, tmp_path):
    prof = ShapeProfile("input", (1, 3, 16, 16), (1, 3, 64, 64), (4, 3, 128, 128))
    opts = RepoOptions(name="o", form="onnxruntime", gpu=True,
                       tensorrt=TensorRTAccel(precision="FP16", profile=prof, engine_cache="/cache"))
    write_repository(models["tap"], tmp_path, opts)
    cfg = _config(tmp_path, "o")
    acc = cfg.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert acc.name == "tensorrt" and acc.parameters["precision_mode"] == "FP16"
    assert acc.parameters["trt_profile_max_shapes"] == "input:4x3x128x128"
    assert acc.parameters["trt_engine_cache_enable"] == "1"
    assert cfg.instance_group[0].kind == cfg.instance_group[0].KIND_GPU
    assert not (tmp_path / "o" / "1" / "model.py").exists()


def test_onnxruntime_form_refuses_plugin_models(models, tmp_path):
    with pytest.raises(AsvpError, match="--form python"):
        write_repository(models["plugin"], tmp_path, RepoOptions(name="p", form="onnxruntime"))
    assert list(tmp_path.iterdir()) == []


def test_tensorrt_plan_form_from_a_sidecar_is_unverified(models, tmp_path):
    engine = _fake_engine(models, tmp_path / "e")
    res = write_repository(engine, tmp_path / "repo", RepoOptions(name="t", form="tensorrt_plan"))
    cfg = _config(tmp_path / "repo", "t")
    assert cfg.platform == "tensorrt_plan" and dict(cfg.cc_model_filenames) == {"8.9": "model.plan"}
    assert cfg.max_batch_size == 4  # capped by the engine's profile
    p = {k: v.string_value for k, v in cfg.parameters.items()}
    assert p["asvp.tensorrt_version"] == "10.9.0" and p["asvp.verified"] == "false"
    assert not res.verified and any("unverified" in line for line in res.summary_lines())
    assert (tmp_path / "repo" / "t" / "1" / "model.plan").read_bytes() == engine.read_bytes()


def test_schema_check_refuses_broken_configs():
    with pytest.raises(AsvpError, match="does not parse"):
        check_config_text('name: "x" backend: "python" no_such_field: 1')
    with pytest.raises(AsvpError, match="dims"):
        check_config_text('name: "x" backend: "python" input { name: "i" data_type: TYPE_FP32 dims: 0 }')
    with pytest.raises(AsvpError, match="backend nor a platform"):
        check_config_text('name: "x"')


def test_existing_entry_kept_without_force_and_replaced_whole_with_it(models, tmp_path):
    write_repository(models["tap"], tmp_path, RepoOptions(name="m"))
    (tmp_path / "m" / "marker").write_text("old")
    with pytest.raises(AsvpError, match="--force"):
        write_repository(models["clean"], tmp_path, RepoOptions(name="m"))
    assert (tmp_path / "m" / "marker").exists()
    write_repository(models["clean"], tmp_path, RepoOptions(name="m", force=True))
    assert not (tmp_path / "m" / "marker").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary or old folder left


@pytest.mark.parametrize("opts,match", [
    (RepoOptions(name="bad name"), "valid Triton model name"),
    (RepoOptions(name="x", form="savedmodel"), "unknown repository form"),
    (RepoOptions(name="x", instances=0), "instances"),
    (RepoOptions(name="x", tensorrt=TensorRTAccel()), "onnxruntime form only"),
])
def test_bad_options_write_nothing(models, tmp_path, opts, match):
    with pytest.raises(AsvpError, match=match):
        write_repository(models["clean"], tmp_path, opts)
    assert list(tmp_path.iterdir()) == []


def test_python_model_batches_requests_of_one_shape():
    calls = []

    def run(feed):
        calls.append(feed["x"].shape)
        return {"y": feed["x"] * 2}

    feeds = [{"x": np.full((n, 2), i, np.float32)} for i, n in enumerate((1, 2, 1))]
    outs = python_model.run_batched(run, feeds, batched=True)
    assert calls == [(4, 2)]
    assert [o["y"].tolist() for o in outs] == [[[0, 0]], [[2, 2], [2, 2]], [[4, 4]]]
    groups = python_model.group_by_shape([{"x": np.zeros((1, 3, 4, 4))}, {"x": np.zeros((1, 3, 5, 4))},
                                          {"x": np.zeros((2, 3, 4, 4))}])
    assert sorted(groups.values()) == [[0, 2], [1]]
    assert "empty" in python_model.check_sides({"x": np.zeros((1, 3, 0, 4))}, 0)
    assert "limit 8" in python_model.check_sides({"x": np.zeros((1, 3, 9, 4))}, 8)
    assert python_model.check_sides({"x": np.zeros((1, 3, 8, 8))}, 8) is None

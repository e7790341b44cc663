"""The engine sidecar (runtime.engines.sidecar): round trip, the refusals that say how to rebuild, atomic
writes; pure, on CPU."""
from __future__ import annotations

import json
import os

import pytest

from asvp.errors import AsvpError
from asvp.runtime.engines import sidecar
from asvp.runtime.engines.shapes import make_profile


def test_sidecar_roundtrip_and_checks(tmp_path):
    prof = make_profile("img", ["N", 3, "H", "W"])
    data = b"fake engine bytes"
    src = tmp_path / "m.onnx"
    src.write_bytes(b"onnx")
    side = sidecar.make_sidecar(engine_sha256=sidecar.sha256_bytes(data), tensorrt_version="10.9.0.34", profile=prof,
                                source_path=src, source_sha256=sidecar.sha256_file(src), fp16=True, int8=False,
                                workspace=1 << 30, plugins=[{"namespace": "asvp", "name": "AsvpPerturb", "version": "1"}],
                                device={"name": "GPU", "compute_capability": "9.0"})
    eng = tmp_path / "m.engine"
    sidecar.write_engine(data, eng, side)
    assert eng.read_bytes() == data and sidecar.sidecar_path(eng) == tmp_path / "m.engine.json"
    back = sidecar.read_sidecar(eng)
    assert back == json.loads(json.dumps(side)) and back["profile"]["opt"] == [1, 3, 256, 256]
    assert back["source_model"]["sha256"] == sidecar.sha256_file(src) and back["precision"]["fp16"] is True
    sidecar.check_sidecar(back, tensorrt_version="10.9.0.34", engine_sha256=sidecar.sha256_bytes(data),
                          device={"compute_capability": "9.0"}, engine_path=eng)
    with pytest.raises(AsvpError) as e:
        sidecar.check_sidecar(back, tensorrt_version="10.13.0.35", engine_path=eng)
    msg = str(e.value)
    assert "10.9.0.34" in msg and "10.13.0.35" in msg and "asvp build" in msg and "\n" not in msg
    with pytest.raises(AsvpError, match="digest differs"):
        sidecar.check_sidecar(back, tensorrt_version="10.9.0.34", engine_sha256="0" * 64, engine_path=eng)
    with pytest.raises(AsvpError, match="compute capability 9.0"):
        sidecar.check_sidecar(back, tensorrt_version="10.9.0.34", device={"compute_capability": "8.6"}, engine_path=eng)
    sidecar.sidecar_path(eng).write_text("{not json")
    with pytest.raises(AsvpError, match="not readable JSON"):
        sidecar.read_sidecar(eng)
    assert sidecar.read_sidecar(tmp_path / "none.engine") is None


def test_write_engine_is_atomic(tmp_path):
    eng = tmp_path / "a.engine"
    with pytest.raises(TypeError):
        sidecar.write_engine(b"bytes", eng, {"unserialisable": object()})
    assert sorted(os.listdir(tmp_path)) == [], "a failed write leaves neither engine, sidecar nor temporary files"

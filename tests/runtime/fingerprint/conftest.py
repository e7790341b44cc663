"""Shared fixtures of the fingerprint tests: the sr teacher and two marked copies (keys KEY_A and KEY_B)."""
import pytest

from asvp import api

KEY_A = "test-key-alpha-0001"
KEY_B = "test-key-bravo-0002"


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("fp")
    clean, ma, mb = d / "sr.onnx", d / "sr.fpA.onnx", d / "sr.fpB.onnx"
    api.export("sr", clean)
    # a fixed strength keeps the fixture fast; the cost calibration (the default) has its own test
    ra = api.fingerprint_mark(clean, ma, KEY_A, strength_db=50.0)
    api.fingerprint_mark(clean, mb, KEY_B, strength_db=50.0)
    return {"dir": d, "clean": clean, "A": ma, "B": mb, "mark_result": ra}

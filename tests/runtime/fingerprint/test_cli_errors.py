import pytest
"""The fingerprint subcommands' errors and output: one line, exit 2, nothing written; --json."""
import json

from asvp import api
from asvp.cli import main
from asvp.fingerprint import key_id

KEY_A = "test-key-alpha-0001"  # the keys of conftest's marked models
KEY_B = "test-key-bravo-0002"


def _cli(capsys, *argv):
    rc = main(list(argv))
    err = capsys.readouterr().err
    return rc, err


@pytest.mark.slow
def test_bad_inputs_get_one_line_errors(models, capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("ASVP_FINGERPRINT_KEY", raising=False)
    c, a = str(models["clean"]), str(models["A"])
    dehaze = tmp_path / "dehaze.onnx"
    api.export("dehaze", dehaze)
    cases = [
        (("fingerprint", "verify", str(tmp_path / "missing.onnx"), "--clean", c, "--defended", a, "--key", KEY_A),
         "not found"),
        (("fingerprint", "verify", a, "--clean", c, "--defended", c, "--key", KEY_A), "carries no fingerprint mark"),
        (("fingerprint", "verify", a, "--clean", c, "--defended", a), "key is required"),
        (("fingerprint", "verify", a, "--clean", c, "--defended", a, "--key", "short"), "at least 8 characters"),
        (("fingerprint", "verify", a, "--clean", c, "--defended", a, "--key", KEY_B), "does not reproduce"),
        (("fingerprint", "verify", str(dehaze), "--clean", c, "--defended", a, "--key", KEY_A), "returns shape"),
        (("fingerprint", "verify", a, "--clean", str(dehaze), "--defended", a, "--key", KEY_A), "not its clean model"),
        (("fingerprint", "verify", a, "--clean", c, "--defended", a, "--key", KEY_A, "--alpha", "2"), "alpha"),
        (("fingerprint", "verify", a, "--clean", c, "--defended", a, "--key-file", str(tmp_path / "nokey")),
         "cannot read the key file"),
        (("fingerprint", "mark", c, "-o", str(tmp_path / "bad.onnx"), "--key", KEY_A, "--m", "32"), "m < channels"),
        (("fingerprint", "mark", c, "-o", str(tmp_path / "bad.onnx"), "--key", KEY_A, "--strength", "5"), "strength"),
        (("fingerprint", "mark", c, "-o", str(tmp_path / "bad.onnx"), "--key", KEY_A, "--max-drop", "-1"), "max drop"),
        (("fingerprint", "mark", a, "-o", str(tmp_path / "bad.onnx"), "--key", KEY_A, "--strength", "50"),
         "already fingerprinted"),
        (("fingerprint", "mark", c, "-o", str(tmp_path / "bad.onnx"), "--key", KEY_A, "--node", "nope"), "nope"),
        (("fingerprint", "mark", c, "-o", str(tmp_path / "bad.onnx"), "--key", KEY_A, "--bias-students", "-1"),
         "bias students must be an integer >= 0"),
        (("fingerprint", "calibrate", "--clean", c, "--defended", a, "--cache", str(tmp_path / "cal"), "--steps", "0"),
         "steps must be"),
    ]
    for argv, needle in cases:
        rc, err = _cli(capsys, *argv)
        assert rc == 2, (argv, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("asvp: error:") and needle in lines[0], (argv, err)
        assert "Traceback" not in err
    assert not (tmp_path / "bad.onnx").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left behind


def test_cli_verify_prints_json_and_reads_the_key_from_the_environment(models, capsys, monkeypatch):
    monkeypatch.setenv("ASVP_FINGERPRINT_KEY", KEY_A)
    c, a = str(models["clean"]), str(models["A"])
    assert main(["fingerprint", "verify", a, "--clean", c, "--defended", a, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["flagged"] is True and out["p_value"] < 1e-9 and out["key_id"] == key_id(KEY_A)
    assert KEY_A not in json.dumps(out)

"""`asvp --help` starts at once: importing the CLI and building every subcommand's parser loads none of the heavy
libraries (they load when a command runs), every `--help` exits 0, and no help text reports a measurement."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from asvp.cli import COMMANDS

HEAVY = ("torch", "onnxruntime", "scipy", "onnx", "polygraphy")
HELPS = [["--help"]] + [[name.replace("_", "-"), "--help"] for name in COMMANDS] + \
        [["fingerprint", action, "--help"] for action in ("keygen", "mark", "calibrate", "verify")]


def _heavy_modules_after(statement: str) -> list[str]:
    code = (f"import json, sys; {statement}; "
            f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_the_cli_and_every_command_module_import_no_heavy_library():
    modules = "; ".join(f"import asvp.cli.{name}" for name in COMMANDS)
    assert _heavy_modules_after(f"import asvp.cli; {modules}; asvp.cli.build_parser()") == []


def test_the_import_check_sees_a_heavy_library():
    """The same check on the API, which does load them: the test above can fail."""
    assert "torch" in _heavy_modules_after("import asvp.api")


@pytest.mark.parametrize("argv", HELPS, ids=" ".join)
def test_help_exits_0_in_a_fresh_process(argv):
    r = subprocess.run([sys.executable, "-m", "asvp.cli", *argv], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: asvp") and r.stderr == ""


def test_help_reports_no_measurements(capsys):
    """--help explains and links the docs; counts like "18/18" or run times like "~1 min" live in the docs."""
    from asvp.cli import main

    for argv in HELPS:
        with pytest.raises(SystemExit):
            main(argv)
        text = " ".join(capsys.readouterr().out.split())
        assert not re.search(r"\b\d+/\d+\b|~\s?\d|\bmeasured with\b|\bneither protects\b", text), (argv, text)

"""benchmarks/serve_load.py and BENCHMARKS.md's serving section: the committed result renders, and a missing one
says that the figures are pending (the load run itself needs the serving environment: see the script)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from benchmarks import render

ROOT = Path(__file__).resolve().parents[2]


def test_the_committed_serving_result_renders():
    text = "\n".join(render.serve_load_markdown(ROOT / "benchmarks" / "results"))
    assert "Serving under load" in text and "Pending" not in text
    assert "python -m benchmarks.serve_load" in text


def test_no_serving_result_is_pending(tmp_path):
    assert "Pending" in "\n".join(render.serve_load_markdown(tmp_path))


def test_the_script_runs_as_a_module():
    r = subprocess.run([sys.executable, "-m", "benchmarks.serve_load", "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "--clients" in r.stdout

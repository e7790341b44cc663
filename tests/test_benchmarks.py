"""`make bench` writes BENCHMARKS.md from a real run: check the command produces the file (not the figures)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN_ALL = [sys.executable, "-m", "benchmarks.run_all"]


def environ(*drop: str) -> dict:
    """This environment less the names in `drop`, with the repository on PYTHONPATH: `python -m benchmarks.run_all`
    runs from another folder, so that a stray file it wrote would show there."""
    env = {key: val for key, val in os.environ.items() if key not in drop}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return env


@pytest.mark.slow
def test_bench_command_writes_markdown_and_json(tmp_path):
    out = tmp_path / "BENCH.md"
    env = environ("TRITON_INTERPRET")  # the kernels get compiled
    proc = subprocess.run([*RUN_ALL, "--smoke", "--out", str(out)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text()
    for heading in ("## Teachers", "## Latency: defended / clean", "## graph_passes", "## Distillation attack headline"):
        assert heading in text
    assert "Smoke run" in text  # smoke figures are labelled as such
    raw = json.loads(out.with_suffix(".json").read_text())
    assert raw["smoke"] is True and raw["latency"][0]["cpu"]["ratio_p50"] > 0 and raw["latency"][0]["wall"]["ratio_p50"] > 0
    floors = [r for r in raw["latency"] if r["placement"] == "floor"]
    assert [r["nodes"] for r in floors] == [1, 3] and all(r["target"] is None for r in raw["latency"] if "floor" in r["placement"])
    assert "| floor: tap + Gram | Gram + apply |" in text  # the floor table beside the targets
    budget = [r for r in raw["latency"] if r.get("selection") == "budget"]
    assert [r["nodes"] for r in budget] == [1, 3] and all(r["placement"] == "tap" for r in budget)
    assert all(len(r["selectors"]) <= r["nodes"] for r in budget)
    assert raw["node_costs"]["sr"]["costs"] and raw["node_costs"]["sr"]["budget"] == 1.10
    assert "| task | nodes asked | chosen | selection's timing |" in text
    assert [(r["kernel"], r["arch"], r["cp"]) for r in raw["kernel_compile"]["rows"]] == [
        (k, 90, 16) for k in ("gram", "eig", "apply", "fused")]
    assert "## Triton kernels per NVIDIA architecture" in text and "| sm_90 | H100, H200 | 227 KB |" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["BENCH.json", "BENCH.md"]  # nothing else left behind
    assert "## GPU (`benchmarks/gpu.py`" in text
    # --render-only: the same file again from the raw results, nothing measured; a missing JSON is one line, exit 2
    again = tmp_path / "AGAIN.md"
    proc = subprocess.run([*RUN_ALL, "--render-only", "--json", str(out.with_suffix(".json")), "--out", str(again)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300, env=environ())
    assert proc.returncode == 0 and again.read_text() == text, proc.stderr[-2000:]
    proc = subprocess.run([*RUN_ALL, "--render-only", "--json", str(tmp_path / "missing.json"), "--out",
                           str(tmp_path / "X.md")], capture_output=True, text=True, cwd=tmp_path, timeout=300, env=environ())
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and not (tmp_path / "X.md").exists()

"""benchmarks/kernel_compile.py: arguments, one-line refusals, the summary and Markdown on a made-up result, and
one real compile (sm_90, C = 16) in a subprocess without Triton's interpreter. No GPU is used or needed."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from asvp.errors import AsvpError
from asvp.runtime.engines.kernels import triton_launch

from benchmarks import kernel_compile

ROOT = Path(__file__).resolve().parents[2]  # `python -m benchmarks.kernel_compile` runs from here
SCRIPT = [sys.executable, "-m", "benchmarks.kernel_compile"]


def test_arguments():
    a = kernel_compile.parse_args([])
    assert a.archs == list(triton_launch.SHARED_LIMITS) and a.channels == list(kernel_compile.CHANNELS)
    b = kernel_compile.parse_args(["--archs", "86,87", "--channels", "96"])
    assert b.archs == [86, 87] and b.channels == [96]
    for bad, match in [(["--archs", "75"], "not one of"), (["--channels", "129"], "not one of"),
                       (["--archs", "8.6"], "integers"), (["--channels", ","], "empty")]:
        with pytest.raises(AsvpError, match=match):
            kernel_compile.parse_args(bad)


def test_bad_arguments_are_one_line_and_write_nothing(tmp_path):
    res = subprocess.run([*SCRIPT, "--archs", "75", "--out-dir", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0 and "sm" not in res.stdout
    assert res.stderr.startswith("kernel_compile.py: error: --archs: 75") and not (tmp_path / "o").exists()


def _row(kernel, arch, c, shared, stack=0):
    limit = triton_launch.SHARED_LIMITS[arch]
    return dict(kernel=kernel, arch=arch, channels=c, cp=triton_launch.padded_channels(c), warps=8, registers=64,
                stack_bytes=stack, shared_bytes=shared, shared_limit=limit, fits=shared <= limit)


def test_summary_and_markdown_flag_what_does_not_fit():
    rows = [_row(k, 86, 128, 131072 if k == "eig" else 8192, stack=96 if k == "apply" else 0)
            for k in triton_launch.KERNELS]
    rows += [_row(k, 90, 128, 131072 if k == "eig" else 8192) for k in triton_launch.KERNELS]
    res = {"triton": "3.9.0", "commit": "abc1234", "archs": [86, 90], "channels": [128], "seconds": 1.0,
           "triton_env": {}, "rows": rows}
    s = kernel_compile.summarize(res)
    assert s["86"]["all_fit"] is False and s["90"]["all_fit"] is True
    assert s["86"]["max_shared_kernel"] == "eig (C=128)" and s["86"]["spilling"] == ["apply (C=128)"]
    md = kernel_compile.render_markdown(res)
    assert "| sm_86 | A10, A10G, RTX 30xx | 99 KB | 128 KB, eig (C=128) | **no** | apply (C=128) |" in md
    assert "| sm_90 | H100, H200 | 227 KB | 128 KB, eig (C=128) | yes | none |" in md
    assert "64 / 0 / **128** (8)" in md and "64 / 0 / 128 (8)" in md and "Triton 3.9.0, commit abc1234" in md


def test_a_real_compile_writes_both_files(tmp_path):
    env = {key: val for key, val in os.environ.items() if key != "TRITON_INTERPRET"}
    res = subprocess.run([*SCRIPT, "--archs", "90", "--channels", "16", "--out-dir",
                          str(tmp_path)], capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads((tmp_path / "kernel-compile.json").read_text())
    assert [r["kernel"] for r in data["rows"]] == list(triton_launch.KERNELS)
    for r in data["rows"]:
        assert r["arch"] == 90 and r["cp"] == 16 and r["fits"] and 0 < r["registers"] <= 255 and r["shared_bytes"] > 0
    md = (tmp_path / "kernel-compile.md").read_text()
    assert md.startswith("# Triton ASVP kernels per architecture") and "| sm_90 | 16 (16) |" in md
    assert md in res.stdout


def test_the_interpreter_is_refused_in_one_line(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1")
    res = subprocess.run([*SCRIPT, "--archs", "90", "--channels", "16", "--out-dir",
                          str(tmp_path / "o")], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert res.returncode == 2 and "unset TRITON_INTERPRET" in res.stderr and res.stderr.strip().count("\n") == 0
    assert not (tmp_path / "o").exists()

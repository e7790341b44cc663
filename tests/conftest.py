"""Shared fixtures: bundled teachers exported once per test session. Also puts benchmarks/ on sys.path, so that
tests/benchmarks/ imports the scripts by name (`import fingerprint_eval`), as they import each other."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from asvp import api


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """exported(task) -> path of the bundled teacher's ONNX export (cached for the session)."""
    cache: dict[str, str] = {}
    root = tmp_path_factory.mktemp("exported")

    def get(task: str) -> str:
        if task not in cache:
            cache[task] = api.export(task, root / f"{task}.onnx").path
        return cache[task]

    return get

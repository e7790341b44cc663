"""Shared fixtures: bundled teachers exported once per test session."""
from __future__ import annotations

import pytest

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
